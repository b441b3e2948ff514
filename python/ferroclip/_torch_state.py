"""Optimiser and RNG state as plain tensors plus JSON, for checkpoints that never pickle.

``torch.save(optimizer.state_dict())`` is a pickle; here the moment tensors go into a
safetensors file and the hyper-parameters and scalars into JSON. Shared by fine-tuning
step checkpoints and projection-head epoch checkpoints, so both resume the same way.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["optimizer_tensors", "restore_optimizer", "restore_rng", "rng_tensors"]


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optim.<param id>.<name>`` tensors, and the JSON-able rest of ``opt.state_dict()``."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """The inverse of :func:`optimizer_tensors` (keys not starting with ``optim.`` are ignored)."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for pid, sc in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(sc)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_tensors() -> dict[str, torch.Tensor]:
    """The global CPU RNG (dropout on CPU) and every CUDA device's, as ``rng.*`` tensors."""
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            out[f"rng.cuda.{i}"] = torch.cuda.get_rng_state(i)
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    """Set the RNG states :func:`rng_tensors` saved (CUDA devices that exist here only)."""
    torch.set_rng_state(tensors["rng.cpu"].cpu())
    for k, v in tensors.items():
        if k.startswith("rng.cuda.") and torch.cuda.is_available() and int(k.rsplit(".", 1)[1]) < torch.cuda.device_count():
            torch.cuda.set_rng_state(v.cpu(), int(k.rsplit(".", 1)[1]))
