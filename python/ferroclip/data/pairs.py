"""What every data source yields: image–caption pairs, the rows it skipped, and image-level views.

A source is read once, up front, so a bad row is found and reported before training, never
mid-epoch. Images are kept as what the Rust preprocessing reads (a path or encoded bytes),
so nothing is decoded here and a loader can hand ``pair.image`` straight to
:class:`ferroclip.Preprocessor`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Union

import numpy as np
import numpy.typing as npt

from ..errors import DataError
from ..train.split import split_images

__all__ = ["BadRow", "CaptionDataset", "ImageCaptionPair", "ImageRef"]

# A path string (absolute, already resolved) or the encoded bytes of one image.
ImageRef = Union[str, bytes]


@dataclass(frozen=True)
class ImageCaptionPair:
    """One caption of one image.

    ``image_id`` is the same for every caption of an image (a resolved absolute path, or
    ``"<source>#<key or row>"`` for images stored as bytes), so splits and Recall@K can
    group captions by image. ``origin`` says where the pair was read (``"file.csv:12"``,
    ``"shard.tar:000042"``, ``"dataset[7]"``) for error messages.
    """

    image: ImageRef
    caption: str
    image_id: str
    origin: str
    #: The image's class name when the table has a label column (``label_column=``):
    #: fine-tuning then also reports zero-shot accuracy. ``None`` otherwise.
    label: str | None = None


@dataclass(frozen=True)
class BadRow:
    """A row that was skipped: the file (or shard, or dataset) it came from, its line and why.

    ``line`` counts as a text editor does (1 is the first line, a CSV header included);
    ``None`` where a source has no lines (tar members, dataset rows: ``origin`` names them).
    """

    origin: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = self.origin if self.line is None else f"{self.origin}:{self.line}"
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class CaptionDataset:
    """All pairs of a source, in source order, plus the rows skipped while reading it.

    Example::

        ds = load_pairs("data/dataset.csv")
        print(ds.summary())                 # "120 pairs of 40 images from data/dataset.csv; 2 bad rows skipped"
        parts = ds.split(val=0.1, test=0.1)  # no image in two parts
        for image_id, idx in parts["train"].by_image().items():
            ...                             # idx: the positions of that image's captions
    """

    pairs: tuple[ImageCaptionPair, ...]
    bad_rows: tuple[BadRow, ...] = ()
    source: str = ""

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> ImageCaptionPair:
        return self.pairs[i]

    @cached_property
    def image_ids(self) -> tuple[str, ...]:
        """Unique image ids, in the order their first caption appears."""
        return tuple(dict.fromkeys(p.image_id for p in self.pairs))

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def captions(self) -> tuple[str, ...]:
        return tuple(p.caption for p in self.pairs)

    def by_image(self) -> dict[str, tuple[int, ...]]:
        """For each unique image (first-seen order), the indices in ``pairs`` of its captions.

        One-caption-per-image batches draw from these groups (two captions of one image in a
        contrastive batch would be false negatives), and Recall@K uses them as ground truth.
        """
        return dict(self._groups)

    @cached_property
    def _groups(self) -> dict[str, tuple[int, ...]]:
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(self.pairs):
            groups.setdefault(p.image_id, []).append(i)
        return {k: tuple(v) for k, v in groups.items()}

    @property
    def text_to_image(self) -> npt.NDArray[np.int64]:
        """For each pair, the index in ``image_ids`` of its image (the layout Recall@K takes)."""
        pos = {k: i for i, k in enumerate(self.image_ids)}
        return np.fromiter((pos[p.image_id] for p in self.pairs), dtype=np.int64, count=len(self.pairs))

    def first_pair_per_image(self) -> list[ImageCaptionPair]:
        """One pair per unique image (its first caption): what an image-embedding pass needs."""
        return [self.pairs[idx[0]] for idx in self.by_image().values()]

    def subset(self, image_ids: Iterable[str]) -> CaptionDataset:
        """The pairs of the named images (all their captions), in source order.

        Bad rows stay with the whole dataset; a subset starts with none.
        """
        wanted = set(image_ids)
        missing = wanted.difference(self.image_ids)
        if missing:
            raise DataError(f"{len(missing)} image ids are not in {self.source or 'the data'}, e.g. {sorted(missing)[:3]}")
        return CaptionDataset(tuple(p for p in self.pairs if p.image_id in wanted), (), self.source)

    def split(self, val: float = 0.1, test: float = 0.1, seed: int = 42) -> dict[str, CaptionDataset]:
        """``{"train", "val", "test"}`` parts cut by image, with :func:`ferroclip.train.split_images`.

        Every caption of an image goes to the part of its image, so test recall never sees an
        image trained on under another caption.
        """
        s = split_images(self.image_ids, val=val, test=test, tuning=0.0, seed=seed)
        return {name: self.subset(getattr(s, name)) for name in ("train", "val", "test")}

    def summary(self) -> str:
        """One line for a run's report: pairs, images, and how many rows were skipped."""
        src = f" from {self.source}" if self.source else ""
        bad = len(self.bad_rows)
        tail = f"; {bad} bad row{'s' if bad != 1 else ''} skipped" if bad else ""
        return f"{len(self.pairs)} pairs of {self.num_images} images{src}{tail}"


def concat(parts: Sequence[CaptionDataset], source: str = "") -> CaptionDataset:
    """Several sources as one dataset (pairs and bad rows in the order given)."""
    return CaptionDataset(
        tuple(p for d in parts for p in d.pairs),
        tuple(b for d in parts for b in d.bad_rows),
        source or ", ".join(d.source for d in parts if d.source),
    )
