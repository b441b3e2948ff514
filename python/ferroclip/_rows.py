"""The row files the CLI writes (``embed --out``, ``preprocess --out``): one rule for both.

Row ``i`` is input ``i``. An input that failed keeps its row (zeros) and is marked in an
``ok`` mask, so arrays written by different commands, and the labels a user lists for the
same files, line up by position without a join. ``ferroclip probe`` reads the mask and
leaves the failed rows out.

- ``.npz``: the array under ``key``, plus ``paths``, ``ok`` and ``errors`` ("" where ok);
- ``.npy``: the array, plus ``<stem>.paths.json`` holding ``{"paths", "ok", "errors"}``
  (older files hold a bare list of paths, every row ok: still read).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ._atomic import atomic_write
from .errors import DataError

__all__ = ["RowFile", "read_sidecar", "sidecar_path", "write_rows"]


def sidecar_path(out: Path) -> Path:
    return out.with_suffix(".paths.json")


def write_rows(
    out: Path, array: np.ndarray, paths: Sequence[str], errors: Mapping[str, str], *, key: str
) -> npt.NDArray[np.bool_]:
    """Write ``array`` (one row per entry of ``paths``, failed rows already zero) atomically,
    with the paths, the ``ok`` mask and each failure's reason. Returns the mask."""
    if len(array) != len(paths):
        raise ValueError(f"{len(array)} rows but {len(paths)} paths")
    ok = np.array([p not in errors for p in paths], dtype=bool)
    reasons = [errors.get(p, "") for p in paths]
    if out.suffix == ".npz":
        with atomic_write(out) as fh:
            arrays = {key: array, "paths": np.array(list(paths), dtype=str), "ok": ok, "errors": np.array(reasons, dtype=str)}
            np.savez(fh, allow_pickle=False, **arrays)
    else:
        with atomic_write(out) as fh:
            np.save(fh, array)
        doc = {"paths": list(paths), "ok": ok.tolist(), "errors": {p: r for p, r in zip(paths, reasons) if r}}
        with atomic_write(sidecar_path(out)) as fh:
            fh.write(json.dumps(doc, indent=0).encode())
    return ok


@dataclass(frozen=True)
class RowFile:
    """What a sidecar says about an array's rows."""

    paths: list[str]
    ok: npt.NDArray[np.bool_]


def read_sidecar(path: Path) -> RowFile:
    """The ``.paths.json`` beside a ``.npy``: a bare list (every row ok) or the object above."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable paths file: {e}", str(path)) from e
    if isinstance(doc, dict):
        paths, ok = doc.get("paths"), doc.get("ok")
    else:
        paths, ok = doc, None
    if not isinstance(paths, list) or not all(isinstance(x, str) for x in paths):
        raise DataError(f"{path}: must hold a list of paths", str(path))
    if ok is None:
        ok = [True] * len(paths)
    if not isinstance(ok, list) or len(ok) != len(paths) or not all(isinstance(x, bool) for x in ok):
        raise DataError(f"{path}: 'ok' must be one true/false per path", str(path))
    return RowFile(paths, np.array(ok, dtype=bool))
