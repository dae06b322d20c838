"""Randomly initialised models of the real architectures, saved in the public PLLaVA layout.

No machine here can download weights, so tests, the demo and benchmarks build small random models,
write them exactly as a released PLLaVA checkpoint is laid out (sharded safetensors with an index,
the language model PEFT-wrapped with un-merged LoRA on ``q_proj``/``v_proj``, a real tokenizer,
``preprocessor_config.json``) and load them back through the same loader as a real checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from prunevid.model.checkpoint import INDEX_FILE
from prunevid.model.config import FAMILIES, ModelConfig, TextConfig, VisionConfig, config_to_json


@dataclass(frozen=True)
class Geometry:
    """Sizes of a random model; ``lora_rank`` 0 writes plain (already merged) weights."""

    vision: VisionConfig
    text: TextConfig
    pooled_hw: tuple[int, int]
    num_frames: int = 16
    lora_rank: int = 4
    tokenizer_vocab: int = 512
    shards: int = 2


GEOMETRIES: dict[str, Geometry] = {
    # 112 px / patch 14 = 8x8 patches, pooled to 4x4 = 16 tokens per frame (> 14, so the spatial
    # clustering path runs); 12 LLM layers so PLLaVA's K = 10 is valid.
    "tiny": Geometry(
        vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                            image_size=112, patch_size=14),
        text=TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=12, num_attention_heads=4,
                        num_key_value_heads=4, max_position_embeddings=4096, rms_norm_eps=1e-5),
        pooled_hw=(4, 4),
    ),
    # PLLaVA-7B's token geometry (16 frames of 24x24 patches pooled to 12x12 = 2304 visual tokens)
    # with the tiny towers: cheap enough for tests of the larger token geometry.
    "medium": Geometry(
        vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            image_size=336, patch_size=14),
        text=TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=12, num_attention_heads=4,
                        num_key_value_heads=4, max_position_embeddings=4096, rms_norm_eps=1e-5),
        pooled_hw=(12, 12),
    ),
    # PLLaVA-7B's token geometry (16 frames of 12x12 = 2304 visual tokens) with a ~230M-parameter
    # LLM of 32 layers, so K = 10 sits at PLLaVA's relative depth. The vision tower (384 wide, 6 of
    # 7 layers run, 577 tokens per frame) is sized so that its FLOPs are the same share of the
    # unpruned TTFT (encoder + prefill) as CLIP ViT-L/14-336's in PLLaVA-7B: 16.3% vs 16.1%
    # (prunevid.costs.encoder_share; tests/test_costs.py holds it within 2%).
    "bench": Geometry(
        vision=VisionConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=7, num_attention_heads=6,
                            image_size=336, patch_size=14),
        text=TextConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=32, num_attention_heads=12,
                        num_key_value_heads=12, max_position_embeddings=4096, rms_norm_eps=1e-5),
        pooled_hw=(12, 12),
        shards=3,
    ),
    # PLLaVA-7B's real widths at truncated depth, for per-layer timing (benchmarks/bench_7b_layers.py):
    # one CLIP ViT-L/14-336 layer runs (features of layer -2 of 2), the 1024 -> 4096 -> 4096 projector,
    # two LLaMA-7B layers (4096 wide, 32 heads, MLP 11008; select at K = 0). About 1.8 GB in fp32.
    "pllava7b-slice": Geometry(
        vision=VisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=2, num_attention_heads=16,
                            image_size=336, patch_size=14),
        text=TextConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=2, num_attention_heads=32,
                        num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5),
        pooled_hw=(12, 12),
        lora_rank=0,
        shards=4,
    ),
}


# LLaVA-OneVision: SigLIP (gelu tanh, eps 1e-6) and a Qwen2 decoder with grouped-query attention
# (4 query / 2 key-value heads), q/k/v biases and RoPE theta 1e6, as in the released configs.
_SIGLIP = dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, model_type="siglip_vision_model")
_QWEN2 = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=12, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=1e6,
              model_type="qwen2", qkv_bias=True)
OV_GEOMETRIES: dict[str, Geometry] = {
    # 98 px / patch 14 = 7x7 patches, bilinear to ceil(7/2) = 4x4 = 16 tokens per frame (an odd
    # grid, as OneVision's 27x27 -> 14x14); 12 LLM layers so K = 10 is valid.
    "tiny": Geometry(
        vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            image_size=98, patch_size=14, **_SIGLIP),
        text=TextConfig(**_QWEN2),
        pooled_hw=(4, 4),
        lora_rank=0,
    ),
    # OneVision-7B's token geometry: 32 frames of 27x27 patches (378 px) pooled to 14x14 = 6272
    # visual tokens + the newline, with the tiny towers.
    "ov32": Geometry(
        vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            image_size=378, patch_size=14, **_SIGLIP),
        text=TextConfig(**_QWEN2),
        pooled_hw=(14, 14),
        num_frames=32,
        lora_rank=0,
    ),
}
TINY_MODELS: dict[str, dict[str, Geometry]] = {"pllava": GEOMETRIES, "llava-onevision": OV_GEOMETRIES}
"""The geometries ``make-tiny --model`` offers for each family."""


def check_geometry(model: str, geometry: str) -> None:
    """Raise :class:`ConfigError` unless family ``model`` has a random geometry ``geometry``."""
    from prunevid.errors import ConfigError

    if geometry not in TINY_MODELS[model]:
        raise ConfigError(f"--geometry {geometry} is not offered for {model} (one of {', '.join(TINY_MODELS[model])})")


def tiny_config(geometry: Geometry, vocab: dict, family: str = "pllava") -> ModelConfig:
    text = replace(geometry.text, vocab_size=vocab["vocab_size"])
    fam = FAMILIES[family]
    return ModelConfig(
        family=family,
        vision=geometry.vision,
        text=text,
        image_token_index=vocab["image_token_id"],
        video_token_index=vocab.get("video_token_id"),
        pad_token_id=vocab["pad_token_id"],
        num_frames=geometry.num_frames,
        pooling_shape=(geometry.num_frames, *geometry.pooled_hw),
        architectures=fam.architectures[:1],
        vision_feature_layer=dict(fam.top_defaults).get("vision_feature_layer", -2),
        vision_feature_select_strategy=fam.vision_select_strategies[0],
    )


def random_state_dict(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Random weights for ``cfg`` (normal, std 0.02; norms around 1; biases small)."""
    from prunevid.model.checkpoint import model_class

    gen = torch.Generator().manual_seed(seed)
    model = model_class(cfg)(cfg)
    state = {}
    for key, value in model.state_dict().items():
        noise = torch.randn(value.shape, generator=gen)
        if "norm" in key and key.endswith("weight"):
            state[key] = 1.0 + 0.1 * noise
        elif key.endswith(("position_embedding.weight", "embed_tokens.weight", "image_newline")):
            state[key] = 0.5 * noise
        else:
            state[key] = 0.02 * noise * (2.0 if key.endswith("weight") else 1.0)
    return state


