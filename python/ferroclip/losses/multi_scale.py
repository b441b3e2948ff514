"""InfoNCE at several temperatures at once (seed 001's ``MultiScaleLoss``).

What it computes: ``loss = sum_s w_s · InfoNCE(T_s)`` with ``T_s = base_temperature · s``
for each ``s`` in ``scales``; ``w`` are ``scale_weights``, divided by their sum when
``normalize_weights``. A low temperature sharpens the loss on the hardest negatives, a high
one keeps gradient on all of them; mixing both is less sensitive to the choice of one.
When fine-tuning passes the model's ``logit_scale``, ``base_temperature`` is
``1 / logit_scale``. Each ``T_s`` is clamped at 0.01 (CLIP's limit).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .contrastive import MAX_LOGIT_SCALE, ContrastiveLossBase, _infonce_parts

__all__ = ["MultiScaleLoss"]


class MultiScaleLoss(ContrastiveLossBase):
    def __init__(
        self,
        scales: Sequence[float] = (1.0, 0.75, 0.5),
        base_temperature: float = 0.07,
        scale_weights: Sequence[float] | None = (1.0, 0.75, 0.5),
        normalize_weights: bool = True,
        learnable_temp: bool = False,
    ) -> None:
        super().__init__(base_temperature, learnable_temp)
        scales = [float(s) for s in scales]
        weights = [1.0] * len(scales) if scale_weights is None else [float(w) for w in scale_weights]
        if not scales or any(not s > 0 for s in scales):
            raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales}")
        if len(weights) != len(scales):
            raise ValueError(f"scale_weights has {len(weights)} entries for {len(scales)} scales")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"scale_weights must be non-negative with a positive sum, got {weights}")
        if normalize_weights:
            total = sum(weights)
            weights = [w / total for w in weights]
        self.scales, self.scale_weights = scales, weights

    def forward(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        img, txt = self.normalize(image_embeds, text_embeds)
        base = self.log_scale.exp() if logit_scale is None else logit_scale  # 1 / base temperature
        cos = img @ txt.T
        losses, temps = [], []
        total = i2t_sum = t2i_sum = torch.zeros((), device=cos.device)
        for s, w in zip(self.scales, self.scale_weights):
            scale = (base / s).clamp(max=MAX_LOGIT_SCALE)
            loss, i2t, t2i = _infonce_parts(scale * cos)
            total, i2t_sum, t2i_sum = total + w * loss, i2t_sum + w * i2t, t2i_sum + w * t2i
            losses.append(loss)
            temps.append(1.0 / scale.detach())
        return {
            "loss": total,
            "image_to_text_loss": i2t_sum,
            "text_to_image_loss": t2i_sum,
            "temperature": (1.0 / base).detach(),
            "scale_losses": torch.stack(losses).detach(),
            "temperatures": torch.stack(temps),
        }
