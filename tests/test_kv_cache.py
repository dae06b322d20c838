"""The decoder graphs v2: layers split by range (every weight once), a fixed KV cache that graphs
only read and the runtime writes at explicit positions, grouped-query attention without repeated
key/value heads, and a plain baseline that runs no PruneVid graph."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch

from prunevid import spec
from prunevid.model.config import TextConfig
from prunevid.model.llama import DecoderLayer, causal_mask, rope_tables
from prunevid.runtime.backend import OrtBackend
from prunevid.runtime.chain import Chain


def test_cached_layer_equals_concatenated_attention_with_grouped_heads():
    """Prefill of 4 rows, then two single rows over a fixed buffer whose unused rows hold large
    values: each row's output equals the plain causal layer over all 6 rows."""
    torch.manual_seed(0)
    cfg = TextConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=10)
    layer = DecoderLayer(cfg).eval()
    x = torch.randn(6, 32)
    positions = torch.tensor([0, 1, 2, 5, 9, 10])  # gaps, as after selection
    d = cfg.dim_per_head
    with torch.no_grad():
        want = layer(x, rope_tables(positions, d, cfg.rope_theta), causal_mask(6)).hidden
        buf_k = torch.full((2, 8, d), 1e3)  # capacity 8, nothing valid yet
        buf_v = torch.full((2, 8, d), -1e3)
        got = []
        for start, stop in ((0, 4), (4, 5), (5, 6)):
            rope = rope_tables(positions[start:stop], d, cfg.rope_theta)
            out = layer.forward_cached(x[start:stop], rope, (buf_k, buf_v), torch.tensor(start))
            assert out.kv[0].shape == (2, stop - start, d)  # only the new rows come back
            buf_k[:, start:stop], buf_v[:, start:stop] = out.kv
            got.append(out.hidden)
    torch.testing.assert_close(torch.cat(got), want, atol=1e-5, rtol=1e-5)


