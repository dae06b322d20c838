"""Analytic cost of a PLLaVA-style video LLM for given widths and token counts.

FLOPs count 2 x the multiply-adds of the matrix products (projections, MLPs, attention scores and
their weighted sums, the patch embedding, the projector). Norms, softmax, activations, RoPE and
pooling are left out (well under 1% at every geometry here). Attention in the LLM is causal
(``n (n + 1) / 2`` query-key pairs for ``n`` new tokens, plus ``n * past`` with a cache); attention
in the vision tower is full (``n^2`` pairs). The unpruned time to first token is encoder + prefill;
PruneVid's adds the merger.

Bytes are what a deployment holds: the vision layers that run (``vision_feature_layer`` -2 runs all
but the last), the projector and the whole LLM; the KV cache per position. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunevid.model.config import FAMILIES, ModelConfig, TextConfig, VisionConfig

# PLLaVA-7B: CLIP ViT-L/14-336 (features of layer -2, so 23 of 24 layers run), a 1024 -> 4096 -> 4096
# projector, LLaMA-7B (Vicuna-7B v1.5) with 32 layers, selection layer K = 10. Sizes: models.md 4.1.
PLLAVA_7B = ModelConfig(
    family="pllava",
    vision=VisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                        image_size=336, patch_size=14),
    text=TextConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                    num_attention_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5),
    num_frames=16,
    pooling_shape=(16, 12, 12),
)
PLLAVA_7B_LAYER = 10


def vision_layers_run(cfg: ModelConfig) -> int:
    """How many CLIP layers run to reach ``vision_feature_layer`` (transformers' numbering)."""
    n = cfg.vision.num_hidden_layers
    layer = cfg.vision_feature_layer
    return layer if layer >= 0 else n + 1 + layer


def vit_layer_flops(vision: VisionConfig, tokens: int) -> float:
    """One CLIP layer over ``tokens`` (CLS included): q, k, v, o, fc1, fc2 and full attention."""
    d, inter = vision.hidden_size, vision.intermediate_size
    linear = 2 * tokens * (4 * d * d + 2 * d * inter)
    attention = 2 * 2 * tokens * tokens * d  # QK^T and AV
    return float(linear + attention)


def encoder_flops(cfg: ModelConfig, frames: int) -> float:
    """Vision tower (patch embedding + the layers that run) and projector for ``frames`` frames."""
    v = cfg.vision
    patches = v.grid * v.grid
    patch_embed = 2 * patches * (v.num_channels * v.patch_size**2) * v.hidden_size
    tokens = patches + FAMILIES[cfg.family].tower.class_token  # CLIP: + CLS; SigLIP: patches only
    layers = vision_layers_run(cfg) * vit_layer_flops(v, tokens)
    c = cfg.text.hidden_size
    projector = 2 * patches * (v.hidden_size * c + c * c)  # CLS (where there is one) dropped before the projector
    return float(frames * (patch_embed + layers + projector))


def causal_pairs(new: int, past: int = 0) -> int:
    """Query-key pairs of causal attention for ``new`` tokens after ``past`` cached ones."""
    return new * past + new * (new + 1) // 2


def llm_layer_flops(text: TextConfig, new: int, past: int = 0) -> float:
    """One LLaMA layer for ``new`` tokens attending to ``past`` cached ones (and to each other, causally)."""
    c, inter = text.hidden_size, text.intermediate_size
    q_dim = text.num_attention_heads * text.dim_per_head
    kv_dim = text.kv_heads * text.dim_per_head
    per_token = 2 * (c * q_dim + 2 * c * kv_dim + q_dim * c + 3 * c * inter)  # q, k, v, o, gate/up/down
    attention = 2 * 2 * causal_pairs(new, past) * q_dim  # QK^T and AV
    return float(new * per_token + attention)


def head_flops(text: TextConfig) -> float:
    """The LM head on the one position whose logits are needed."""
    return float(2 * text.hidden_size * text.vocab_size)


def prefill_flops(text: TextConfig, seq: int, kept: int | None = None, layer: int = PLLAVA_7B_LAYER,
                  question_rows: int = 0) -> float:
    """Prefill of a ``seq``-token prompt; with ``kept``, layers after ``layer`` see only ``kept`` tokens.

    ``kept`` None is the plain baseline: every layer over ``seq`` tokens. PruneVid runs layers
    ``0..layer`` over the merged prompt and the rest over the kept positions; its scoring map at
    layer K adds ``question_rows x seq`` query-key products (``QK^T`` only).
    """
    n = text.num_hidden_layers
    if kept is None:
        return n * llm_layer_flops(text, seq) + head_flops(text)
    scoring = 2 * question_rows * seq * text.num_attention_heads * text.dim_per_head
    return ((layer + 1) * llm_layer_flops(text, seq) + scoring + (n - layer - 1) * llm_layer_flops(text, kept)
            + head_flops(text))


def merger_flops(frames: int, tokens_per_frame: int, width: int, windows: list[int] | None = None) -> float:
    """Upper bound of stages A-C: frame clustering, static similarity per window, spatial distances.

    ``windows`` are the temporal segment lengths (default: one window of every frame, the bound).
    The spatial term assumes every frame's whole grid is clustered (the real groups are smaller).
    """
    t, n, c = frames, tokens_per_frame, width
    windows = windows or [t]
    temporal = 2 * t * t * c  # DPC-KNN distances between frame means
    static = sum(2 * w * w * n * c for w in windows)  # cross-frame cosine similarity per location
    spatial = t * 2 * n * n * c  # DPC-KNN distances within each frame's group
    return float(temporal + static + spatial)


@dataclass(frozen=True)
class WeightBytes:
    """Bytes of the weights a deployment holds, by part."""

    vision: int
    projector: int
    llm_layers: int
    embed: int
    head: int

    @property
    def total(self) -> int:
        return self.vision + self.projector + self.llm_layers + self.embed + self.head

    @property
    def decode_read(self) -> int:
        """Weights one decode step streams: every LLM layer, the final norm and the head."""
        return self.llm_layers + self.head


def vision_params(cfg: ModelConfig) -> int:
    """Parameters of the patch/position embeddings, the pre-norm and the encoder layers that run,
    laid out as the family's tower declares (:class:`prunevid.model.config.VisionTower`); the
    post-encoder norm, which neither family applies to the features it uses, is not counted."""
    v, tower = cfg.vision, FAMILIES[cfg.family].tower
    d, inter = v.hidden_size, v.intermediate_size
    positions = v.grid * v.grid + tower.class_token  # one per patch (+ the CLS token's)
    embeddings = (v.num_channels * v.patch_size**2 * d + d * tower.patch_bias  # patch convolution
                  + d * tower.class_token + positions * d)  # class embedding, position table
    layer = 4 * (d * d + d) + 2 * d * inter + inter + d + 2 * 2 * d  # q, k, v, o; fc1, fc2; two LayerNorms
    return embeddings + 2 * d * tower.pre_norm + vision_layers_run(cfg) * layer  # + pre_layrnorm (CLIP)


def llm_layer_params(text: TextConfig) -> int:
    """Parameters of one LLaMA layer (projections, SwiGLU MLP, two RMSNorms)."""
    c, inter = text.hidden_size, text.intermediate_size
    q_dim = text.num_attention_heads * text.dim_per_head
    kv_dim = text.kv_heads * text.dim_per_head
    bias = (q_dim + 2 * kv_dim) * (text.attention_bias or text.qkv_bias) + c * text.attention_bias  # Qwen2: q/k/v
    return c * q_dim + 2 * c * kv_dim + q_dim * c + bias + 3 * c * inter + 2 * c


def weight_bytes(cfg: ModelConfig, dtype_bytes: int = 4) -> WeightBytes:
    """Weight bytes per part at ``dtype_bytes`` per parameter (4 = fp32, 2 = fp16)."""
    t = cfg.text
    c, d = t.hidden_size, cfg.vision.hidden_size
    head = (0 if t.tie_word_embeddings else t.vocab_size * c) + c  # + final norm
    return WeightBytes(
        vision=vision_params(cfg) * dtype_bytes,
        projector=(d * c + c + c * c + c) * dtype_bytes,
        llm_layers=t.num_hidden_layers * llm_layer_params(t) * dtype_bytes,
        embed=(t.vocab_size + len(cfg.after_visual_ids)) * c * dtype_bytes,  # + OneVision's image_newline row
        head=head * dtype_bytes,
    )


def kv_bytes(text: TextConfig, positions: int, dtype_bytes: int = 4) -> int:
    """KV cache bytes for ``positions`` positions over every layer (K and V, ``H_kv`` heads)."""
    return text.num_hidden_layers * 2 * text.kv_heads * text.dim_per_head * positions * dtype_bytes


def decode_bound_ms(cfg: ModelConfig, positions: int, bandwidth_gbs: float, dtype_bytes: int = 4) -> float:
    """Memory-bandwidth bound of one decode step: weights streamed + KV read, at ``bandwidth_gbs``."""
    read = weight_bytes(cfg, dtype_bytes).decode_read + kv_bytes(cfg.text, positions, dtype_bytes)
    return read / (bandwidth_gbs * 1e9) * 1e3


def encoder_share(cfg: ModelConfig, frames: int, text_tokens: int) -> float:
    """Encoder FLOPs / (encoder + unpruned prefill FLOPs): its share of the plain baseline's TTFT."""
    enc = encoder_flops(cfg, frames)
    seq = text_tokens + frames * cfg.tokens_per_frame
    return enc / (enc + prefill_flops(cfg.text, seq))
