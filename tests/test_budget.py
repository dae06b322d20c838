"""Memory budgets against hand-computed cases, and PLLaVA-7B on the Jetson targets."""

from __future__ import annotations

from dataclasses import replace

import pytest

from prunevid.costs import PLLAVA_7B
from prunevid.errors import ConfigError
from prunevid.model.config import ModelConfig, TextConfig, VisionConfig
from prunevid.trt.budget import RUNTIME_OVERHEAD_BYTES, Deployment, activation_bytes, budget, check_budget
from prunevid.trt.targets import GIB, TARGETS, Target, get_target

# A toy model small enough to add up by hand: text C=8, FFN 16, 2 layers, 2 heads of 4 (2 KV heads),
# vocabulary 10; vision width 4, FFN 8, 1 head, 4x4 pixels in 2x2 patches (5 tokens with CLS);
# frames pooled to 2x2 = 4 tokens each.
TOY = ModelConfig(
    family="pllava",
    vision=VisionConfig(hidden_size=4, intermediate_size=8, num_hidden_layers=2, num_attention_heads=1,
                        image_size=4, patch_size=2),
    text=TextConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2),
    num_frames=2,
    pooling_shape=(2, 2, 2),
)
TOY_WEIGHTS = {"encoder": 1000, "merger": 0, "embed": 500, "decoder_early": 3000, "score": 0, "select": 0,
               "decoder_late": 4000}
TOY_DEPLOYMENT = Deployment(TOY, layer=0, precision="fp16", frames=2, max_prompt_tokens=10, max_new_tokens=5,
                            graph_weight_bytes=TOY_WEIGHTS)


def toy_target(memory_bytes: int, shared: bool = True) -> Target:
    return Target("toy", "toy", memory_bytes / GIB, shared, "sm_87", ("10.3",), (), ("fp16",), 1, 1.0, 0.0)


def test_toy_rows_kv_and_activations_by_hand():
    d = TOY_DEPLOYMENT
    assert d.max_prompt_rows == 18  # 10 text + 2 frames x 4 tokens
    assert d.cache_rows == 22  # 18 + 5 - 1
    act = activation_bytes(d)
    # encoder: 2 frames x (3*4*4 pixels + 5 x (4*4 + 8) + 1 x 5 x 5 logits + 4 x 8 out) = 450 values x 2 B
    assert act["encoder"] == 900
    # merger: 3 x 8 rows x 8 x 2 B + 2 maps x 2 frames x 4 x 4 x 4 B
    assert act["merger"] == 384 + 256
    # one layer: 18 x (4*8 + 2*16) + 2 heads x 18 x 19 logits + 2 x 2 x 18 x 4 new K/V = 2124 values;
    # early I/O: 18 x (2*8 + 2*4 + 2*4) + 2 x 1 layer x 2 x 18 x 4 + 18 positions = 882
    assert act["decoder_early"] == (2124 + 882) * 2
    # late I/O: 18 x 8 + 10 logits + 2 x 1 layer x 2 x 18 x 4 = 442
    assert act["decoder_late"] == (2124 + 442) * 2
    # score: 2 heads x 10 question rows x 18 keys + 2 x 18 x 4 inputs, + 18 float32 scores
    assert act["score"] == 504 * 2 + 72
    # decode: 2 heads x 23 + 2 x 16 + 4 x 8
    assert act["decode step"] == 110 * 2
    b = budget(d, toy_target(4 * GIB), workspace_mib=1)
    assert b.kv_cache == 2 * 2 * 2 * 4 * 22 * 2 == 1408  # layers x K,V x H_kv x d x rows x 2 B
    assert (b.weights, b.activations, b.activation_graph, b.engine_load) == (8500, 6012, "decoder_early", 4000)
    assert b.host_kv == 1408  # shared memory: the chain's host cache beside the device copy
    assert b.total == 8500 + (1 << 20) + RUNTIME_OVERHEAD_BYTES + max(2 * 1408 + 6012, 4000)


def test_engine_load_only_on_shared_memory_and_counted_as_a_maximum():
    big_plan = replace(TOY_DEPLOYMENT, graph_weight_bytes={**TOY_WEIGHTS, "decoder_late": 100_000})
    shared = budget(big_plan, toy_target(4 * GIB), workspace_mib=1)
    assert shared.engine_load == 100_000
    assert shared.total == shared.weights + (1 << 20) + RUNTIME_OVERHEAD_BYTES + 100_000  # the load peak wins
    discrete = budget(big_plan, toy_target(4 * GIB, shared=False), workspace_mib=1)
    assert discrete.engine_load == 0 and discrete.host_kv == 0  # host copies are not in GPU memory
    assert discrete.total == discrete.weights + (1 << 20) + RUNTIME_OVERHEAD_BYTES + 1408 + 6012


