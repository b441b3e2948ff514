"""Epoch checkpoints of a heads training run, so an interrupted run continues exactly.

After every epoch ``<out_dir>/resume/epoch-NNNN/`` holds ``state.safetensors`` (current
and best weights, AdamW's moments, the queue of the queue losses, the shuffling generator
and the global RNG that dropout draws from) and ``state.json`` (epoch, optimiser
hyper-parameters, LR scheduler, history, early-stopping counters, the config and a
fingerprint of the data, and the SHA-256 of the tensor file). Nothing is pickled.

Each epoch is written into a temporary folder that is renamed into place, and the older
ones are pruned only afterwards, so a kill at any moment leaves the previous epoch whole.
Loading takes the newest folder whose JSON parses and whose tensor file matches its hash;
a partial or corrupt one is passed over with a warning. A run resumed with a different
config or different data is refused: its continuation would be a different run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._atomic import atomic_dir
from ..errors import ConfigError
from .config import HeadsConfig
from .data import PairedEmbeddings

__all__ = ["EpochState", "clear_states", "config_fingerprint", "data_fingerprint", "latest_state", "save_state"]

log = logging.getLogger(__name__)

RESUME_DIR = "resume"
TENSORS = "state.safetensors"
META = "state.json"
_FORMAT = "ferroclip.train.heads.resume"
_NAME = re.compile(r"^epoch-(\d+)$")
#: Settings that do not change what is computed, so a resumed run may change them.
_FREE = (("output_dir",), ("training", "progress"), ("training", "num_threads"))


@dataclass
class EpochState:
    """A loaded epoch checkpoint: ``tensors`` on the CPU and the JSON ``meta``."""

    epoch: int
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    path: Path


def config_fingerprint(config: HeadsConfig) -> dict[str, Any]:
    """The config as a dict, without the settings a resumed run may change."""
    d = json.loads(json.dumps(config.to_dict()))
    for path in _FREE:
        node = d
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return dict(d)


def data_fingerprint(train: PairedEmbeddings, val: PairedEmbeddings) -> str:
    """SHA-256 over shapes, the caption→image map and up to 256 evenly spaced rows of each
    array: cheap on millions of rows, and any other data set changes it."""
    h = hashlib.sha256()
    for part in (train, val):
        for arr in (part.images, part.texts):
            a = np.ascontiguousarray(arr)
            h.update(f"{a.shape}{a.dtype}".encode())
            rows = np.unique(np.linspace(0, max(len(a) - 1, 0), num=min(256, len(a)), dtype=np.int64))
            h.update(np.ascontiguousarray(a[rows]).tobytes())
        h.update(np.ascontiguousarray(part.text_to_image, dtype=np.int64).tobytes())
    return h.hexdigest()


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += _differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def check_compatible(state: EpochState, config: HeadsConfig, data_fp: str) -> None:
    """Refuse (``ConfigError``) to continue a run with another config or other data."""
    diff = _differences(state.meta.get("config"), config_fingerprint(config))
    if diff:
        raise ConfigError(
            f"{state.path}: cannot resume: the config changed since epoch {state.epoch} was saved "
            f"({'; '.join(diff[:8])}). Resume with the same config, or train afresh (no --resume / "
            "resume=False, which discards these checkpoints) or into another output_dir"
        )
    if state.meta.get("data") != data_fp:
        raise ConfigError(
            f"{state.path}: cannot resume: the training or validation embeddings differ from the ones "
            f"epoch {state.epoch} was trained on (another split or data file). Resume with the same "
            "data, or train afresh"
        )


def _epoch_dirs(root: Path) -> list[tuple[int, Path]]:
    found = []
    for p in root.glob("epoch-*"):
        m = _NAME.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_state(out_dir: str | os.PathLike[str], epoch: int, tensors: dict[str, torch.Tensor],
               meta: dict[str, Any], keep: int = 2) -> Path:
    """Write ``resume/epoch-NNNN`` atomically, then keep only the ``keep`` newest."""
    from safetensors.torch import save

    root = Path(out_dir) / RESUME_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"epoch-{epoch:04d}"
    # safetensors wants each tensor contiguous and on its own storage
    blob = save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, metadata={"format": _FORMAT})
    body = {"format": _FORMAT, "version": 1, "epoch": epoch, "tensors": TENSORS,
            "tensors_sha256": hashlib.sha256(blob).hexdigest(), **meta}
    with atomic_dir(final) as tmp:
        (tmp / TENSORS).write_bytes(blob)
        (tmp / META).write_text(json.dumps(body, indent=1), encoding="utf-8")
    for _, p in _epoch_dirs(root)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def _load(path: Path) -> EpochState:
    from safetensors.torch import load

    meta = json.loads((path / META).read_text(encoding="utf-8"))
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError("not a ferroclip heads resume checkpoint")
    blob = (path / str(meta.get("tensors", TENSORS))).read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("tensors_sha256"):
        raise ValueError(f"{TENSORS} does not match the hash in {META} (partial or altered file)")
    return EpochState(int(meta["epoch"]), load(blob), meta, path)


def latest_state(out_dir: str | os.PathLike[str]) -> EpochState | None:
    """The newest complete, intact epoch checkpoint under ``out_dir``, or ``None``."""
    for epoch, path in reversed(_epoch_dirs(Path(out_dir) / RESUME_DIR)):
        try:
            return _load(path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("%s: skipping an unusable epoch checkpoint (%s)", path, e)
    return None


def clear_states(out_dir: str | os.PathLike[str]) -> None:
    """Remove a previous run's epoch checkpoints (a fresh run must never resume into them)."""
    root = Path(out_dir) / RESUME_DIR
    if root.is_dir():
        shutil.rmtree(root)
