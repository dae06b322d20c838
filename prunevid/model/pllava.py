"""PLLaVA: CLIP vision tower (penultimate layer, CLS dropped), per-frame projector
(Linear, GELU, Linear), average pooling of each frame's grid to the configured size, LLaMA decoder.

Module and parameter names equal the normalised checkpoint keys (``vision_tower.vision_model...``,
``multi_modal_projector.linear_1``, ``language_model.model.layers.N...``), so a PLLaVA checkpoint
loads with ``load_state_dict`` after :mod:`prunevid.model.checkpoint` has merged its LoRA.

Pooling: PLLaVA pools ``[C, T, 24, 24]`` with ``AdaptiveAvgPool3d((16, 12, 12))`` when the clip has
its configured 16 frames and with ``(T, 12, 12)`` otherwise; the time axis is unchanged in both
cases, so this module pools each frame's grid and keeps ``T``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunevid.model.clip import CLIPVisionTower
from prunevid.model.config import ModelConfig
from prunevid.model.llama import LlamaForCausalLM


class Projector(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.linear_1 = nn.Linear(cfg.vision.hidden_size, cfg.text.hidden_size)
        self.linear_2 = nn.Linear(cfg.text.hidden_size, cfg.text.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(x)))


def pool_frames(features: torch.Tensor, grid: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """``[T, g*g, C] -> [T, h*w, C]``: adaptive average pooling of each frame's ``g x g`` grid."""
    t, _, c = features.shape
    x = features.view(t, grid, grid, c).permute(0, 3, 1, 2)  # [T, C, g, g]
    if grid % out_hw[0] == 0 and grid % out_hw[1] == 0:
        kernel = (grid // out_hw[0], grid // out_hw[1])
        x = F.avg_pool2d(x, kernel_size=kernel, stride=kernel)  # [T, C, h, w] (exportable form)
    else:
        x = F.adaptive_avg_pool2d(x, out_hw)  # [T, C, h, w]
    return x.flatten(2).transpose(1, 2)  # [T, h*w, C], row-major (h, w)


class PllavaModel(nn.Module):
    """The whole model. ``encode`` gives the visual tokens; the decoder is ``language_model``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_tower = CLIPVisionTower(cfg.vision)
        self.multi_modal_projector = Projector(cfg)
        self.language_model = LlamaForCausalLM(cfg.text)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[T, 3, S, S]`` to visual tokens ``[T, L, C]`` with ``L = h*w`` (pooled grid)."""
        hidden = self.vision_tower(pixels, self.cfg.vision_feature_layer)  # [T, 1+g*g, D]
        features = self.multi_modal_projector(hidden[:, 1:])  # [T, g*g, C], CLS dropped
        return pool_frames(features, self.cfg.vision.grid, self.cfg.pooling_shape[1:])

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``[S]`` to embeddings ``[S, C]``."""
        return self.language_model.model.embed_tokens(ids)
