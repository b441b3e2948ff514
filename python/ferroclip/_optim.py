"""The optimiser every training path uses (fine-tuning and projection heads)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["adamw"]


def adamw(groups: Iterable[Any], lr: float) -> torch.optim.AdamW:
    """torch's AdamW, built in one place for every training loop and for the benchmarks'
    bare step, so they always step the same way.

    torch's fused kernel would be faster on CPU (a ViT-B/32-sized CLIP on 2 cores: 0.09-0.12 s
    per update instead of 0.55-0.62), but with it the tiny-model learning tests moved more
    from one process to the next than with the default (zero-shot accuracy 0.47-0.74 against
    0.68 three times): not switched until that is understood.
    """
    return torch.optim.AdamW(list(groups), lr=lr)
