"""Step checkpoints that a resumed run continues from exactly, written without pickle.

A checkpoint directory holds ``training_state.safetensors`` (model weights, the loss's own
parameters, the optimiser's moment tensors, the RNG states) and ``trainer_state.json``
(step, optimiser hyper-parameters, LR / temperature schedulers, the fp16 scaler, history,
best metric). It is written under a temporary name and renamed into place, so a kill
during a save leaves the previous checkpoint intact and never a half-written one;
``latest.json`` names the newest complete one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_dir, atomic_write
from .._torch_state import optimizer_tensors, restore_optimizer, restore_rng, rng_tensors
from ..errors import DataError

__all__ = ["TrainingState", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]

STATE_FILE = "training_state.safetensors"
META_FILE = "trainer_state.json"
LATEST = "latest.json"


@dataclass
class TrainingState:
    """What the loop restores: the tensors went into the modules; ``meta`` is the rest."""

    step: int
    meta: dict[str, Any]
    path: Path


def save_checkpoint(
    out_dir: str | os.PathLike[str],
    step: int,
    *,
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    keep: int = 2,
    protect: tuple[str, ...] = (),
) -> Path:
    """Write ``checkpoint-{step}`` atomically; keep the ``keep`` newest and ``protect``."""
    from safetensors.torch import save_file

    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"checkpoint-{step}"
    final = root / name
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"loss.{k}": v for k, v in loss_fn.state_dict().items()})
    opt_tensors, opt_meta = optimizer_tensors(optimizer)
    tensors.update(opt_tensors)
    tensors.update(rng_tensors())
    # safetensors stores each buffer once and contiguous: copy views and shared storage
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_dir(final) as tmp:  # a re-run of the same step after a resume replaces it whole
        save_file(tensors, str(tmp / STATE_FILE))
        body = {"format": "ferroclip.finetune.checkpoint", "version": 1, "step": step, "optimizer": opt_meta, **meta}
        (tmp / META_FILE).write_text(json.dumps(body, indent=1), encoding="utf-8")
    with atomic_write(root / LATEST) as fh:
        fh.write(json.dumps({"checkpoint": name, "step": step}).encode("utf-8"))
    old = sorted((p for p in root.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
                 key=lambda p: int(p.name.split("-")[-1]))
    for p in old[:-keep] if keep > 0 else []:
        if p.name not in protect:
            shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint under ``out_dir`` (``latest.json``, else the highest step)."""
    root = Path(out_dir)
    try:
        name: str = json.loads((root / LATEST).read_text(encoding="utf-8"))["checkpoint"]
        if (root / name / META_FILE).is_file():
            return root / name
    except (OSError, ValueError, KeyError, TypeError):
        pass
    done = [p for p in root.glob("checkpoint-*") if (p / META_FILE).is_file() and p.name.split("-")[-1].isdigit()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> TrainingState:
    """Load weights, loss parameters, optimiser state and RNG; return the rest for the loop."""
    from safetensors.torch import load_file

    p = Path(path)
    try:
        meta = json.loads((p / META_FILE).read_text(encoding="utf-8"))
        tensors = load_file(str(p / STATE_FILE))
    except (OSError, ValueError) as exc:
        raise DataError(f"{p}: not a readable ferroclip checkpoint: {exc}", str(p)) from None
    if meta.get("format") != "ferroclip.finetune.checkpoint":
        raise DataError(f"{p}: not a ferroclip fine-tuning checkpoint", str(p))
    device = next(model.parameters()).device
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    loss_fn.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("loss.")})
    restore_optimizer(optimizer, {k: v.to(device) for k, v in tensors.items() if k.startswith("optim.")}, meta["optimizer"])
    restore_rng(tensors)
    return TrainingState(step=int(meta["step"]), meta=meta, path=p)
