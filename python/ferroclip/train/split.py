"""Image-level train/val/test splits, so no image (and none of its captions) crosses splits.

Splitting captions instead would put captions of one image in both train and test, and
test recall would measure memorisation. The tuning subset is a random part of the train
images, for fast Optuna trials. A split is saved as JSON (ids, fractions, seed and a
fingerprint of the ids) and reused: loading it against different data is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .._atomic import atomic_write
from ..errors import DataError
from .data import PairedEmbeddings

__all__ = ["Split", "split_images"]

_FORMAT = "ferroclip.train.Split"
PARTS = ("train", "val", "test", "tuning")


def _fingerprint(ids: Sequence[str]) -> str:
    h = hashlib.sha256()
    for k in sorted(ids):
        h.update(k.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Split:
    """Image ids per part. ``tuning`` is a subset of ``train``; the other three are disjoint."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    tuning: tuple[str, ...]
    seed: int
    fingerprint: str

    def part(self, data: PairedEmbeddings, name: str) -> PairedEmbeddings:
        """The images of part ``name`` with all their captions; checks the split fits ``data``."""
        if name not in PARTS:
            raise ValueError(f"unknown split part {name!r}; use one of {PARTS}")
        if _fingerprint(data.image_ids) != self.fingerprint:
            raise DataError(
                "this split was made for different data (image ids differ); make a new split for these embeddings"
            )
        return data.subset(getattr(self, name))

    def save(self, path: str | os.PathLike[str]) -> None:
        body = {"format": _FORMAT, "version": 1, **asdict(self)}
        with atomic_write(path) as fh:
            fh.write(json.dumps(body, indent=1).encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Split:
        p = Path(path)
        try:
            body = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise DataError(f"{p}: no split file; run `ferroclip heads split` first", str(p)) from e
        except (OSError, ValueError) as e:
            raise DataError(f"{p}: not a readable split file: {e}", str(p)) from e
        if not isinstance(body, dict) or body.get("format") != _FORMAT:
            raise DataError(f"{p}: not a ferroclip split file", str(p))
        try:
            split = cls(
                **{k: tuple(map(str, body[k])) for k in PARTS},
                seed=int(body["seed"]),
                fingerprint=str(body["fingerprint"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{p}: split file is missing or has a bad field: {e}", str(p)) from e
        split._check(str(p))
        return split

    def _check(self, where: str) -> None:
        a, b, c = set(self.train), set(self.val), set(self.test)
        if a & b or a & c or b & c:
            raise DataError(f"{where}: split parts share images", where)
        if not set(self.tuning) <= a:
            raise DataError(f"{where}: the tuning subset holds images outside train", where)


def split_images(
    data: PairedEmbeddings | Sequence[str],
    *,
    val: float = 0.05,
    test: float = 0.05,
    tuning: float = 0.2,
    seed: int = 0,
) -> Split:
    """Shuffle the unique images with ``seed`` and cut them into train/val/test by fraction.

    ``tuning`` is the fraction of train images kept for hyperparameter search. Every part
    gets at least one image when the fraction is positive.
    """
    ids = list(data.image_ids if isinstance(data, PairedEmbeddings) else data)
    for name, frac in (("val", val), ("test", test), ("tuning", tuning)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name} fraction must be in [0, 1), got {frac}")
    if val + test >= 1.0:
        raise ValueError(f"val + test must leave images for training, got {val} + {test}")
    if len(set(ids)) != len(ids):
        raise DataError("image ids are not unique")
    n = len(ids)
    n_val = max(1, round(n * val)) if val > 0 else 0
    n_test = max(1, round(n * test)) if test > 0 else 0
    if n - n_val - n_test < 1:
        raise DataError(f"{n} images are too few for this split")
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [ids[i] for i in order]
    te, va, tr = shuffled[:n_test], shuffled[n_test : n_test + n_val], shuffled[n_test + n_val :]
    n_tune = max(1, round(len(tr) * tuning)) if tuning > 0 else 0
    split = Split(
        train=tuple(tr),
        val=tuple(va),
        test=tuple(te),
        tuning=tuple(tr[:n_tune]),
        seed=int(seed),
        fingerprint=_fingerprint(ids),
    )
    split._check("split")
    return split
