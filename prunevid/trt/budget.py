"""Memory budget of a deployment, checked before any engine is built and before any answer runs.

    weights                    every engine's weights, once (bytes per parameter of the precision)
  + KV cache                   every layer's K and V at the configured capacity
                               (max prompt rows + max new tokens - 1, rows of [H_kv, d]); on a
                               shared-memory target twice: the chain's host cache and the TensorRT
                               runner's device copy live in the same DRAM
  + activations                the largest graph's scratch and I/O at its profile maximum (the
                               TensorRT runner shares one scratch block between its contexts)
  + workspace                  TensorRT's workspace pool (the target's default, or --workspace)
  + runtime                    CUDA context, TensorRT and its kernels, the Python process (estimate)
  + engine load                shared-memory targets only: the largest plan is read into the same
                               DRAM while it is deserialised; the KV cache and activations are
                               allocated after loading, so this line counts as max(engine load,
                               KV cache + activations) in the total
  <= usable memory             the target's DRAM, less what the OS keeps on a Jetson

The activation estimates are upper bounds from the tensors that are alive together in one layer
(attention logits, MLP intermediates, residual stream), not TensorRT's own
``device_memory_size``, which is only known after a build; ``prunevid build`` prints both once it
has built. Torch-free, TensorRT-free.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from prunevid.costs import llm_layer_params, weight_bytes
from prunevid.errors import ConfigError
from prunevid.model.config import ModelConfig
from prunevid.trt.targets import GIB, TARGETS, Target

RUNTIME_OVERHEAD_BYTES = 1 * GIB  # estimate: CUDA context + TensorRT/cuBLAS kernels + the Python process
DTYPE_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "fp8": 1.0, "int4": 0.5, "fp4": 0.5}
QUANTIZED = ("int8", "int4")  # the weight formats a quantized export offers, in the order suggested


@dataclass(frozen=True)
class Deployment:
    """What sizes the memory: the model, its precision and the limits the engines are built for."""

    model: ModelConfig
    layer: int  # K: layers 0..K in decoder_early
    precision: str  # weights and activations ("fp16", "fp32"; "int8"/"int4": weight-only quantized)
    frames: int
    max_prompt_tokens: int  # text tokens of the prompt (question and template)
    max_new_tokens: int
    graph_weight_bytes: dict[str, int] | None = None  # measured per graph (an export); None: analytic

    @property
    def weight_bytes_per_param(self) -> float:
        return DTYPE_BYTES[self.precision]

    @property
    def activation_bytes_per_value(self) -> float:
        """Activations stay in 16 bits for weight-only quantized models, else the precision's."""
        return max(DTYPE_BYTES[self.precision], 2.0)

    @property
    def visual_rows(self) -> int:
        return self.frames * self.model.tokens_per_frame

    @property
    def max_prompt_rows(self) -> int:
        """Prompt rows at the profile maximum: the unpruned baseline (every visual token) is the worst case."""
        return self.max_prompt_tokens + self.visual_rows

    @property
    def cache_rows(self) -> int:
        """KV capacity R: the prompt rows kept (at most all) and every generated token but the last."""
        return self.max_prompt_rows + self.max_new_tokens - 1

    def graph_weights(self) -> dict[str, int]:
        """Weight bytes per engine: measured ones, else from the geometry at this precision."""
        if self.graph_weight_bytes is not None:
            return dict(self.graph_weight_bytes)
        per = self.weight_bytes_per_param
        w = weight_bytes(self.model, 1)  # parameters per part (1 byte each)
        layer = llm_layer_params(self.model.text)
        early, late = self.layer + 1, self.model.text.num_hidden_layers - self.layer - 1
        return {
            "encoder": round((w.vision + w.projector) * per),
            "embed": round(w.embed * per),
            "decoder_early": round(early * layer * per),
            "decoder_late": round((late * layer + w.head) * per),
        }


def export_graph_bytes(sizes: dict[str, int], dtype: str, precision: str,
                       quantized: tuple[str, ...] = ()) -> dict[str, int]:
    """Weight bytes per engine of an export built at ``precision``, from its graphs' bytes on disk
    (``sizes``): a float graph's scaled from the export's ``dtype`` to ``precision``; a graph that
    ``prunevid quantize`` quantized (``quantized``, the manifest's ``quantization.graphs``) at its real
    bytes, since its integer weights keep their size whatever the build precision (its few float
    MatMuls, LM head and layer K's projection, are counted at the export's dtype: an upper bound)."""
    scale = DTYPE_BYTES[precision] / DTYPE_BYTES[dtype]
    return {k: v if k in quantized else round(v * scale) for k, v in sizes.items()}


