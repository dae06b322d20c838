"""Randomly initialised models of the real architectures, saved in the public PLLaVA layout.

No machine here can download weights, so tests, the demo and benchmarks build small random models,
write them exactly as a released PLLaVA checkpoint is laid out (sharded safetensors with an index,
the language model PEFT-wrapped with un-merged LoRA on ``q_proj``/``v_proj``, a real tokenizer,
``preprocessor_config.json``) and load them back through the same loader as a real checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from prunevid.model.checkpoint import INDEX_FILE
from prunevid.model.config import ModelConfig, TextConfig, VisionConfig, config_to_json


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
    # LLM of 32 layers, so K = 10 sits at PLLaVA's relative depth; small vision tower.
    "bench": Geometry(
        vision=VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                            image_size=336, patch_size=14),
        text=TextConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=32, num_attention_heads=12,
                        num_key_value_heads=12, max_position_embeddings=4096, rms_norm_eps=1e-5),
        pooled_hw=(12, 12),
        shards=3,
    ),
}


def tiny_config(geometry: Geometry, vocab: dict) -> ModelConfig:
    text = replace(geometry.text, vocab_size=vocab["vocab_size"])
    return ModelConfig(
        family="pllava",
        vision=geometry.vision,
        text=text,
        image_token_index=vocab["image_token_id"],
        pad_token_id=vocab["pad_token_id"],
        num_frames=geometry.num_frames,
        pooling_shape=(geometry.num_frames, *geometry.pooled_hw),
        architectures=("PllavaForConditionalGeneration",),
    )


def random_state_dict(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Random weights for ``cfg`` (normal, std 0.02; norms around 1; biases small)."""
    from prunevid.model.pllava import PllavaModel

    gen = torch.Generator().manual_seed(seed)
    model = PllavaModel(cfg)
    state = {}
    for key, value in model.state_dict().items():
        noise = torch.randn(value.shape, generator=gen)
        if "norm" in key and key.endswith("weight"):
            state[key] = 1.0 + 0.1 * noise
        elif key.endswith("position_embedding.weight") or key.endswith("embed_tokens.weight"):
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


def make_tiny(out: str | Path, geometry: str = "tiny", seed: int = 0, force: bool = False) -> Path:
    """Write a random model of ``geometry`` into ``out`` in the PLLaVA checkpoint layout."""
    from prunevid.model.tiny_tokenizer import build_tiny_tokenizer
    from prunevid.outdir import TINY, TINY_MARKER, list_files, write_folder
    from prunevid.runtime.video import Preprocess

    geo = GEOMETRIES[geometry]
    with write_folder(out, TINY, force=force) as tmp:
        vocab = build_tiny_tokenizer(tmp, vocab_size=geo.tokenizer_vocab)
        cfg = tiny_config(geo, vocab)
        save_shards(peft_layout(random_state_dict(cfg, seed), geo.lora_rank, seed), tmp, geo.shards)
        _write_json(tmp / "config.json", config_to_json(cfg))
        _write_json(tmp / "generation_config.json",
                    {"bos_token_id": vocab["bos_token_id"], "eos_token_id": vocab["eos_token_id"],
                     "pad_token_id": vocab["pad_token_id"]})
        size = geo.vision.image_size
        pp = Preprocess(shortest_edge=size, crop_height=size, crop_width=size)
        _write_json(tmp / "preprocessor_config.json", pp.to_dict())
        _write_json(tmp / "processor_config.json", {"processor_class": "PllavaProcessor"})
        # the marker says which files are make-tiny's own: all that ``--force`` may replace later
        _write_json(tmp / TINY_MARKER, {"geometry": geometry, "seed": seed, "lora_rank": geo.lora_rank,
                                        "files": list_files(tmp)})
    return Path(out)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