def peft_layout(state: dict[str, torch.Tensor], rank: int, seed: int) -> dict[str, torch.Tensor]:
    """Rename to the released PLLaVA keys and split ``q_proj``/``v_proj`` into base + LoRA.

    The stored base weight is the random weight and the LoRA pair is extra, so the merged weight
    depends on ``lora_alpha``, as on a real checkpoint.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith("language_model."):
            out[key] = value
            continue
        disk = "language_model.base_model.model." + key[len("language_model."):]
        if rank and (".q_proj.weight" in key or ".v_proj.weight" in key):
            stem = disk[: -len(".weight")]
            out[stem + ".base_layer.weight"] = value
            out[stem + ".lora_A.default.weight"] = 0.02 * torch.randn(rank, value.shape[1], generator=gen)
            out[stem + ".lora_B.default.weight"] = 0.02 * torch.randn(value.shape[0], rank, generator=gen)
        else:
            out[disk] = value
    return out


def save_shards(state: dict[str, torch.Tensor], out: Path, shards: int) -> None:
    """Write ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``."""
    from safetensors.torch import save_file

    keys = sorted(state)
    per = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[i * per : (i + 1) * per]}
        save_file(part, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True))


def make_tiny(out: str | Path, geometry: str = "tiny", seed: int = 0, force: bool = False,
              model: str = "pllava") -> Path:
    """Write a random ``model`` of ``geometry`` into ``out`` in that family's public checkpoint layout
    (PLLaVA: PEFT-wrapped shards; LLaVA-OneVision: the llava-hf layout, ChatML tokenizer)."""
    from prunevid.model.tiny_tokenizer import build_tiny_tokenizer
    from prunevid.outdir import TINY, TINY_MARKER, list_files, write_folder

    geo = TINY_MODELS[model][geometry]
    writer = _LAYOUTS[model]
    with write_folder(out, TINY, force=force) as tmp:
        vocab = build_tiny_tokenizer(tmp, vocab_size=geo.tokenizer_vocab, style=FAMILIES[model].tokenizer_style)
        cfg = tiny_config(geo, vocab, model)
        save_shards(peft_layout(random_state_dict(cfg, seed), geo.lora_rank, seed) if writer.peft
                    else random_state_dict(cfg, seed), tmp, geo.shards)
        _write_json(tmp / "config.json", writer.config(cfg))
        _write_json(tmp / "generation_config.json",
                    {k: vocab[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if vocab[k] is not None})
        _write_json(tmp / "preprocessor_config.json", writer.preprocessor(geo.vision.image_size))
        _write_json(tmp / "processor_config.json", {"processor_class": writer.processor_class})
        # the marker says which files are make-tiny's own: all that ``--force`` may replace later
        _write_json(tmp / TINY_MARKER, {"model": model, "geometry": geometry, "seed": seed,
                                        "lora_rank": geo.lora_rank, "files": list_files(tmp)})
    return Path(out)


def _clip_preprocessor(size: int) -> dict:
    """PLLaVA's CLIPImageProcessor: shortest edge, centre crop, CLIP mean/std."""
    from prunevid.runtime.video import Preprocess

    return Preprocess(shortest_edge=size, crop_height=size, crop_width=size).to_dict()