@dataclass(frozen=True)
class Budget:
    """The budget's lines in bytes, against one target."""

    target: Target
    weights: int
    kv_cache: int
    activations: int
    activation_graph: str
    workspace: int
    runtime: int
    engine_load: int
    cache_rows: int
    host_kv: int = 0  # the chain's host KV cache, where it shares the DRAM with the device copy

    @property
    def kv_total(self) -> int:
        return self.kv_cache + self.host_kv

    @property
    def total(self) -> int:
        return self.weights + self.workspace + self.runtime + max(self.kv_total + self.activations, self.engine_load)

    @property
    def usable(self) -> int:
        return self.target.usable_bytes

    @property
    def fits(self) -> bool:
        return self.total <= self.usable

    def lines(self) -> list[str]:
        """The budget as a small table (GiB)."""
        rows = [("weights", self.weights, ""),
                ("KV cache", self.kv_total, f"{self.cache_rows} rows" + (", host and device copies" if self.host_kv else "")),
                ("activations", self.activations, f"largest graph: {self.activation_graph}"),
                ("workspace", self.workspace, "TensorRT pool"),
                ("runtime", self.runtime, "CUDA context, TensorRT, process (estimate)"),
                ("engine load", self.engine_load, "largest plan in host memory while loading" if self.engine_load else "")]
        out = [f"{name:<12} {gib(value):>9} {note}".rstrip() for name, value, note in rows]
        out.append(f"{'total':<12} {gib(self.total):>9} of {gib(self.usable)} usable on {self.target.name} "
                   f"({self.target.memory_gib:g} GiB{', shared with the CPU' if self.target.shared_memory else ''}): "
                   f"{'fits' if self.fits else 'DOES NOT FIT'}")
        return out

    def summary(self) -> str:
        """One line: the sum and its parts."""
        copies = " x 2 copies" if self.host_kv else ""
        kv_act = f"KV {gib(self.kv_cache)}{copies} ({self.cache_rows} rows) + activations {gib(self.activations)}"
        if self.engine_load:
            kv_act = f"max({kv_act}, engine load {gib(self.engine_load)})"
        return (f"weights {gib(self.weights)} + {kv_act} + workspace {gib(self.workspace)} + runtime "
                f"{gib(self.runtime)} = {gib(self.total)} against {gib(self.usable)} usable on {self.target.name}")


def gib(n: float) -> str:
    """Bytes as GiB with two decimals (MiB below 0.1 GiB, so small models do not read as zero)."""
    return f"{n / GIB:.2f} GiB" if n >= GIB // 10 else f"{n / (1 << 20):.1f} MiB"


def activation_bytes(d: Deployment) -> dict[str, int]:
    """Upper bound of the memory each graph needs at its profile maximum besides weights and KV:
    its inputs and outputs plus the tensors alive together inside one layer."""
    m, v, t = d.model, d.model.vision, d.model.text
    b = d.activation_bytes_per_value
    c, inter, heads, kv, hd = t.hidden_size, t.intermediate_size, t.num_attention_heads, t.kv_heads, t.dim_per_head
    n, r, f = d.max_prompt_rows, d.cache_rows, d.frames
    early, layers = d.layer + 1, t.num_hidden_layers
    patches = v.grid * v.grid + 1  # CLS included
    encoder = f * (3 * v.image_size**2  # pixels [T,3,S,S]
                   + patches * (4 * v.hidden_size + v.intermediate_size)  # residual, q/k/v, MLP
                   + v.num_attention_heads * patches * patches  # attention logits
                   + m.tokens_per_frame * c)  # output [T,L,C]
    merger = 3 * d.visual_rows * c * b + 2 * f * m.tokens_per_frame**2 * 4  # features, merged, centred; 2 distance maps per frame (fp32)
    decoder_layer = (n * (4 * c + 2 * inter)  # residual, norm, q, o; gate and up
                     + heads * n * (n + 1)  # [H, n, R_in + n] logits on the prompt (1-row placeholder cache)
                     + 2 * kv * n * hd)  # this layer's new K/V rows
    early_io = n * (2 * c + heads * hd + kv * hd) + 2 * early * kv * n * hd + n  # hidden in/out, q/k, present rows
    late_io = n * c + t.vocab_size + 2 * (layers - early) * kv * n * hd
    score = heads * (n - d.visual_rows) * n + heads * n * hd  # [H, Q, S] map and its inputs
    decode_layer = heads * (r + 1) + 2 * inter + 4 * c  # one row against the full cache
    out = {"encoder": encoder * b, "merger": merger, "embed": n * c * b,
           "decoder_early": (decoder_layer + early_io) * b, "score": score * b + n * 4,
           "decoder_late": (decoder_layer + late_io) * b, "decode step": decode_layer * b}
    return {k: round(x) for k, x in out.items()}


