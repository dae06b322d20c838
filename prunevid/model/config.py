"""Model configuration parsed from a checkpoint's ``config.json``.

Missing fields take the defaults of the corresponding transformers config classes (PLLaVA's 7B
``text_config`` spells out only a few fields and relies on ``LlamaConfig``'s defaults). Which
architectures exist, and what they need, is data in :data:`FAMILIES`; nothing branches on names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from prunevid.config import MAX_FRAMES
from prunevid.errors import ModelDirError, read_json_object
from prunevid.fields import Field, check_fields, fail


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
    qkv_bias: bool = False  # q/k/v projections with a bias but not o_proj (Qwen2); set by the family


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
    video_token_index: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def tokens_per_frame(self) -> int:
        return self.pooling_shape[1] * self.pooling_shape[2]

    @property
    def placeholder_index(self) -> int:
        """Id of the prompt token the visual rows replace (``<image>`` or ``<video>``, per family)."""
        return getattr(self, FAMILIES[self.family].placeholder_field)

    @property
    def after_visual_ids(self) -> tuple[int, ...]:
        """Ids put right after the placeholder: the family's rows that follow the visual block.

        OneVision appends one learned ``image_newline`` row after the whole video; it is given the
        id ``vocab_size`` (one past the LM head), which only the embedding step knows."""
        return (self.text.vocab_size,) if FAMILIES[self.family].newline_after_video else ()


@dataclass(frozen=True)
class VisionTower:
    """How a family's vision tower is laid out around its encoder layers (what :mod:`prunevid.costs`
    counts): CLIP prepends a class token, has a bias-free patch convolution and a LayerNorm before
    the encoder; SigLIP has no class token, a patch convolution with a bias and no pre-encoder norm."""

    class_token: bool
    patch_bias: bool
    pre_norm: bool


CLIP_TOWER = VisionTower(class_token=True, patch_bias=False, pre_norm=True)
SIGLIP_TOWER = VisionTower(class_token=False, patch_bias=True, pre_norm=False)


@dataclass(frozen=True)
class Family:
    """What prunevid needs to know about one model family.

    Everything that differs between families is declared here once: which ``config.json`` they
    come with, the defaults of the transformers config classes for fields a checkpoint leaves out,
    the module that builds the model, the prompt token the visual rows replace, whether a learned
    newline row follows the video, how each frame's grid is pooled, the default template, and the
    defaults of the family's image processor for ``preprocessor_config.json`` keys left out.
    """

    name: str
    title: str  # how reports name the family
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]  # accepted top-level config.json model_type (absent: accepted)
    vision_model_types: tuple[str, ...]
    text_model_types: tuple[str, ...]
    template: str
    model_class: str  # "module:Class" of the nn.Module built for the family
    vision_select_strategies: tuple[str, ...] = ("default",)
    top_defaults: tuple[tuple[str, Any], ...] = ()
    vision_defaults: tuple[tuple[str, Any], ...] = ()
    text_defaults: tuple[tuple[str, Any], ...] = ()
    placeholder_field: str = "image_token_index"  # the ModelConfig field holding the placeholder id
    newline_after_video: bool = False
    pooling: str = "avg"  # "avg": pooling_shape from config.json; "bilinear": ceil(grid / 2) per side
    tokenizer_style: str = "llama"  # prunevid.model.tiny_tokenizer.STYLES
    exact_patch_grid: bool = True  # image_size must be a multiple of patch_size (SigLIP-384: 27 patches of 14 px)
    tower: VisionTower = CLIP_TOWER
    # preprocessor_config.json keys the family's processor defaults differently from CLIPImageProcessor
    preprocessor_defaults: tuple[tuple[str, Any], ...] = ()


FAMILIES: dict[str, Family] = {
    "pllava": Family(
        name="pllava",
        title="PLLaVA",
        architectures=("PllavaForConditionalGeneration",),
        model_types=("llava",),
        vision_model_types=("clip_vision_model",),
        text_model_types=("llama",),
        template="vcg",
        model_class="prunevid.model.pllava:PllavaModel",
    ),
    # transformers' LlavaOnevisionConfig, its SigLIP sub-config defaults and Qwen2Config.
    "llava-onevision": Family(
        name="llava-onevision",
        title="LLaVA-OneVision",
        architectures=("LlavaOnevisionForConditionalGeneration",),
        model_types=("llava_onevision",),
        vision_model_types=("siglip_vision_model",),
        text_model_types=("qwen2",),
        template="ov-chat",
        model_class="prunevid.model.onevision:OnevisionModel",
        vision_select_strategies=("full",),
        top_defaults=(("image_token_index", 151646), ("video_token_index", 151647), ("vision_feature_layer", -1),
                      ("vision_feature_select_strategy", "full"), ("num_frames", 32)),
        vision_defaults=(("hidden_size", 1152), ("intermediate_size", 4304), ("num_hidden_layers", 26),
                         ("num_attention_heads", 16), ("image_size", 384), ("patch_size", 14),
                         ("hidden_act", "gelu_pytorch_tanh"), ("layer_norm_eps", 1e-6)),
        text_defaults=(("vocab_size", 151936), ("hidden_size", 4096), ("intermediate_size", 22016),
                       ("num_key_value_heads", 32), ("max_position_embeddings", 32768), ("qkv_bias", True)),
        placeholder_field="video_token_index",
        newline_after_video=True,
        pooling="bilinear",
        tokenizer_style="chatml",
        exact_patch_grid=False,
        tower=SIGLIP_TOWER,
        # LlavaOnevisionImageProcessor / VideoProcessor: do_center_crop None (no crop); the hub configs omit it
        preprocessor_defaults=(("do_center_crop", False),),
    ),
}

_SUPPORTED_ACTS = {"vision": ("quick_gelu", "gelu", "gelu_pytorch_tanh"), "text": ("silu",), "projector": ("gelu",)}

# Upper bounds far above any released model, low enough that a typo cannot build a model of
# billions of modules or allocate terabytes.
MAX_WIDTH = 1 << 16
MAX_FFN = 1 << 18
MAX_LAYERS = 1024
MAX_HEADS = 1024
MAX_IMAGE = 4096
MAX_VOCAB = 1 << 22
MAX_POSITIONS = 1 << 22

VISION_FIELDS: tuple[Field, ...] = (
    Field("hidden_size", "int", 1, MAX_WIDTH),
    Field("intermediate_size", "int", 1, MAX_FFN),
    Field("num_hidden_layers", "int", 1, MAX_LAYERS),
    Field("num_attention_heads", "int", 1, MAX_HEADS),
    Field("num_channels", "int", 3, 3),  # frames are RGB
    Field("image_size", "int", 1, MAX_IMAGE),
    Field("patch_size", "int", 1, MAX_IMAGE),
    Field("hidden_act", "str", choices=_SUPPORTED_ACTS["vision"]),
    Field("layer_norm_eps", "float", 0, 1, lo_open=True),
    Field("model_type", "str"),
)
TEXT_FIELDS: tuple[Field, ...] = (
    Field("vocab_size", "int", 1, MAX_VOCAB),
    Field("hidden_size", "int", 1, MAX_WIDTH),
    Field("intermediate_size", "int", 1, MAX_FFN),
    Field("num_hidden_layers", "int", 1, MAX_LAYERS),
    Field("num_attention_heads", "int", 1, MAX_HEADS),
    Field("num_key_value_heads", "int", 1, MAX_HEADS, nullable=True),
    Field("head_dim", "int", 2, MAX_WIDTH, nullable=True),
    Field("hidden_act", "str", choices=_SUPPORTED_ACTS["text"]),
    Field("max_position_embeddings", "int", 1, MAX_POSITIONS),
    Field("rms_norm_eps", "float", 0, 1, lo_open=True),
    Field("rope_theta", "float", 0, 1e12, lo_open=True),
    Field("attention_bias", "bool"),
    Field("mlp_bias", "bool"),
    Field("tie_word_embeddings", "bool"),
    Field("model_type", "str"),
    Field("qkv_bias", "bool"),  # not a transformers field: the family's default (Qwen2: true)
)
ROPE_FIELDS: tuple[Field, ...] = (
    Field("rope_type", "str"),
    Field("type", "str"),
    Field("rope_theta", "float", 0, 1e12, lo_open=True),
)
TOP_FIELDS: tuple[Field, ...] = (
    Field("architectures", "list", item=Field("", "str")),
    Field("model_type", "str"),
    Field("image_token_index", "int", 0, MAX_VOCAB),
    Field("video_token_index", "int", 0, MAX_VOCAB, nullable=True),
    Field("multimodal_projector_bias", "bool"),
    Field("tie_word_embeddings", "bool"),
    Field("pad_token_id", "int", 0, MAX_VOCAB, nullable=True),
    Field("vision_feature_layer", "int", -MAX_LAYERS - 1, MAX_LAYERS),
    Field("vision_feature_select_strategy", "str"),
    Field("projector_hidden_act", "str", choices=_SUPPORTED_ACTS["projector"]),
    Field("num_frames", "int", 1, MAX_FRAMES),
    Field("pooling_shape", "list", length=3, item=Field("", "int", 1, MAX_IMAGE), nullable=True),
    Field("vision_config", "object", nullable=True),
    Field("text_config", "object", nullable=True),
)


def _text_config(raw: dict[str, Any], file: str, fam: Family) -> TextConfig:
    raw = dict(raw)
    for key in ("rope_parameters", "rope_scaling"):
        check_fields(raw, (Field(key, "object", nullable=True),), file, ModelDirError, "text_config.")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling")
    if isinstance(rope, dict):
        key = "rope_parameters" if raw.get("rope_parameters") else "rope_scaling"
        rope = check_fields(rope, ROPE_FIELDS, file, ModelDirError, f"text_config.{key}.")
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind != "default":
            fail(ModelDirError, file, f"text_config.{key}", f"'{kind}' is not supported (only default RoPE)")
        if "rope_theta" in rope:
            raw["rope_theta"] = rope["rope_theta"]
    if raw.get("use_sliding_window") is True:  # Qwen2's option; the released OneVision configs leave it off
        fail(ModelDirError, file, "text_config.use_sliding_window", "true is not supported (full attention only)")
    raw = {**dict(fam.text_defaults), **raw}
    return TextConfig(**check_fields(raw, TEXT_FIELDS, file, ModelDirError, "text_config."))


def family_for(architectures: list[str] | tuple[str, ...]) -> Family:
    """The family whose architecture list contains one of ``architectures``."""
    for fam in FAMILIES.values():
        if any(a in fam.architectures for a in architectures):
            return fam
    known = ", ".join(a for f in FAMILIES.values() for a in f.architectures)
    got = ", ".join(architectures) or "none"
    raise ModelDirError(f"unsupported architecture {got} (supported: {known})")


def parse_config(raw: dict[str, Any], file: str = "config.json") -> ModelConfig:
    """Build a :class:`ModelConfig` from the parsed ``config.json`` of a checkpoint.

    Every field read is checked for type and range (:data:`TOP_FIELDS`, :data:`VISION_FIELDS`,
    :data:`TEXT_FIELDS`) and across fields (:func:`_check`); a bad one raises
    :class:`ModelDirError` naming ``file`` and the field.
    """
    top = check_fields(raw, TOP_FIELDS, file, ModelDirError)
    if not top.get("architectures"):
        known = ", ".join(a for f in FAMILIES.values() for a in f.architectures)
        fail(ModelDirError, file, "architectures", f"is missing or empty (supported: {known})")
    fam = family_for(tuple(top["architectures"]))
    if "model_type" in top and top["model_type"] not in fam.model_types:
        fail(ModelDirError, file, "model_type", f"'{top['model_type']}' does not match the architecture "
             f"{top['architectures'][0]} (expected '{fam.model_types[0]}')")
    if top.get("multimodal_projector_bias") is False:
        fail(ModelDirError, file, "multimodal_projector_bias", "false is not supported (the projector has biases)")
    top = {**dict(fam.top_defaults), **top}
    vision_raw = {**dict(fam.vision_defaults), **(top.get("vision_config") or {})}
    if vision_raw.pop("vision_use_head", False) is not False:
        fail(ModelDirError, file, "vision_config.vision_use_head", "must be false (the pooling head is not used)")
    vision = VisionConfig(**check_fields(vision_raw, VISION_FIELDS, file, ModelDirError, "vision_config."))
    text = _text_config(top.get("text_config") or {}, file, fam)
    if top.get("tie_word_embeddings"):  # transformers ties the head when either level says so
        text = replace(text, tie_word_embeddings=True)
    scalars = {k: v for k, v in top.items() if k not in _NOT_TOP_LEVEL and k not in ("vision_config", "text_config")}
    cfg = ModelConfig(
        family=fam.name,
        vision=vision,
        text=text,
        architectures=tuple(top["architectures"]),
        pooling_shape=_pooling_shape(top, vision, fam),
        **scalars,
    )
    _check(cfg, fam, file)
    return cfg


_NOT_TOP_LEVEL = ("family", "vision", "text", "extra", "pooling_shape", "architectures", "model_type",
                  "multimodal_projector_bias", "tie_word_embeddings")


def _pooling_shape(top: dict[str, Any], vision: VisionConfig, fam: Family) -> tuple[int, int, int]:
    """``(frames, h, w)`` of the pooled video: config.json's ``pooling_shape`` (PLLaVA), or each
    frame's grid halved, rounded up (OneVision's bilinear ``apply_pooling``: 27 x 27 -> 14 x 14)."""
    if fam.pooling == "bilinear":
        side = -(-vision.grid // 2)
        return (top["num_frames"], side, side)
    return tuple(top.get("pooling_shape") or (16, 12, 12))


def _check(cfg: ModelConfig, fam: Family, file: str) -> None:
    """Checks across fields (each field alone is checked by the tables)."""
    def bad(field: str, problem: str) -> NoReturn:
        fail(ModelDirError, file, field, problem)

    v, t = cfg.vision, cfg.text
    if v.model_type not in fam.vision_model_types:
        bad("vision_config.model_type", f"'{v.model_type}' is not supported for {fam.name}")
    if t.model_type not in fam.text_model_types:
        bad("text_config.model_type", f"'{t.model_type}' is not supported for {fam.name}")
    if cfg.vision_feature_select_strategy not in fam.vision_select_strategies:
        bad("vision_feature_select_strategy", f"'{cfg.vision_feature_select_strategy}' is not supported")
    if v.patch_size > v.image_size or (fam.exact_patch_grid and v.image_size % v.patch_size):
        bad("vision_config.image_size", f"{v.image_size} is not a multiple of vision_config.patch_size {v.patch_size}")
    if v.hidden_size % v.num_attention_heads:
        bad("vision_config.hidden_size", f"{v.hidden_size} is not divisible by vision_config.num_attention_heads {v.num_attention_heads}")
    if t.head_dim is None and t.hidden_size % t.num_attention_heads:
        bad("text_config.hidden_size", f"{t.hidden_size} is not divisible by text_config.num_attention_heads {t.num_attention_heads}")
    if t.num_attention_heads % t.kv_heads:
        bad("text_config.num_key_value_heads", f"{t.kv_heads} does not divide text_config.num_attention_heads {t.num_attention_heads}")
    if t.dim_per_head % 2:
        bad("text_config.head_dim" if t.head_dim else "text_config.hidden_size",
            f"gives an odd head size {t.dim_per_head} (rotary embeddings need an even one)")
    if cfg.video_token_index is not None and cfg.video_token_index >= t.vocab_size:
        bad("video_token_index", f"{cfg.video_token_index} is outside the vocabulary (text_config.vocab_size {t.vocab_size})")
    if cfg.image_token_index >= t.vocab_size:
        bad("image_token_index", f"{cfg.image_token_index} is outside the vocabulary (text_config.vocab_size {t.vocab_size})")
    if cfg.pad_token_id is not None and cfg.pad_token_id >= t.vocab_size:
        bad("pad_token_id", f"{cfg.pad_token_id} is outside the vocabulary (text_config.vocab_size {t.vocab_size})")
    if not -(v.num_hidden_layers + 1) <= cfg.vision_feature_layer <= v.num_hidden_layers:
        bad("vision_feature_layer", f"{cfg.vision_feature_layer} is outside the vision tower's "
            f"{v.num_hidden_layers + 1} hidden states")


def read_config(model_dir: Path) -> ModelConfig:
    """Read and parse ``model_dir/config.json``; raises :class:`ModelDirError` on any problem."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"model folder not found: {model_dir}")
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelDirError(f"no config.json in {model_dir}")
    return parse_config(read_json_object(path, ModelDirError), str(path))


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
