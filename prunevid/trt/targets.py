"""Deployment targets as data: memory, GPU architecture, TensorRT/JetPack shipped, precisions,
default workspace and memory bandwidth, each figure with the page it comes from.

``memory_gib`` is the module's or card's DRAM; on Jetson (``shared_memory``) the CPU, the GPU and
the OS share it, so :mod:`prunevid.trt.budget` also charges ``os_reserve_gib`` and the host-side
copies. ``tensorrt`` lists the TensorRT lines a target is known to run (the JetPack it ships, or,
for datacenter cards, the TensorRT lines prunevid supports there); engines are built for one of them.
Torch-free, TensorRT-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prunevid.errors import ConfigError

GIB = 1 << 30

# Pages the figures below come from (one entry per source; targets point at them by key).
SOURCES = {
    "cuda-gpus": "https://developer.nvidia.com/cuda-gpus",
    "jetson-modules": "https://developer.nvidia.com/embedded/jetson-modules",
    "orin-nano-ds": "https://developer.nvidia.com/embedded/learn/jetson-orin-nano-datasheet "
                    "(Jetson Orin Nano Series data sheet: 8GB 128-bit LPDDR5, 68 GB/s; 102 GB/s in the "
                    "JetPack 6.1+ 'Super' modes)",
    "orin-nx-ds": "https://developer.nvidia.com/embedded/jetson-modules (Jetson Orin NX Series data sheet "
                  "DS-10712-001: 16GB 128-bit LPDDR5, 102.4 GB/s)",
    "agx-orin-brief": "https://www.nvidia.com/content/dam/en-zz/Solutions/gtcf21/jetson-orin/"
                      "nvidia-jetson-agx-orin-technical-brief.pdf (32GB/64GB 256-bit LPDDR5, 204.8 GB/s)",
    "thor": "https://developer.nvidia.com/blog/introducing-nvidia-jetson-thor-the-ultimate-platform-for-"
            "physical-ai/ (T5000: 128GB 256-bit LPDDR5X, 273 GB/s; FP8/FP4) ; "
            "https://docs.nvidia.com/cuda/curanddx/release_notes.html (sm_110 from CUDA 13.0)",
    "jetpack6": "https://docs.nvidia.com/jetson/jetpack/release-notes/index.html ; "
                "https://docs.pytorch.org/TensorRT/getting_started/jetpack.html (JetPack 6.1/6.2: CUDA 12.6, "
                "TensorRT 10.3)",
    "jetpack7": "https://developer.nvidia.com/embedded/jetpack/downloads/archive-7.0.md (JetPack 7.0/7.1, "
                "Thor: CUDA 13.0, TensorRT 10.13) ; JetPack 7.2 on Orin: CUDA 13.2, TensorRT 10.16 "
                "(https://github.com/Shattered217/Jetson-Orin-Wheels: 'System TensorRT 10.16.2.10')",
    "trt11-jetson": "https://docs.nvidia.com/deeplearning/tensorrt/11.4.1/api/migration/"
                    "tensorrt-10x-to-11x-jetson.html (TensorRT 11.4.1 on JetPack 7.2.2+, AGX Orin and Thor)",
    "trt-precision": "https://docs.nvidia.com/deeplearning/tensorrt/latest/getting-started/support-matrix.html "
                     "(hardware and precision: FP8 from SM 8.9, FP4 from SM 10.0; SM 8.7 FP16/INT8)",
    "h100": "https://www.nvidia.com/en-us/data-center/h100/ (H100 SXM: 80GB HBM3, 3.35 TB/s)",
    "h200": "https://www.nvidia.com/en-us/data-center/h200/ (141GB HBM3e, 4.8 TB/s)",
    "l4": "https://www.nvidia.com/en-us/data-center/l4/ (24GB GDDR6, 300 GB/s)",
    "a100": "https://www.nvidia.com/en-us/data-center/a100/ (A100 80GB SXM: HBM2e, 2,039 GB/s)",
    "trt-releases": "https://docs.nvidia.com/deeplearning/tensorrt/latest/getting-started/release-notes.html",
    "workspace": "prunevid's choice, not a vendor figure: about 1/16 of memory, capped at 4 GiB "
                 "(TensorRT's default workspace is the whole device memory, which a Jetson cannot spare)",
    "os-reserve": "prunevid's estimate, not a vendor figure: Ubuntu/L4T with no desktop plus the NvMap "
                  "carve-outs; measure with tegrastats on the device",
}


@dataclass(frozen=True)
class Target:
    """One machine prunevid can build engines for and run on."""

    name: str
    description: str
    memory_gib: float  # DRAM of the module or card
    shared_memory: bool  # Jetson: CPU and GPU share one DRAM
    sm: str  # "sm_87"
    tensorrt: tuple[str, ...]  # TensorRT lines it runs, newest last, e.g. ("10.3", "10.16")
    jetpack: tuple[str, ...]  # JetPack releases (empty for datacenter cards)
    precisions: tuple[str, ...]  # what its tensor cores take
    workspace_mib: int  # default TensorRT workspace pool
    bandwidth_gbs: float  # DRAM bandwidth, GB/s (10^9)
    os_reserve_gib: float  # DRAM the OS keeps (shared-memory targets only)
    sources: dict[str, str] = field(default_factory=dict)  # figure -> key of SOURCES

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)

    @property
    def usable_bytes(self) -> int:
        """Memory left to prunevid: DRAM less what the OS keeps."""
        return int((self.memory_gib - self.os_reserve_gib) * GIB)

    @property
    def trt_major(self) -> int:
        """Major version of the newest TensorRT line the target runs."""
        return int(self.tensorrt[-1].split(".")[0])

    def source(self, figure: str) -> str:
        """The page a figure (``memory``, ``sm``, ``tensorrt``, ...) comes from."""
        return SOURCES[self.sources[figure]]


_ORIN = ("fp32", "fp16", "int8")  # SM 8.7: no FP8/FP4
_ORIN_TRT, _ORIN_JP = ("10.3", "10.16"), ("6.2", "7.2")
_ORIN_SRC = {"sm": "cuda-gpus", "tensorrt": "jetpack6", "jetpack": "jetpack7", "precisions": "trt-precision",
             "workspace": "workspace", "os_reserve": "os-reserve"}
_DC_SRC = {"sm": "cuda-gpus", "tensorrt": "trt-releases", "precisions": "trt-precision", "workspace": "workspace"}


def _dc(name, description, memory, sm, precisions, bandwidth, src) -> Target:
    return Target(name, description, memory, False, sm, ("10.16", "11.4"), (), precisions, 4096, bandwidth, 0.0,
                  {**_DC_SRC, "memory": src, "bandwidth": src})


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("orin-nano-8", "Jetson Orin Nano 8GB", 8, True, "sm_87", _ORIN_TRT, _ORIN_JP, _ORIN, 512, 68.0, 1.5,
           {**_ORIN_SRC, "memory": "orin-nano-ds", "bandwidth": "orin-nano-ds"}),
    Target("orin-nx-16", "Jetson Orin NX 16GB", 16, True, "sm_87", _ORIN_TRT, _ORIN_JP, _ORIN, 1024, 102.4, 1.5,
           {**_ORIN_SRC, "memory": "orin-nx-ds", "bandwidth": "orin-nx-ds"}),
    Target("agx-orin-32", "Jetson AGX Orin 32GB", 32, True, "sm_87", _ORIN_TRT + ("11.4",), _ORIN_JP, _ORIN, 2048,
           204.8, 2.0, {**_ORIN_SRC, "memory": "agx-orin-brief", "bandwidth": "agx-orin-brief",
                        "tensorrt": "trt11-jetson"}),
    Target("agx-orin-64", "Jetson AGX Orin 64GB", 64, True, "sm_87", _ORIN_TRT + ("11.4",), _ORIN_JP, _ORIN, 4096,
           204.8, 2.0, {**_ORIN_SRC, "memory": "agx-orin-brief", "bandwidth": "agx-orin-brief",
                        "tensorrt": "trt11-jetson"}),
    Target("thor", "Jetson AGX Thor T5000 128GB", 128, True, "sm_110", ("10.13", "11.4"), ("7.0", "7.1", "7.2"),
           ("fp32", "fp16", "int8", "fp8", "fp4"), 4096, 273.0, 2.0,
           {"memory": "thor", "bandwidth": "thor", "sm": "thor", "tensorrt": "jetpack7", "jetpack": "jetpack7",
            "precisions": "thor", "workspace": "workspace", "os_reserve": "os-reserve"}),
    _dc("h100", "H100 SXM 80GB", 80, "sm_90", ("fp32", "fp16", "int8", "fp8"), 3350.0, "h100"),
    _dc("h200", "H200 141GB", 141, "sm_90", ("fp32", "fp16", "int8", "fp8"), 4800.0, "h200"),
    _dc("l4", "L4 24GB", 24, "sm_89", ("fp32", "fp16", "int8", "fp8"), 300.0, "l4"),
    _dc("a100", "A100 SXM 80GB", 80, "sm_80", ("fp32", "fp16", "int8"), 2039.0, "a100"),
)}


def get_target(name: str) -> Target:
    """The target called ``name``; an unknown name raises :class:`ConfigError` listing the known ones."""
    try:
        return TARGETS[name]
    except KeyError:
        raise ConfigError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}") from None


def target_table() -> list[str]:
    """One line per target (markdown table rows) for the README and ``prunevid build --help``."""
    rows = ["| target | memory | shared | SM | TensorRT (JetPack) | precisions | workspace | bandwidth |",
            "|---|---|---|---|---|---|---|---|"]
    for t in TARGETS.values():
        jp = f" (JetPack {', '.join(t.jetpack)})" if t.jetpack else ""
        rows.append(f"| `{t.name}` | {t.memory_gib:g} GiB | {'yes' if t.shared_memory else 'no'} | {t.sm} | "
                    f"{', '.join(t.tensorrt)}{jp} | {', '.join(t.precisions)} | {t.workspace_mib} MiB | "
                    f"{t.bandwidth_gbs:g} GB/s |")
    return rows
