"""The exported decoder form (prunevid.exporter.stages.DecoderStage: fused q/k/v and gate/up
MatMuls, RoPE as a permutation MatMul, one joined softmax, masks built once per call) equals the
eager layers over the same fixed cache, with grouped heads, biases, gaps in the positions and
garbage in the unused cache rows; and it exports to under half the nodes of the eager form."""

from __future__ import annotations

import types

import pytest
import torch

from prunevid.exporter.stages import DecoderStage
from prunevid.model.config import TextConfig
from prunevid.model.llama import LlamaForCausalLM, causal_mask, rope_tables


def model(kv_heads: int, bias: bool) -> types.SimpleNamespace:
    torch.manual_seed(kv_heads)
    cfg = TextConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=kv_heads, vocab_size=11, attention_bias=bias, mlp_bias=bias)
    lm = LlamaForCausalLM(cfg).eval()
    return types.SimpleNamespace(language_model=lm)


@pytest.mark.parametrize("kv_heads,bias", [(2, False), (4, True), (1, False)])
def test_stage_equals_eager_layers_over_the_fixed_cache(kv_heads, bias):
    m = model(kv_heads, bias)
    lm, cfg = m.language_model, m.language_model.cfg
    d = cfg.dim_per_head
    x = torch.randn(7, 32)
    positions = torch.tensor([0, 1, 2, 5, 9, 10, 11])  # gaps, as after selection
    early = DecoderStage(m, range(0, 2), scoring_layer=1, last=False)
    late = DecoderStage(m, range(2, 3), scoring_layer=None, last=True)
    with torch.no_grad():
        want_hidden = x
        want_pre = None
        for i in range(3):
            out = lm.model.layers[i](want_hidden, rope_tables(positions, d, cfg.rope_theta), causal_mask(7),
                                     keep_pre_rope=True)
            want_hidden = out.hidden
            if i == 1:
                want_pre = (out.q_pre_rope, out.k_pre_rope)
            if i == 1:
                want_early = want_hidden
        want_logits = lm.logits(want_hidden[-1:])[0]

        bufs = [torch.full((kv_heads, 9, d), 1e3 * (-1) ** j) for j in range(6)]  # capacity 9, nothing valid
        for start, stop in ((0, 5), (5, 6), (6, 7)):
            pos, length = positions[start:stop], torch.tensor(start)
            hidden, q_pre, k_pre, *rows_early = early(x[start:stop], pos, length, *bufs[:4])
            logits, *rows_late = late(hidden, pos, length, *bufs[4:])
            for buf, rows in zip(bufs, rows_early + rows_late):
                assert rows.shape == (kv_heads, stop - start, d)  # only the new rows come back
                buf[:, start:stop] = rows
            if start == 0:
                torch.testing.assert_close(q_pre, want_pre[0][:, :5], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(k_pre, want_pre[1][:, :5], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(hidden, want_early[:5], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hidden, want_early[6:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=1e-5)


def test_exported_decoder_runs_under_half_the_eager_nodes(tiny_export):
    import onnx

    from prunevid import spec

    for name in ("decoder_early", "decoder_late"):
        graph = onnx.load(str(tiny_export / spec.GRAPH_DIR / f"{name}.onnx")).graph
        layers = len([i for i in spec.past_names(range(100)) if any(t.name == i for t in graph.input)]) // 2
        nodes = [n for n in graph.node if n.op_type != "Constant"]
        shape_ops = [n for n in nodes if n.op_type in ("Shape", "Unsqueeze", "Concat", "Gather")]
        # the eager form exported at about 150 nodes and 50 shape ops per layer, this form at about 62 and 6
        assert len(nodes) <= 65 * layers + 60, (name, len(nodes), layers)
        assert len(shape_ops) <= 7 * layers + 20, (name, len(shape_ops), layers)
