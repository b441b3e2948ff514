"""Choosing the device and dtype, and refusing combinations that cannot work.

``"auto"`` prefers CUDA, then Apple MPS, then CPU. MPS runs float32 only: half precision
there gives wrong SigLIP/CLIP similarities in practice (seed 000), so it is refused rather
than silently degraded.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

__all__ = ["DTYPES", "resolve_device", "resolve_dtype"]

DTYPES = ("float32", "float16", "bfloat16")


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    assert device is not None
    kind = device.split(":", 1)[0]
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} but CUDA is not available (torch {torch.__version__})")
        if ":" in device:
            index = int(device.split(":", 1)[1])
            if index >= torch.cuda.device_count():
                raise ConfigError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
        return device
    if kind == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise ConfigError(f"device={device!r} but Apple MPS is not available")
        return device
    if kind == "cpu":
        return "cpu"
    raise ConfigError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


def resolve_dtype(dtype: str | None, device: str) -> str:
    """The dtype to run in: float16 by default on CUDA, float32 elsewhere."""
    kind = device.split(":", 1)[0]
    if dtype is None:
        return "float16" if kind == "cuda" else "float32"
    dtype = str(dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if kind == "mps" and dtype != "float32":
        raise ConfigError(f"dtype={dtype!r} on MPS: MPS runs these models in float32 only")
    if kind == "cpu" and dtype == "float16":
        raise ConfigError("dtype='float16' on CPU is not supported (slow and inexact there); use float32 or bfloat16")
    return dtype


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