def budget(d: Deployment, target: Target, workspace_mib: int | None = None) -> Budget:
    """The budget of deployment ``d`` on ``target`` (nothing is checked; see :func:`check_budget`)."""
    weights = d.graph_weights()
    kv = d.model.text.num_hidden_layers * 2 * d.model.text.kv_heads * d.model.text.dim_per_head * d.cache_rows
    act = activation_bytes(d)
    worst = max(act, key=act.get)
    return Budget(
        target=target,
        weights=sum(weights.values()),
        kv_cache=round(kv * d.activation_bytes_per_value),
        activations=act[worst],
        activation_graph=worst,
        workspace=(workspace_mib if workspace_mib is not None else target.workspace_mib) << 20,
        runtime=RUNTIME_OVERHEAD_BYTES,
        engine_load=max(weights.values()) if target.shared_memory else 0,
        host_kv=round(kv * d.activation_bytes_per_value) if target.shared_memory else 0,
        cache_rows=d.cache_rows,
    )


def _largest(fits, lo: int, hi: int) -> int | None:
    """The largest value in ``lo..hi`` for which ``fits`` holds (monotone), or None."""
    if not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def suggestions(d: Deployment, target: Target, workspace_mib: int | None = None) -> list[str]:
    """Which single option would make ``d`` fit ``target``: fewer frames, fewer new tokens, a shorter
    prompt limit, a quantized export; else the smallest known target it fits."""
    def fits(**change) -> bool:
        return budget(replace(d, **change), target, workspace_mib).fits

    out = []
    frames = _largest(lambda f: fits(frames=f), 1, d.frames - 1) if d.frames > 1 else None
    if frames is not None:
        out.append(f"--frames {frames} (export again)")
    new = _largest(lambda k: fits(max_new_tokens=k), 1, d.max_new_tokens - 1) if d.max_new_tokens > 1 else None
    if new is not None:
        out.append(f"--max-new-tokens {new}")
    prompt = _largest(lambda p: fits(max_prompt_tokens=p), 1, d.max_prompt_tokens - 1) if d.max_prompt_tokens > 1 else None
    if prompt is not None:
        out.append(f"--max-prompt-tokens {prompt}")
    if d.graph_weight_bytes is None:
        for q in QUANTIZED:
            if DTYPE_BYTES[q] < d.weight_bytes_per_param and fits(precision=q):
                out.append(f"an {q} weight-quantized export ({gib(sum(replace(d, precision=q).graph_weights().values()))} of weights)")
                break
    else:
        scale = {q: DTYPE_BYTES[q] / d.weight_bytes_per_param for q in QUANTIZED}
        for q, s in scale.items():
            if s < 1 and budget(replace(d, graph_weight_bytes={k: round(v * s) for k, v in d.graph_weight_bytes.items()}),
                                target, workspace_mib).fits:
                out.append(f"an {q} weight-quantized export (about {gib(sum(d.graph_weight_bytes.values()) * s)} of weights)")
                break
    if not out:
        bigger = [t for t in sorted(TARGETS.values(), key=lambda t: (t.shared_memory != target.shared_memory, t.memory_gib))
                  if t.memory_gib > target.memory_gib and d.precision in t.precisions + QUANTIZED
                  and budget(d, t, workspace_mib).fits]
        if bigger:
            out.append(f"a larger target such as {bigger[0].name}")
    return out


def check_budget(d: Deployment, target: Target, workspace_mib: int | None = None, what: str = "the model") -> Budget:
    """The budget, or :class:`ConfigError` in one line with the numbers and what would make it fit."""
    b = budget(d, target, workspace_mib)
    if b.fits:
        return b
    ways = suggestions(d, target, workspace_mib)
    hint = ("; it would fit with " + " or ".join(ways)) if ways else "; no single option makes it fit"
    raise ConfigError(f"{what} does not fit {target.name}: {b.summary()}{hint}")


def check_free(b: Budget, free_bytes: int, what: str = "the engines") -> None:
    """Before running: the budget's run-time part (everything but the weights already in the
    engines' plans on disk, i.e. the whole total) against the memory the device reports free now;
    :class:`ConfigError` with both numbers when it is short."""
    if b.total > free_bytes:
        raise ConfigError(f"{what} need {gib(b.total)} ({b.summary()}) but the device has {gib(free_bytes)} free now; "
                          f"close other GPU processes or build for fewer tokens")
