"""SigLIP vision tower (LLaVA-OneVision), written out like :mod:`prunevid.model.clip`.

SigLIP differs from CLIP only around the encoder: the patch convolution has a bias, there is no
class token (so nothing to drop) and no pre-encoder LayerNorm, and the features OneVision uses
are ``hidden_states[-1]``, the last layer's output *before* ``post_layernorm`` (which is loaded,
so checkpoints match, but not applied). The encoder layers are CLIP's (same parameter names).
Parameter names follow transformers' ``SiglipVisionModel`` (``vision_model.embeddings...``).
"""

from __future__ import annotations

import torch
from torch import nn

from prunevid.model.clip import CLIPEncoder
from prunevid.model.config import VisionConfig


class SiglipEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.hidden_size, kernel_size=cfg.patch_size,
                                         stride=cfg.patch_size)
        self.position_embedding = nn.Embedding(cfg.grid * cfg.grid, cfg.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels)  # [T, D, g, g]
        patches = patches.flatten(2).transpose(1, 2)  # [T, g*g, D], row-major
        return patches + self.position_embedding.weight.unsqueeze(0)


class SiglipVisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embeddings = SiglipEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class SiglipVisionTower(nn.Module):
    """Pixels ``[T, 3, S, S]`` to the hidden states of one layer ``[T, g*g, D]``."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.vision_model = SiglipVisionTransformer(cfg)

    def forward(self, pixels: torch.Tensor, feature_layer: int) -> torch.Tensor:
        """Hidden state ``feature_layer`` in transformers' numbering (0 = embeddings, -1 = last)."""
        vm = self.vision_model
        return vm.encoder.hidden_state(vm.embeddings(pixels), feature_layer)