class Spy:
    """A runner that records what each graph was fed and returned."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def run(self, graph, feeds):
        out = self.inner.run(graph, feeds)
        self.calls.append((graph, feeds, out))
        return out


def backend(export_dir) -> OrtBackend:
    return OrtBackend({n: export_dir / spec.GRAPH_DIR / f"{n}.onnx" for n in spec.GRAPH_ORDER})


def geometry(export_dir) -> spec.Geometry:
    return spec.Geometry(**json.loads((export_dir / spec.MANIFEST).read_text())["geometry"])


def prompt_inputs(g: spec.Geometry, seed: int):
    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((g.frames, 3, g.image_size, g.image_size)).astype(np.float32)
    pixels[g.frames // 2 :] += 1.5
    ids = rng.integers(5, 400, size=20).astype(np.int64)
    return pixels, ids, 7  # placeholder row at 7 (its id is never embedded into the prompt)


def test_decode_reads_the_same_fixed_buffers_and_writes_one_row_per_step(tiny_export):
    g = geometry(tiny_export)
    spy = Spy(backend(tiny_export))
    chain = Chain(spy, g)
    pixels, ids, pos = prompt_inputs(g, 0)
    visual = chain.visual(chain.encode(pixels), merge=True)
    state = chain.prefill(ids, pos, visual, select=True, max_new_tokens=5)
    buffers = dict(state.cache.buffers)
    assert state.kept < state.seq_len
    assert {b.shape for b in buffers.values()} == {(g.kv_heads, state.kept + 4, g.head_dim)}
    before = len(spy.calls)
    tokens = list(chain.greedy(state, 5, None))
    assert len(tokens) == 5 and state.cache.length == state.kept + 4
    assert [graph for graph, _, _ in spy.calls[before:]] == ["embed", "decoder_early", "decoder_late"] * 4
    decode = [(graph, feeds, out) for graph, feeds, out in spy.calls[before:] if graph.startswith("decoder_")]
    for step, (graph, feeds, out) in enumerate(decode):
        layers = spec.early_layers(g) if graph == "decoder_early" else spec.late_layers(g)
        assert int(feeds["cache_length"]) == state.kept + step // 2
        for name in spec.past_names(layers):
            assert feeds[name] is buffers[name]  # bound as is: no per-step copy or growth
        for name in spec.present_names(layers):
            assert out[name].shape == (g.kv_heads, 1, g.head_dim)
            # the row written at the step's cache position is the graph's new row
            np.testing.assert_array_equal(buffers[spec.as_past(name)][:, state.kept + step // 2], out[name][:, 0])
    assert state.cache.buffers.keys() == buffers.keys()
    assert all(state.cache.buffers[n] is buffers[n] for n in buffers)


def test_selection_compacts_the_kept_rows_of_layers_0_to_k(tiny_export):
    g = geometry(tiny_export)
    spy = Spy(backend(tiny_export))
    chain = Chain(spy, g)
    pixels, ids, pos = prompt_inputs(g, 1)
    state = chain.prefill(ids, pos, chain.visual(chain.encode(pixels), merge=True), select=True, max_new_tokens=1)
    early = next(out for graph, _, out in spy.calls if graph == "decoder_early")
    selected = next(out for graph, _, out in spy.calls if graph == "select")
    keep = selected["keep_index"][: int(selected["num_kept"])]  # fixed size, padded past num_kept
    assert (selected["keep_index"][len(keep):] == state.seq_len).all()  # the pad value is S
    late_feeds = next(feeds for graph, feeds, _ in spy.calls if graph == "decoder_late")
    np.testing.assert_array_equal(late_feeds["positions"], keep)  # original positions kept
    assert state.cache.buffers[spec.past_key(0)].shape[1] == len(keep) == state.kept
    for name in spec.present_names(spec.early_layers(g)):
        np.testing.assert_array_equal(state.cache.buffers[spec.as_past(name)], early[name][:, keep])


@pytest.mark.parametrize("mode", ["none", "merge"])
def test_plain_modes_run_no_score_select_or_gather(tiny_export, scene_cut_clip, mode):
    from prunevid.runtime.pipeline import RuntimePipeline

    runtime = RuntimePipeline(tiny_export, mode=mode)
    spy = Spy(runtime.backend)
    runtime.chain.runner = spy
    answer = runtime.run(scene_cut_clip, "What moves?", max_new_tokens=3)
    graphs = [graph for graph, _, _ in spy.calls]
    assert "score" not in graphs and "select" not in graphs
    assert ("merger" in graphs) == (mode == "merge")
    early = next(out for graph, _, out in spy.calls if graph == "decoder_early")
    late_feeds = next(feeds for graph, feeds, _ in spy.calls if graph == "decoder_late")
    assert late_feeds["hidden"] is early["hidden_out"]  # handed on, not gathered
    assert answer.prompt_tokens["kept"] == answer.prompt_tokens["prefill"]


def test_every_weight_is_stored_once(tiny_export, tiny_model_dir):
    from prunevid.model.checkpoint import load_model

    model, _ = load_model(tiny_model_dir, 14.0)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    owners: dict[str, set[str]] = {}
    stored = 0
    for name in spec.GRAPH_ORDER:
        for t in onnx.load(str(tiny_export / spec.GRAPH_DIR / f"{name}.onnx")).graph.initializer:
            stored += len(t.raw_data)
            if len(t.raw_data) > 1024:
                owners.setdefault(hashlib.sha256(t.raw_data).hexdigest(), set()).add(name)
    assert [g for g in owners.values() if len(g) > 1] == []
    assert 0.9 * weight_bytes <= stored <= weight_bytes
    assert not (tiny_export / spec.GRAPH_DIR / "decode_step.onnx").exists()


def test_run_threads_and_warmup(tiny_export, scene_cut_clip, monkeypatch):
    from click.testing import CliRunner

    from prunevid.cli import cli
    from prunevid.runtime.pipeline import RuntimePipeline

    pipeline = RuntimePipeline(tiny_export, threads=1)
    assert {s.get_session_options().intra_op_num_threads for s in pipeline.backend.sessions.values()} == {1}
    seen = []
    original = RuntimePipeline.run

    def counting(self, *args, **kwargs):
        seen.append(self.backend.threads)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RuntimePipeline, "run", counting)
    result = CliRunner().invoke(cli, ["run", "--engine-dir", str(tiny_export), "--video", str(scene_cut_clip),
                                      "--question", "Why?", "--max-new-tokens", "2", "--threads", "1",
                                      "--warmup", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert seen == [1, 1, 1]  # two warm-up answers, then the reported one
    assert len(json.loads(result.stdout)["token_ids"]) >= 1
    bad = CliRunner().invoke(cli, ["run", "--engine-dir", str(tiny_export), "--video", str(scene_cut_clip),
                                   "--question", "Why?", "--threads", "-1"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output


def test_frames_default_to_the_checkpoint_and_k_is_stored_once(tiny_model_dir, tiny_export):
    from prunevid.config import PruneConfig
    from prunevid.reference import EagerPipeline
    from prunevid.runtime.artifact import open_artifact

    assert PruneConfig().frames is None
    assert PruneConfig().with_frames_from(8).frames == 8
    assert PruneConfig(frames=12).with_frames_from(8).frames == 12
    eager = EagerPipeline(tiny_model_dir, PruneConfig())
    assert eager.cfg.frames == eager.model_cfg.num_frames == 16
    artifact = open_artifact(tiny_export, verify=False)
    assert "layer" not in artifact.manifest["prune"] and "frames" not in artifact.manifest["prune"]
    assert artifact.prune["layer"] == artifact.geometry.layer == 10
    assert PruneConfig.from_json(artifact.prune) == PruneConfig(frames=16)