def _onevision_preprocessor(size: int) -> dict:
    """LLaVA-OneVision's video processor as the hub configs set it: a square bicubic resize (no
    crop), rescale 1/255, mean/std 0.5."""
    return {"do_convert_rgb": True, "do_center_crop": False, "do_normalize": True, "do_rescale": True,
            "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 3,
            "rescale_factor": 1 / 255, "size": {"height": size, "width": size},
            "video_processor_type": "LlavaOnevisionVideoProcessor"}


def onevision_config_json(cfg: ModelConfig) -> dict:
    """The llava-hf ``config.json`` of a LLaVA-OneVision ``cfg`` (transformers' LlavaOnevisionConfig;
    ``num_frames`` is prunevid's own field, ignored by transformers)."""
    text = {k: v for k, v in asdict(cfg.text).items() if v is not None and k not in ("qkv_bias", "rope_theta")}
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.text.rope_theta}
    size = cfg.vision.image_size
    return {
        "architectures": list(cfg.architectures),
        "model_type": "llava_onevision",
        "image_token_index": cfg.image_token_index,
        "video_token_index": cfg.video_token_index,
        "pad_token_id": cfg.pad_token_id,
        "projector_hidden_act": cfg.projector_hidden_act,
        "vision_feature_layer": cfg.vision_feature_layer,
        "vision_feature_select_strategy": cfg.vision_feature_select_strategy,
        "multimodal_projector_bias": True,
        "tie_word_embeddings": cfg.text.tie_word_embeddings,
        "vision_aspect_ratio": "anyres_max_9",
        "image_grid_pinpoints": [[size, size]],
        "num_frames": cfg.num_frames,
        "vision_config": {**asdict(cfg.vision), "vision_use_head": False},
        "text_config": text,
        "torch_dtype": "float32",
    }


@dataclass(frozen=True)
class _Layout:
    """How one family's checkpoint folder is written."""

    config: Callable[[ModelConfig], dict]
    preprocessor: Callable[[int], dict]
    processor_class: str
    peft: bool  # language model PEFT-wrapped with un-merged LoRA (released PLLaVA)


_LAYOUTS: dict[str, _Layout] = {
    "pllava": _Layout(config_to_json, _clip_preprocessor, "PllavaProcessor", peft=True),
    "llava-onevision": _Layout(onevision_config_json, _onevision_preprocessor, "LlavaOnevisionProcessor", peft=False),
}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
