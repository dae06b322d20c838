"""prunevid.costs against hand-computed FLOPs and bytes, and the model's real parameter counts."""

from __future__ import annotations

import pytest

from prunevid import costs
from prunevid.model.config import ModelConfig, TextConfig, VisionConfig

# C = 8, 2 heads of 4, MLP 16, vocab 10. Per token: 2 * (q 64 + k,v 128 + o 64 + gate/up/down 384) = 1280.
TEXT = TextConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2)
# D = 4, MLP 8, 3 layers (2 run at feature layer -2), 4 px / patch 2: 2x2 patches + CLS = 5 tokens.
VISION = VisionConfig(hidden_size=4, intermediate_size=8, num_hidden_layers=3, num_attention_heads=1,
                      image_size=4, patch_size=2)
MODEL = ModelConfig(family="pllava", vision=VISION, text=TEXT, num_frames=2, pooling_shape=(2, 1, 1))


def test_llm_layer_flops_by_hand():
    assert costs.llm_layer_flops(TEXT, 3) == 3 * 1280 + 4 * 6 * 8  # 6 causal pairs, q_dim 8
    assert costs.llm_layer_flops(TEXT, 1, past=2) == 1280 + 4 * 3 * 8  # one token sees 2 cached + itself
    gqa = TextConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1)
    assert costs.llm_layer_flops(gqa, 1) == 2 * (64 + 2 * 8 * 4 + 64 + 384) + 4 * 8


def test_prefill_flops_baseline_and_pruned_by_hand():
    assert costs.prefill_flops(TEXT, 3) == 2 * 4032 + 2 * 8 * 10  # two layers of 3 tokens + head
    deep = TextConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=3, num_attention_heads=2)
    # layer 0 over 3 tokens (4032); layers 1, 2 over the 2 kept (2 * 1280 + 4 * 3 * 8 = 2656 each)
    assert costs.prefill_flops(deep, 3, kept=2, layer=0) == 4032 + 2 * 2656 + 160
    assert costs.prefill_flops(deep, 3, kept=3, layer=0) == costs.prefill_flops(deep, 3)


def test_encoder_flops_by_hand():
    assert costs.vision_layers_run(MODEL) == 2
    assert costs.vit_layer_flops(VISION, 5) == 2 * 5 * (4 * 16 + 2 * 4 * 8) + 4 * 25 * 4  # 1680
    patch = 2 * 4 * 12 * 4  # 4 patches x (3 x 2 x 2) inputs x 4 outputs
    projector = 2 * 4 * (4 * 8 + 8 * 8)  # 4 patch tokens (CLS dropped) through 4 -> 8 -> 8
    assert costs.encoder_flops(MODEL, frames=2) == 2 * (patch + 2 * 1680 + projector)  # 9024


def test_pllava_7b_encoder_and_prefill_by_hand():
    per_frame = (2 * 576 * 588 * 1024  # patch embedding
                 + 23 * (2 * 577 * (4 * 1024**2 + 2 * 1024 * 4096) + 4 * 577**2 * 1024)  # 23 CLIP-L layers
                 + 2 * 576 * (1024 * 4096 + 4096**2))  # projector
    assert costs.encoder_flops(costs.PLLAVA_7B, 16) == 16 * per_frame == 6_243_088_793_600
    seq = 2304 + 86
    layer = seq * 2 * (4 * 4096**2 + 3 * 4096 * 11008) + 4 * (seq * (seq + 1) // 2) * 4096
    assert costs.prefill_flops(costs.PLLAVA_7B.text, seq) == 32 * layer + 2 * 4096 * 32064


def test_merger_flops_by_hand():
    # T = 2 frames of 3 tokens, C = 4: frame distances 2*4*4, static similarity 2*4*3*4, spatial 2 * 2*9*4
    assert costs.merger_flops(2, 3, 4) == 32 + 96 + 144
    assert costs.merger_flops(4, 3, 4, windows=[2, 2]) == 2 * 16 * 4 + 2 * (2 * 4 * 3 * 4) + 4 * 2 * 9 * 4


def test_bytes_by_hand():
    layer = 64 + 2 * 64 + 64 + 3 * 8 * 16 + 2 * 8  # q, k, v, o, MLP, two RMSNorms = 656
    wb = costs.weight_bytes(MODEL)
    assert wb.llm_layers == 2 * layer * 4
    assert wb.head == (10 * 8 + 8) * 4 and wb.embed == 10 * 8 * 4
    assert wb.decode_read == (2 * layer + 88) * 4 == 5600
    assert costs.kv_bytes(TEXT, 10) == 2 * 2 * 2 * 4 * 10 * 4  # layers x K,V x heads x head_dim x positions x fp32
    assert costs.decode_bound_ms(MODEL, 10, bandwidth_gbs=1.0) == pytest.approx((5600 + 1280) / 1e9 * 1e3)
    assert costs.weight_bytes(MODEL, dtype_bytes=2).total * 2 == wb.total


def test_weight_bytes_equal_the_model_parameters_that_run():
    """Every parameter of the tiny model is counted except the vision layers that do not run."""
    from prunevid.model.pllava import PllavaModel
    from prunevid.model.tiny import GEOMETRIES, tiny_config

    cfg = tiny_config(GEOMETRIES["tiny"], {"vocab_size": 512, "image_token_id": 500, "pad_token_id": 0})
    run = costs.vision_layers_run(cfg)
    parts = {"vision": 0, "projector": 0, "llm_layers": 0, "embed": 0, "head": 0}
    for name, p in PllavaModel(cfg).named_parameters():
        if name.startswith("vision_tower."):
            layer = name.split("encoder.layers.")[1].split(".")[0] if "encoder.layers." in name else None
            if "post_layernorm" in name or (layer is not None and int(layer) >= run):
                continue
            parts["vision"] += p.numel()
        elif name.startswith("multi_modal_projector."):
            parts["projector"] += p.numel()
        elif ".layers." in name:
            parts["llm_layers"] += p.numel()
        elif "embed_tokens" in name:
            parts["embed"] += p.numel()
        else:  # lm_head and the final norm
            parts["head"] += p.numel()
    wb = costs.weight_bytes(cfg)
    assert {k: getattr(wb, k) for k in parts} == {k: 4 * v for k, v in parts.items()}


def test_bench_tower_has_pllava_7b_encoder_share():
    """The bench geometry's vision tower costs the same share of the unpruned TTFT as PLLaVA-7B's."""
    from prunevid.model.tiny import GEOMETRIES, tiny_config

    bench = tiny_config(GEOMETRIES["bench"], {"vocab_size": 512, "image_token_id": 500, "pad_token_id": 0})
    target = costs.encoder_share(costs.PLLAVA_7B, 16, text_tokens=86)
    assert 0.15 < target < 0.17
    assert costs.encoder_share(bench, 16, text_tokens=86) == pytest.approx(target, rel=0.02)


def test_pllava_7b_slice_has_real_widths():
    from prunevid.model.tiny import GEOMETRIES

    g = GEOMETRIES["pllava7b-slice"]
    real = costs.PLLAVA_7B
    assert g.vision.hidden_size == real.vision.hidden_size and g.vision.intermediate_size == real.vision.intermediate_size
    assert (g.vision.image_size, g.vision.patch_size) == (real.vision.image_size, real.vision.patch_size)
    for field in ("hidden_size", "intermediate_size", "num_attention_heads", "kv_heads"):
        assert getattr(g.text, field) == getattr(real.text, field)
