"""CLIP's InfoNCE and SigLIP's sigmoid loss, as functions and as seed-001-style modules.

The modules accept raw (unnormalised) tower outputs: they L2-normalise, so gradients reach
the towers through the normalisation exactly as in CLIP. ``logit_scale`` passed to
``forward`` (a tensor, the *multiplier* of the cosine, e.g. the model's
``logit_scale.exp()``) overrides the module's own temperature; this is how fine-tuning
trains the checkpoint's own learnable scale instead of a second one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MAX_LOGIT_SCALE",
    "CLIPContrastiveLoss",
    "ContrastiveLossBase",
    "SigLIPLoss",
    "infonce_loss",
    "sigmoid_loss",
]

#: CLIP clamps the logit multiplier at 100 (temperature 0.01) so training stays stable.
MAX_LOGIT_SCALE = 100.0


def infonce_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy; row ``i`` of ``img`` and ``txt`` are the positive pair."""
    return _infonce_parts(scale * img @ txt.T)[0]


def _infonce_parts(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    target = torch.arange(len(logits), device=logits.device)
    i2t = F.cross_entropy(logits, target)
    t2i = F.cross_entropy(logits.T, target)
    return 0.5 * (i2t + t2i), i2t, t2i


def sigmoid_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """SigLIP: every (image, text) pair is a binary problem; mean over images of the row sums."""
    logits = scale * img @ txt.T + bias
    labels = 2.0 * torch.eye(len(img), device=img.device, dtype=logits.dtype) - 1.0
    return -F.logsigmoid(labels * logits).sum() / len(img)


def _temperature_parameter(temperature: float, learnable: bool) -> nn.Parameter:
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    # stored as log(1/T), as CLIP stores logit_scale, so gradient steps are multiplicative
    return nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learnable)


class ContrastiveLossBase(nn.Module):
    """Shared by the InfoNCE-family modules: a temperature and the normalisation of inputs."""

    def __init__(self, temperature: float = 0.07, learnable_temp: bool = False) -> None:
        super().__init__()
        self.log_scale = _temperature_parameter(temperature, learnable_temp)

    @property
    def temperature(self) -> float:
        return 1.0 / self.scale().item()

    @temperature.setter
    def temperature(self, value: float) -> None:
        """Set by a :class:`TemperatureScheduler` between steps (seed 001's usage)."""
        if not value > 0:
            raise ValueError(f"temperature must be positive, got {value}")
        with torch.no_grad():
            self.log_scale.fill_(math.log(1.0 / value))

    def scale(self, logit_scale: torch.Tensor | None = None) -> torch.Tensor:
        """The cosine multiplier: the given one, else ``1/temperature``; clamped at 100."""
        s = self.log_scale.exp() if logit_scale is None else logit_scale
        return s.clamp(max=MAX_LOGIT_SCALE)

    @staticmethod
    def normalize(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if image_embeds.ndim != 2 or image_embeds.shape != text_embeds.shape:
            raise ValueError(
                f"image and text embeddings must be (N, D) of one shape, got {tuple(image_embeds.shape)} "
                f"and {tuple(text_embeds.shape)}"
            )
        return F.normalize(image_embeds.float(), dim=-1), F.normalize(text_embeds.float(), dim=-1)


class CLIPContrastiveLoss(ContrastiveLossBase):
    """CLIP's symmetric InfoNCE over the in-batch similarity matrix.

    Returns ``loss`` (mean of the two directions), ``image_to_text_loss``,
    ``text_to_image_loss``, ``temperature`` and ``logits``.
    """

    def forward(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        img, txt = self.normalize(image_embeds, text_embeds)
        scale = self.scale(logit_scale)
        logits = scale * img @ txt.T
        loss, i2t, t2i = _infonce_parts(logits)
        return {
            "loss": loss,
            "image_to_text_loss": i2t,
            "text_to_image_loss": t2i,
            "temperature": (1.0 / scale).detach(),
            "logits": logits.detach(),
        }


class SigLIPLoss(nn.Module):
    """SigLIP's pairwise sigmoid loss with a learnable scale **and** bias.

    Initialised as SigLIP is (scale ``log 10``, bias ``-10``): with thousands of negatives
    per positive the bias must start strongly negative, or the first steps only learn to
    say "no" and fine-tuning drifts. A SigLIP checkpoint's own ``logit_scale`` and
    ``logit_bias`` are passed to ``forward`` instead when fine-tuning one.
    ``image_to_text_loss`` / ``text_to_image_loss`` are the mean over images of the row
    sums and over texts of the column sums; the sigmoid loss is symmetric, so both equal
    ``loss`` and are reported for the seed's output contract.
    """

    def __init__(self, init_scale: float = math.log(10.0), init_bias: float = -10.0, learnable: bool = True) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(float(init_scale)), requires_grad=learnable)
        self.bias = nn.Parameter(torch.tensor(float(init_bias)), requires_grad=learnable)

    def forward(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        logit_scale: torch.Tensor | None = None,
        logit_bias: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        img, txt = ContrastiveLossBase.normalize(image_embeds, text_embeds)
        scale = self.log_scale.exp() if logit_scale is None else logit_scale
        bias = self.bias if logit_bias is None else logit_bias
        loss = sigmoid_loss(img, txt, scale, bias)
        return {
            "loss": loss,
            "image_to_text_loss": loss,
            "text_to_image_loss": loss,
            "temperature": (1.0 / scale).detach(),
            "bias": torch.as_tensor(bias).detach(),
        }
