"""LLaVA-OneVision (video path): SigLIP tower (last layer, no class token to drop), projector
(Linear, GELU, Linear, with biases), bilinear 2x pooling of each frame's grid (27 x 27 -> 14 x 14
at 384 px), one learned ``image_newline`` row after the whole video, Qwen2 decoder.

Module and parameter names equal the llava-hf checkpoint keys (``vision_tower.vision_model...``,
``multi_modal_projector.linear_1``, ``image_newline``, ``language_model.model.layers.N...``), as
normalised by :mod:`prunevid.model.checkpoint`.

Where the newline lives (PruneVid's stages never see it): ``encode`` returns only the frame grids
``[T, L, C]``, which stages A-C merge. The newline row is not part of any frame, so it stays out
of the merger and out of the selection groups: it is put right after the visual block as a
prompt row of its own, with the id ``vocab_size`` (one past the LM head, so never generated),
which :meth:`OnevisionModel.embed` maps to ``image_newline``. It is therefore kept like text at
layer K and sits at position ``P + M`` (``M`` visual rows before it), exactly where transformers
puts it when nothing is pruned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunevid.model.config import ModelConfig
from prunevid.model.llama import LlamaForCausalLM
from prunevid.model.pllava import Projector
from prunevid.model.siglip import SiglipVisionTower


def bilinear_pool(features: torch.Tensor, grid: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """``[T, g*g, C] -> [T, h*w, C]``: bilinear resize of each frame's grid (half-pixel centres, no
    antialiasing: ``F.interpolate(mode="bilinear")`` as transformers' ``apply_pooling``)."""
    t, _, c = features.shape
    x = features.view(t, grid, grid, c).permute(0, 3, 1, 2)  # [T, C, g, g]
    x = F.interpolate(x, size=out_hw, mode="bilinear")  # [T, C, h, w]
    return x.flatten(2).transpose(1, 2)  # [T, h*w, C], row-major (h, w)


class OnevisionModel(nn.Module):
    """The whole model. ``encode`` gives the visual tokens; the decoder is ``language_model``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_tower = SiglipVisionTower(cfg.vision)
        self.multi_modal_projector = Projector(cfg)
        self.image_newline = nn.Parameter(torch.zeros(cfg.text.hidden_size))
        self.language_model = LlamaForCausalLM(cfg.text)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[T, 3, S, S]`` to visual tokens ``[T, L, C]``, ``L = ceil(g/2)^2`` (no newline)."""
        hidden = self.vision_tower(pixels, self.cfg.vision_feature_layer)  # [T, g*g, D], every patch
        features = self.multi_modal_projector(hidden)  # [T, g*g, C]
        return bilinear_pool(features, self.cfg.vision.grid, self.cfg.pooling_shape[1:])

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``[S]`` to embeddings ``[S, C]``; the id ``vocab_size`` is the newline row."""
        table = self.language_model.model.embed_tokens
        newline = ids == table.num_embeddings  # [S]
        rows = table(torch.where(newline, torch.zeros_like(ids), ids))  # [S, C]
        return torch.where(newline[:, None], self.image_newline.to(rows.dtype)[None, :], rows)
