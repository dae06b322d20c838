"""Load a checkpoint folder in the layout of the public PLLaVA checkpoints.

Layout: ``config.json``, safetensors weights (``model.safetensors``, or shards with
``model.safetensors.index.json``), tokenizer files and ``preprocessor_config.json``. PLLaVA stores
its language model PEFT-wrapped with un-merged LoRA on ``q_proj``/``v_proj``; the LoRA is merged at
load as ``W + (lora_alpha / r) * B @ A``, with ``lora_alpha`` chosen by the caller (PLLaVA's demo
uses 4, PruneVid's MVBench/VideoMME/EgoSchema runs 14). Pickled ``.bin`` weights are refused:
never unpickle untrusted files.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from prunevid.errors import ModelDirError, read_json_object
from prunevid.fields import Field, check_fields, check_map
from prunevid.model.config import ModelConfig, read_config

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# (prefix on disk, prefix in prunevid), applied in order; the first match wins.
KEY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("language_model.base_model.model.", "language_model."),  # PEFT-wrapped (released PLLaVA)
    ("model.language_model.", "language_model.model."),  # transformers >= 5 in-memory names
    ("model.vision_tower.vision_model.", "vision_tower.vision_model."),
    ("model.vision_tower.", "vision_tower.vision_model."),  # transformers >= 5 flattens CLIPVisionModel
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.image_newline", "image_newline"),  # LLaVA-OneVision, transformers >= 5 names
    ("lm_head.", "language_model.lm_head."),
)
INDEX_FIELDS = (Field("weight_map", "object", required=True),)
LORA_A, LORA_B, BASE = ".lora_A.default.weight", ".lora_B.default.weight", ".base_layer"


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: its folder, parsed config and normalised float32 state dict."""

    path: Path
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint, from its index when there is one."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        raw = check_fields(read_json_object(index, ModelDirError), INDEX_FIELDS, str(index), ModelDirError)
        weight_map = check_map(raw["weight_map"], Field("", "str"), Field("", "name"), str(index), ModelDirError,
                               "weight_map", non_empty=True)
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelDirError(f"{model_dir} lacks weight shards listed in its index: {', '.join(missing)}")
        return files
    if (model_dir / SINGLE_FILE).is_file():
        return [model_dir / SINGLE_FILE]
    shards = sorted(model_dir.glob("model-*-of-*.safetensors"))
    if shards:
        return shards
    if any(model_dir.glob("*.bin")):
        raise ModelDirError(f"{model_dir} has only pickled .bin weights; convert them to safetensors first")
    raise ModelDirError(f"no safetensors weights in {model_dir}")


def read_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    for f in files:
        try:
            with safe_open(str(f), framework="pt") as handle:
                for key in handle.keys():
                    yield key, handle.get_tensor(key)
        except (SafetensorError, OSError) as exc:
            raise ModelDirError(f"cannot read weights {f.name}: {exc}") from None


def normalise_key(key: str) -> str:
    for old, new in KEY_PREFIXES:
        if key.startswith(old):
            key = new + key[len(old):]
            break
    return key.replace(BASE, "")


def merge_lora(state: dict[str, torch.Tensor], lora_alpha: float) -> dict[str, torch.Tensor]:
    """Fold ``lora_A``/``lora_B`` pairs into their base weights and drop them.

    A merged weight that is not finite (the product overflows float32, e.g. with a huge
    ``lora_alpha``) raises :class:`ModelDirError` naming the weight.
    """
    out = {k: v for k, v in state.items() if LORA_A not in k and LORA_B not in k}
    for key_a in (k for k in state if k.endswith(LORA_A)):
        stem = key_a[: -len(LORA_A)]
        key_b, key_w = stem + LORA_B, stem + ".weight"
        if key_b not in state or key_w not in out:
            raise ModelDirError(f"incomplete LoRA pair for {stem}")
        a, b = state[key_a].float(), state[key_b].float()  # [r, in], [out, r]
        merged = out[key_w] + (lora_alpha / a.shape[0]) * (b @ a)
        if not bool(torch.isfinite(merged).all()):
            raise ModelDirError(f"weight {key_w} has non-finite values (NaN or inf) after merging its LoRA "
                                f"with lora_alpha {lora_alpha:g}; use a smaller --lora-alpha")
        out[key_w] = merged
    return out


def finite_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """:func:`read_tensors`, refusing any tensor with a NaN or inf (named with its file)."""
    for f in files:
        for key, value in read_tensors([f]):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ModelDirError(f"weight {key} in {f.name} has non-finite values (NaN or inf); the checkpoint is corrupt")
            yield key, value


def load_state_dict(model_dir: Path, lora_alpha: float) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint, renamed to prunevid's names, LoRA merged, as float32.

    Every tensor is checked to be finite on disk and after the LoRA merge."""
    state = {normalise_key(k): v.float() for k, v in finite_tensors(weight_files(model_dir))}
    return merge_lora(state, lora_alpha)


def load_checkpoint(model_dir: str | Path, lora_alpha: float = 14.0) -> Checkpoint:
    """Read config and weights of a checkpoint folder (no model is built)."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    return Checkpoint(model_dir, config, load_state_dict(model_dir, lora_alpha))


def load_model(model_dir: str | Path, lora_alpha: float = 14.0):
    """Build the model of ``model_dir`` and load its weights; returns ``(model, config)``."""
    ckpt = load_checkpoint(model_dir, lora_alpha)
    with torch.device("meta"):
        model = model_class(ckpt.config)(ckpt.config)
    state = dict(ckpt.state_dict)
    if ckpt.config.text.tie_word_embeddings and "language_model.lm_head.weight" not in state:
        state["language_model.lm_head.weight"] = state.get("language_model.model.embed_tokens.weight")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelDirError(_mismatch_message(missing, unexpected))
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ModelDirError(f"weight {key} has shape {tuple(state[key].shape)}, config implies {tuple(value.shape)}")
    model.load_state_dict(state, assign=True)
    return model.eval(), ckpt.config


def model_class(cfg: ModelConfig) -> type[torch.nn.Module]:
    """The ``nn.Module`` class of ``cfg``'s family (:attr:`prunevid.model.config.Family.model_class`)."""
    import importlib

    from prunevid.model.config import FAMILIES

    module, name = FAMILIES[cfg.family].model_class.split(":")
    return getattr(importlib.import_module(module), name)


def _mismatch_message(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing weights (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected weights (e.g. {unexpected[0]})")
    return "checkpoint does not match its config: " + "; ".join(parts)
