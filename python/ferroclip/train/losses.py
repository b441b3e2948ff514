"""The training objectives of projection heads, over L2-normalised image/text features.

The InfoNCE and sigmoid losses themselves live in :mod:`ferroclip.losses`, shared with
whole-model fine-tuning; this module adds the stateful objectives that only heads use.

- ``infonce``: CLIP's symmetric softmax cross-entropy over the in-batch similarity matrix.
- ``sigmoid``: SigLIP's pairwise sigmoid loss with a learnable bias (no batch-wide softmax).
- ``queue_infonce``: InfoNCE whose negatives also include features from earlier batches
  kept in a FIFO queue (MoCo). Queue rows of the same image as a query are masked out, so
  a caption is never pushed away from its own image; if the feature width changes (a new
  ``output_dim`` between tuning trials reusing one objective) the queue is emptied and
  refilled rather than failing on a shape mismatch. Only filled slots are ever used.
- ``momentum_distill``: ALBEF/BLIP ITC. Targets mix the one-hot (all captions of the same
  image are positives) with the softmax of a momentum (EMA) encoder's similarities, and the
  momentum features of earlier batches form the queue.

Training batches hold each image at most once (one random caption per image), so in-batch
negatives are true negatives.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import infonce_loss, sigmoid_loss
from .heads import ProjectionModel

__all__ = ["FeatureQueue", "Objective"]


class FeatureQueue:
    """FIFO of past (image, text, image id) features; reset when the feature width changes."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self.img: torch.Tensor | None = None
        self.txt: torch.Tensor | None = None
        self.ids: torch.Tensor | None = None
        self.ptr = 0
        self.count = 0

    def reset(self) -> None:
        self.img = self.txt = self.ids = None
        self.ptr = self.count = 0

    def view(self, dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The filled part of the queue (possibly empty), on ``device`` and of width ``dim``."""
        if self.img is None or self.img.shape[1] != dim or self.img.device != device:
            self.reset()
            empty = torch.zeros(0, dim, device=device)
            return empty, empty, torch.zeros(0, dtype=torch.long, device=device)
        n = self.count
        # copies: the next push writes the buffers in place, and autograd still needs these
        return self.img[:n].clone(), self.txt[:n].clone(), self.ids[:n].clone()  # type: ignore[index]

    @torch.no_grad()
    def push(self, img: torch.Tensor, txt: torch.Tensor, ids: torch.Tensor) -> None:
        dim = img.shape[1]
        if self.img is None or self.img.shape[1] != dim or self.img.device != img.device:
            self.img = torch.zeros(self.size, dim, device=img.device, dtype=img.dtype)
            self.txt = torch.zeros(self.size, txt.shape[1], device=img.device, dtype=txt.dtype)
            self.ids = torch.full((self.size,), -1, dtype=torch.long, device=img.device)
            self.ptr = self.count = 0
        img, txt, ids = img.detach()[-self.size :], txt.detach()[-self.size :], ids[-self.size :]
        n = len(img)
        idx = (torch.arange(n, device=img.device) + self.ptr) % self.size
        self.img[idx], self.txt[idx], self.ids[idx] = img, txt, ids  # type: ignore[index]
        self.ptr = (self.ptr + n) % self.size
        self.count = min(self.size, self.count + n)


def _queue_infonce(
    img: torch.Tensor,
    txt: torch.Tensor,
    ids: torch.Tensor,
    q_img: torch.Tensor,
    q_txt: torch.Tensor,
    q_ids: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    same = ids[:, None] == q_ids[None, :]  # same image already in the queue: not a negative
    i2t = torch.cat([scale * img @ txt.T, (scale * img @ q_txt.T).masked_fill(same, float("-inf"))], dim=1)
    t2i = torch.cat([scale * txt @ img.T, (scale * txt @ q_img.T).masked_fill(same, float("-inf"))], dim=1)
    target = torch.arange(len(img), device=img.device)
    return 0.5 * (F.cross_entropy(i2t, target) + F.cross_entropy(t2i, target))


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(F.log_softmax(logits, dim=1) * target).sum(dim=1).mean()


class Objective(nn.Module):
    """The training loss of a config, with any state it keeps between steps (the queue)."""

    def __init__(self, loss_type: str, queue_size: int = 4096, alpha: float = 0.4) -> None:
        super().__init__()
        self.loss_type = loss_type
        self.alpha = float(alpha)
        self.queue = FeatureQueue(queue_size) if loss_type in ("queue_infonce", "momentum_distill") else None

    def forward(self, model: ProjectionModel, images: torch.Tensor, texts: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Loss of one training step; ``ids`` are the batch's image indices (unique)."""
        img, txt, scale = model.encode_image(images), model.encode_text(texts), model.scale()
        t = self.loss_type
        from .registry import loss_fn

        user = loss_fn(t)
        if user is not None:
            return cast("torch.Tensor", user(img, txt, scale))
        if t == "infonce":
            return infonce_loss(img, txt, scale)
        if t == "sigmoid":
            return sigmoid_loss(img, txt, scale, model.logit_bias)
        assert self.queue is not None
        if t == "queue_infonce":
            q_img, q_txt, q_ids = self.queue.view(img.shape[1], img.device)
            loss = _queue_infonce(img, txt, ids, q_img, q_txt, q_ids, scale)
            self.queue.push(img, txt, ids)
            return loss
        # momentum_distill
        img_m, txt_m = model.encode_momentum(images, texts)
        q_img, q_txt, q_ids = self.queue.view(img.shape[1], img.device)
        all_img, all_txt, all_ids = torch.cat([img_m, q_img]), torch.cat([txt_m, q_txt]), torch.cat([ids, q_ids])
        with torch.no_grad():
            pos = (ids[:, None] == all_ids[None, :]).to(img.dtype)
            hard = pos / pos.sum(dim=1, keepdim=True)
            s = scale.detach()
            tgt_i2t = self.alpha * F.softmax(s * img_m @ all_txt.T, dim=1) + (1 - self.alpha) * hard
            tgt_t2i = self.alpha * F.softmax(s * txt_m @ all_img.T, dim=1) + (1 - self.alpha) * hard
        loss = 0.5 * (_soft_ce(scale * img @ all_txt.T, tgt_i2t) + _soft_ce(scale * txt @ all_img.T, tgt_t2i))
        self.queue.push(img_m, txt_m, ids)
        return loss

    @torch.no_grad()
    def eval_loss(self, model: ProjectionModel, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """In-batch loss without queue or teacher, comparable across epochs and trials."""
        img, txt, scale = model.encode_image(images), model.encode_text(texts), model.scale()
        from .registry import loss_fn

        user = loss_fn(self.loss_type)
        if user is not None:
            return cast("torch.Tensor", user(img, txt, scale))
        if self.loss_type == "sigmoid":
            return sigmoid_loss(img, txt, scale, model.logit_bias)
        return infonce_loss(img, txt, scale)
