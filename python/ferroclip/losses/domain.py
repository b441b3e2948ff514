"""InfoNCE with a domain-dependent additive margin (seed 001's ``DomainSpecificLoss``).

What it computes: CLIP's symmetric InfoNCE with the positive logit lowered by a margin,

    l_ij = scale · (cos(img_i, txt_j) - m · [i == j]),   m = DOMAIN_MARGINS[domain] · domain_weight

(the additive-margin softmax of CosFace / AM-softmax). A positive must then beat every
negative by ``m`` in cosine before its loss vanishes, which is what fine-grained domains
need: two scans, two parts or two specimens differ in details, and without a margin the
model stops separating them as soon as the positive ranks first. ``general`` has no
margin (the loss is CLIP's). The presets are ferroclip's choice, not measured optima:
``medical`` 0.2, ``scientific`` 0.15, ``industrial`` 0.1; ``domain_weight`` scales them.
"""

from __future__ import annotations

import torch

from .contrastive import ContrastiveLossBase, _infonce_parts

__all__ = ["DOMAIN_MARGINS", "DomainSpecificLoss"]

DOMAIN_MARGINS: dict[str, float] = {"general": 0.0, "medical": 0.2, "industrial": 0.1, "scientific": 0.15}


class DomainSpecificLoss(ContrastiveLossBase):
    def __init__(
        self, domain: str = "general", temperature: float = 0.07, domain_weight: float = 1.0, learnable_temp: bool = False
    ) -> None:
        super().__init__(temperature, learnable_temp)
        if domain not in DOMAIN_MARGINS:
            raise ValueError(f"unknown domain {domain!r}; use one of {sorted(DOMAIN_MARGINS)}")
        if not domain_weight >= 0:
            raise ValueError(f"domain_weight must be >= 0, got {domain_weight}")
        self.domain = domain
        self.domain_weight = float(domain_weight)

    @property
    def margin(self) -> float:
        return DOMAIN_MARGINS[self.domain] * self.domain_weight

    def forward(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        img, txt = self.normalize(image_embeds, text_embeds)
        scale = self.scale(logit_scale)
        cos = img @ txt.T
        cos = cos - self.margin * torch.eye(len(cos), device=cos.device, dtype=cos.dtype)
        loss, i2t, t2i = _infonce_parts(scale * cos)
        return {
            "loss": loss,
            "image_to_text_loss": i2t,
            "text_to_image_loss": t2i,
            "temperature": (1.0 / scale).detach(),
            "margin": torch.tensor(self.margin),
        }