def test_fits_at_the_byte_and_refusal_names_numbers_and_the_fix():
    total = budget(TOY_DEPLOYMENT, toy_target(4 * GIB), workspace_mib=1).total
    assert check_budget(TOY_DEPLOYMENT, toy_target(total), workspace_mib=1).fits
    with pytest.raises(ConfigError) as exc:
        check_budget(TOY_DEPLOYMENT, toy_target(total - 1), workspace_mib=1, what="toy")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("toy does not fit toy:")
    assert "22 rows" in msg
    # one row fewer saves 2 x 64 B of KV (2 layers x 2 x 2 heads x 4 x 2 B, host and device), enough for the missing byte;
    # one frame fewer or one prompt token fewer also fits
    assert "--max-new-tokens 4" in msg
    assert "--frames 1 (export again)" in msg
    assert "--max-prompt-tokens 9" in msg


def test_pllava_7b_fp16_refused_on_orin_nano_accepted_on_agx_orin_64():
    d = Deployment(PLLAVA_7B, layer=10, precision="fp16", frames=16, max_prompt_tokens=256, max_new_tokens=64)
    # parameters by hand: 32 LLaMA layers of 4*4096^2 + 3*4096*11008 + 2*4096 = 202,383,360; embed and head
    # 32064*4096 (+4096 final norm); CLIP-L/336: 23 layers of 12,596,224 + 1,196,032 embeddings/pre-norm;
    # projector 1024*4096 + 4096*4096 + 2*4096: 7,050,828,800 parameters, 2 bytes each
    with pytest.raises(ConfigError) as exc:
        check_budget(d, get_target("orin-nano-8"), what="PLLaVA-7B")
    msg = str(exc.value)
    assert "PLLaVA-7B does not fit orin-nano-8" in msg and "weights 13.13 GiB" in msg
    assert "6.50 GiB usable" in msg and "2623 rows" in msg
    assert "agx-orin-32" in msg  # no single option fits the Nano; the smallest Jetson that does is named
    b = check_budget(d, get_target("agx-orin-64"))
    assert b.weights == 14_101_657_600
    assert b.kv_cache == 32 * 2 * 32 * 128 * 2623 * 2 == 1_375_207_424
    assert b.workspace == 4 << 30 and b.usable == 62 * GIB
    assert b.engine_load == b.weights - sum(v for k, v in d.graph_weights().items() if k != "decoder_late")
    assert b.total < b.usable and b.fits


def test_int8_export_is_suggested_where_it_fits():
    d = Deployment(PLLAVA_7B, layer=10, precision="fp16", frames=16, max_prompt_tokens=256, max_new_tokens=64)
    with pytest.raises(ConfigError, match="an int8 weight-quantized export"):
        check_budget(d, get_target("orin-nx-16"))


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(ConfigError) as exc:
        get_target("orin-nano")
    assert str(exc.value) == "unknown target 'orin-nano'; known targets: " + ", ".join(TARGETS)


def test_targets_have_sources_for_every_figure_and_orin_has_no_fp8():
    for t in TARGETS.values():
        figures = ("memory", "bandwidth", "sm", "tensorrt", "precisions", "workspace")
        for figure in figures + (("os_reserve", "jetpack") if t.shared_memory else ()):
            assert t.source(figure).startswith(("https://", "prunevid's"))
        assert t.usable_bytes < t.memory_bytes or not t.shared_memory
    for name in ("orin-nano-8", "orin-nx-16", "agx-orin-32", "agx-orin-64"):
        t = get_target(name)
        assert t.sm == "sm_87" and "fp8" not in t.precisions and t.tensorrt[0] == "10.3"
    assert "fp8" in get_target("thor").precisions and get_target("thor").sm == "sm_110"
    assert get_target("h100").shared_memory is False and get_target("h100").memory_gib == 80


def test_check_free_before_running():
    from prunevid.trt.budget import check_free

    b = budget(TOY_DEPLOYMENT, toy_target(4 * GIB), workspace_mib=1)
    check_free(b, b.total)
    with pytest.raises(ConfigError, match=r"the engines need 1\.00 GiB .* but the device has 0\.50 GiB free now"):
        check_free(b, 512 << 20)


def test_quantized_graphs_are_sized_by_their_real_bytes():
    """A quantized export's decoder graphs keep their bytes at any build precision; its float graphs
    scale from the export's dtype."""
    from prunevid.trt.budget import export_graph_bytes

    sizes = {"encoder": 4000, "embed": 800, "decoder_early": 1300, "decoder_late": 900, "merger": 0}
    fp16 = export_graph_bytes(sizes, "fp32", "fp16", ("decoder_early", "decoder_late"))
    assert fp16 == {"encoder": 2000, "embed": 400, "decoder_early": 1300, "decoder_late": 900, "merger": 0}
    # a float export: every graph scales
    assert export_graph_bytes(sizes, "fp32", "fp16") == {k: v // 2 for k, v in sizes.items()}
    assert export_graph_bytes(sizes, "fp32", "fp32", ("decoder_late",)) == sizes
