"""Model configuration parsed from a checkpoint's ``config.json``.

Missing fields take the defaults of the corresponding transformers config classes (PLLaVA's 7B
``text_config`` spells out only a few fields and relies on ``LlamaConfig``'s defaults). Which
architectures exist, and what they need, is data in :data:`FAMILIES`; nothing branches on names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from prunevid.errors import ModelDirError, read_json_object


@dataclass(frozen=True)
class VisionConfig:
    """CLIP vision tower (defaults: transformers' ``CLIPVisionConfig``)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    model_type: str = "clip_vision_model"

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class TextConfig:
    """LLaMA decoder (defaults: transformers' ``LlamaConfig``)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    model_type: str = "llama"

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class ModelConfig:
    """A whole video LLM: vision tower, projector, pooling and decoder."""

    family: str
    vision: VisionConfig
    text: TextConfig
    image_token_index: int = 32000
    pad_token_id: int | None = None
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    projector_hidden_act: str = "gelu"
    num_frames: int = 16
    pooling_shape: tuple[int, int, int] = (16, 12, 12)
    architectures: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def tokens_per_frame(self) -> int:
        return self.pooling_shape[1] * self.pooling_shape[2]


@dataclass(frozen=True)
class Family:
    """What prunevid needs to know about one model family."""

    name: str
    architectures: tuple[str, ...]
    vision_model_types: tuple[str, ...]
    text_model_types: tuple[str, ...]
    template: str
    vision_select_strategies: tuple[str, ...] = ("default",)


FAMILIES: dict[str, Family] = {
    "pllava": Family(
        name="pllava",
        architectures=("PllavaForConditionalGeneration",),
        vision_model_types=("clip_vision_model",),
        text_model_types=("llama",),
        template="vcg",
    ),
}

_SUPPORTED_ACTS = {"vision": ("quick_gelu", "gelu"), "text": ("silu",), "projector": ("gelu",)}


def _pick(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in raw.items() if k in names and v is not None}


def _text_config(raw: dict[str, Any]) -> TextConfig:
    raw = dict(raw)
    rope = raw.get("rope_parameters") or raw.get("rope_scaling")
    if isinstance(rope, dict):
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind != "default":
            raise ModelDirError(f"RoPE scaling '{kind}' is not supported (only default RoPE)")
        if "rope_theta" in rope:
            raw["rope_theta"] = rope["rope_theta"]
    return TextConfig(**_pick(TextConfig, raw))


def family_for(architectures: list[str] | tuple[str, ...]) -> Family:
    """The family whose architecture list contains one of ``architectures``."""
    for fam in FAMILIES.values():
        if any(a in fam.architectures for a in architectures):
            return fam
    known = ", ".join(a for f in FAMILIES.values() for a in f.architectures)
    got = ", ".join(architectures) or "none"
    raise ModelDirError(f"unsupported architecture {got} (supported: {known})")


_NOT_TOP_LEVEL = ("family", "vision", "text", "extra", "pooling_shape", "architectures")


def parse_config(raw: dict[str, Any]) -> ModelConfig:
    """Build a :class:`ModelConfig` from the parsed ``config.json`` of a checkpoint."""
    fam = family_for(tuple(raw.get("architectures") or ()))
    vision = VisionConfig(**_pick(VisionConfig, raw.get("vision_config") or {}))
    text = _text_config(raw.get("text_config") or {})
    cfg = ModelConfig(
        family=fam.name,
        vision=vision,
        text=text,
        architectures=tuple(raw["architectures"]),
        pooling_shape=tuple(raw.get("pooling_shape") or (16, 12, 12)),
        **_pick(ModelConfig, {k: v for k, v in raw.items() if k not in _NOT_TOP_LEVEL}),
    )
    _check(cfg, fam)
    return cfg


def _check(cfg: ModelConfig, fam: Family) -> None:
    if cfg.vision.model_type not in fam.vision_model_types:
        raise ModelDirError(f"vision tower '{cfg.vision.model_type}' is not supported for {fam.name}")
    if cfg.text.model_type not in fam.text_model_types:
        raise ModelDirError(f"language model '{cfg.text.model_type}' is not supported for {fam.name}")
    if cfg.vision_feature_select_strategy not in fam.vision_select_strategies:
        raise ModelDirError(f"vision_feature_select_strategy '{cfg.vision_feature_select_strategy}' is not supported")
    for part, act in (("vision", cfg.vision.hidden_act), ("text", cfg.text.hidden_act), ("projector", cfg.projector_hidden_act)):
        if act not in _SUPPORTED_ACTS[part]:
            raise ModelDirError(f"{part} activation '{act}' is not supported")
    if cfg.vision.image_size % cfg.vision.patch_size:
        raise ModelDirError("vision image_size is not a multiple of patch_size")
    if len(cfg.pooling_shape) != 3:
        raise ModelDirError(f"pooling_shape must have 3 entries, got {list(cfg.pooling_shape)}")


def read_config(model_dir: Path) -> ModelConfig:
    """Read and parse ``model_dir/config.json``; raises :class:`ModelDirError` on any problem."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"model folder not found: {model_dir}")
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelDirError(f"no config.json in {model_dir}")
    raw = read_json_object(path, ModelDirError)
    try:
        return parse_config(raw)
    except (TypeError, ValueError) as exc:
        raise ModelDirError(f"invalid {path}: {exc}") from None


def config_to_json(cfg: ModelConfig) -> dict[str, Any]:
    """The PLLaVA-style ``config.json`` dict for ``cfg`` (what ``make-tiny`` writes)."""
    return {
        "architectures": list(cfg.architectures) or list(FAMILIES[cfg.family].architectures[:1]),
        "model_type": "llava",
        "image_token_index": cfg.image_token_index,
        "pad_token_id": cfg.pad_token_id,
        "vision_feature_layer": cfg.vision_feature_layer,
        "vision_feature_select_strategy": cfg.vision_feature_select_strategy,
        "projector_hidden_act": cfg.projector_hidden_act,
        "num_frames": cfg.num_frames,
        "pooling_method": "avg",
        "pooling_shape": list(cfg.pooling_shape),
        "frame_shape": [cfg.vision.grid, cfg.vision.grid],
        "use_pooling": True,
        "vision_config": asdict(cfg.vision),
        "text_config": {k: v for k, v in asdict(cfg.text).items() if v is not None},
        "torch_dtype": "float32",
    }
