"""CLIP vision tower, written out so that export and layer selection need no patching.

Parameter names follow transformers' ``CLIPVisionModel`` (``vision_model.embeddings...``), so
checkpoints load without a mapping table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunevid.model.config import VisionConfig

ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),  # SigLIP
}


class CLIPEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(cfg.hidden_size))
        self.patch_embedding = nn.Conv2d(
            cfg.num_channels, cfg.hidden_size, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False
        )
        self.position_embedding = nn.Embedding(cfg.grid * cfg.grid + 1, cfg.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        t = pixels.shape[0]
        patches = self.patch_embedding(pixels)  # [T, D, g, g]
        patches = patches.flatten(2).transpose(1, 2)  # [T, g*g, D]
        cls = self.class_embedding.expand(t, 1, -1)  # [T, 1, D]
        x = torch.cat([cls, patches], dim=1)  # [T, 1+g*g, D]
        return x + self.position_embedding.weight.unsqueeze(0)


class CLIPAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        d = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, n, d = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(t, n, self.heads, d // self.heads).transpose(1, 2)  # [T, h, N, d/h]

        out = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).reshape(t, n, d))  # [T, N, D]


class CLIPMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPLayer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def hidden_state(self, x: torch.Tensor, feature_layer: int) -> torch.Tensor:
        """Hidden state ``feature_layer`` of the embeddings ``x`` in transformers' numbering
        (0 = embeddings, -1 = last layer's output); only the layers needed run."""
        n = len(self.layers)
        depth = feature_layer if feature_layer >= 0 else n + 1 + feature_layer
        for layer in self.layers[:depth]:
            x = layer(x)
        return x


class CLIPVisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embeddings = CLIPEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # sic, as in CLIP
        self.encoder = CLIPEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class CLIPVisionTower(nn.Module):
    """Pixels ``[T, 3, S, S]`` to the hidden states of one layer ``[T, 1 + g*g, D]``."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.vision_model = CLIPVisionTransformer(cfg)

    def forward(self, pixels: torch.Tensor, feature_layer: int) -> torch.Tensor:
        """Hidden state ``feature_layer`` in transformers' numbering (0 = embeddings, -1 = last)."""
        vm = self.vision_model
        return vm.encoder.hidden_state(vm.pre_layrnorm(vm.embeddings(pixels)), feature_layer)
