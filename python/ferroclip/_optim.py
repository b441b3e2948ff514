"""The optimiser every training path uses (fine-tuning and projection heads)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["adamw"]


def adamw(groups: Iterable[Any], lr: float) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel where the parameters' device has one (CPU, CUDA, MPS).

    The default implementation runs about ten elementwise ops per tensor, each a pass over
    memory; the fused one does the update in one pass. On a ViT-B/32-sized CLIP on 2 CPU
    cores that is 0.09-0.12 s per step instead of 0.55-0.62 (12-15% of a batch-16 step).
    transformers' Trainer defaults to it too (``adamw_torch_fused``, torch >= 2.8). Where
    torch has no fused kernel for the device or dtype, the default implementation.
    """
    groups = list(groups)
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for these parameters' device or dtype
        return torch.optim.AdamW(groups, lr=lr)
