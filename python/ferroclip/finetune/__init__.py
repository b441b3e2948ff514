"""Fine-tuning whole CLIP / SigLIP models on image–caption data (``ferroclip[finetune]``).

    from ferroclip.finetune import FinetuneConfig, finetune
    cfg = FinetuneConfig.from_yaml("ft.yaml")
    result = finetune(cfg)              # result.output_dir: a model dir ferroclip.load_model reads

The config (seed 001's ``CLIPFinetuningConfig`` fields) is importable without torch, so the
CLI validates a file before loading anything heavy; the loop loads on first use.
"""

from __future__ import annotations

from typing import Any

from .config import DOMAIN_PRESETS, LOSS_TYPES, FinetuneConfig

__all__ = ["DOMAIN_PRESETS", "LOSS_TYPES", "FinetuneConfig", "FinetuneResult", "StepInfo", "finetune"]

_LAZY = {"finetune": "loop", "FinetuneResult": "loop", "StepInfo": "loop"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
