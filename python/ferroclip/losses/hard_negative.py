"""InfoNCE that up-weights hard negatives (seed 001's ``HardNegativeMiningLoss``).

What it computes, per direction (image→text over rows, text→image over columns): with
``l_ij = scale · cos(img_i, txt_j)``,

    loss_i = -log( exp(l_ii) / (exp(l_ii) + sum_{j≠i} w_ij · exp(l_ij)) )

i.e. cross-entropy on ``l_ij + log w_ij``. The weights are chosen without gradient:

- ``"hard"``: the ``ceil(hard_negative_ratio · (N-1))`` most similar negatives of each
  anchor get ``w = hard_negative_weight``, the rest ``w = 1``;
- ``"semi-hard"``: the same, but only among negatives *less* similar than the anchor's
  positive (FaceNet's semi-hard set), so near-duplicates and false negatives that already
  outrank the positive are not pushed harder;
- ``"weighted"``: every negative gets ``w = 1 + (hard_negative_weight - 1) · (N-1) · p_ij``
  with ``p`` the softmax of the anchor's negative logits, so the mean weight is
  ``hard_negative_weight`` and harder negatives weigh more (Robinson et al., 2021); the
  ones above the uniform share ``1/(N-1)`` are counted as hard.

``hard_negative_count`` sums both directions; ``hard_negative_ratio_actual`` divides it by
the ``2·N·(N-1)`` negatives there are. With weight 1 (or ratio 0) this is CLIP's loss.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from .contrastive import ContrastiveLossBase

__all__ = ["HardNegativeMiningLoss", "MiningStrategy"]

MiningStrategy = Literal["semi-hard", "hard", "weighted"]


class HardNegativeMiningLoss(ContrastiveLossBase):
    def __init__(
        self,
        temperature: float = 0.07,
        hard_negative_ratio: float = 0.5,
        mining_strategy: MiningStrategy = "semi-hard",
        hard_negative_weight: float = 2.0,
        learnable_temp: bool = False,
    ) -> None:
        super().__init__(temperature, learnable_temp)
        if not 0.0 <= hard_negative_ratio <= 1.0:
            raise ValueError(f"hard_negative_ratio must be in [0, 1], got {hard_negative_ratio}")
        if mining_strategy not in ("semi-hard", "hard", "weighted"):
            raise ValueError(f"mining_strategy must be 'semi-hard', 'hard' or 'weighted', got {mining_strategy!r}")
        if not hard_negative_weight >= 1.0:
            raise ValueError(f"hard_negative_weight must be >= 1, got {hard_negative_weight}")
        self.hard_negative_ratio = float(hard_negative_ratio)
        self.mining_strategy = mining_strategy
        self.hard_negative_weight = float(hard_negative_weight)

    @torch.no_grad()
    def _weights(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights of each row's entries (1 on the diagonal) and the mask of hard negatives."""
        n = len(logits)
        eye = torch.eye(n, dtype=torch.bool, device=logits.device)
        w = torch.ones_like(logits)
        if n < 2:
            return w, torch.zeros_like(eye)
        if self.mining_strategy == "weighted":
            p = logits.masked_fill(eye, float("-inf")).softmax(dim=1)
            w = 1.0 + (self.hard_negative_weight - 1.0) * (n - 1) * p
            hard = (p > 1.0 / (n - 1)) & ~eye
            return w.masked_fill(eye, 1.0), hard
        k = math.ceil(self.hard_negative_ratio * (n - 1))
        eligible = ~eye
        if self.mining_strategy == "semi-hard":
            eligible &= logits < logits.diagonal()[:, None]
        if k == 0:
            return w, torch.zeros_like(eye)
        ranked = logits.masked_fill(~eligible, float("-inf"))
        top = ranked.topk(k, dim=1).indices
        hard = torch.zeros_like(eye).scatter_(1, top, True) & eligible
        return w.masked_fill(hard, self.hard_negative_weight), hard

    def forward(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        img, txt = self.normalize(image_embeds, text_embeds)
        scale = self.scale(logit_scale)
        logits = scale * img @ txt.T
        target = torch.arange(len(logits), device=logits.device)
        w_i2t, hard_i2t = self._weights(logits.detach())
        w_t2i, hard_t2i = self._weights(logits.detach().T)
        i2t = F.cross_entropy(logits + w_i2t.log(), target)
        t2i = F.cross_entropy(logits.T + w_t2i.log(), target)
        n = len(logits)
        count = hard_i2t.sum() + hard_t2i.sum()
        return {
            "loss": 0.5 * (i2t + t2i),
            "image_to_text_loss": i2t,
            "text_to_image_loss": t2i,
            "temperature": (1.0 / scale).detach(),
            "hard_negative_count": count,
            "hard_negative_ratio_actual": count.float() / max(1, 2 * n * (n - 1)),
        }
