"""Training batches from image–caption pairs: preprocessed in Rust, one batch ahead.

An epoch is a seeded permutation of the training *images* (seed, epoch): each image appears
once per epoch with one of its captions, so a contrastive batch never holds two captions of
one image as false negatives. The caption is the epoch's turn in the image's list
(``epoch mod n``), or with ``augment_text`` a seeded random one. Images go through the
Rust augmentation (random resized crop, flip, jitter; seeded per (epoch, sample), so
reproducible whatever the thread count) or the model's exact preprocessing, with the GIL
released, into pinned memory on CUDA; a worker thread prepares batch k+1 while the model
runs batch k. Batch ``i`` of epoch ``e`` depends only on (seed, e, i), its image size too
when several are given (multi-resolution training), which is what makes a resumed or
distributed run equal to an uninterrupted one. A file that fails to decode drops out of its
batch and is reported once, with its path and reason; the epoch goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data import CaptionDataset
from ..errors import DataError

__all__ = ["Batch", "PairLoader"]

log = logging.getLogger("ferroclip.finetune")

# (images, epoch, sample indices, out buffer) -> PreprocessResult-like (pixel_values, ok, errors)
PrepareFn = Callable[[list[Any], int, list[int], np.ndarray], Any]
TokenizeFn = Callable[[list[str]], dict[str, np.ndarray]]


@dataclass
class Batch:
    """One global batch; rows of images that failed to decode are already left out."""

    pixel_values: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    image_index: np.ndarray
    failures: list[Any] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pixel_values)

    def __getitem__(self, key: str) -> Any:  # seed 001's dict-style access
        return getattr(self, key)


class PairLoader:
    """Iterable over one epoch's batches (``len()`` of them); ``set_epoch`` as DDP's sampler.

    ``batch_size`` is the global batch (all ranks, all micro-batches); each rank prepares its
    ``1/world`` share.
    """

    def __init__(
        self,
        data: CaptionDataset,
        *,
        prepare: PrepareFn,
        tokenize: TokenizeFn,
        batch_size: int,
        image_hw: tuple[int, int],
        image_sizes: Sequence[int] | None = None,
        seed: int = 0,
        shuffle: bool = True,
        augment_text: bool = False,
        pin_memory: bool = False,
        prefetch: bool = True,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        groups = data.by_image()
        self.ids = list(groups)
        if len(self.ids) < batch_size:
            raise DataError(
                f"{len(self.ids)} training images are fewer than one batch of {batch_size} "
                "(batch_size x gradient_accumulation_steps): lower the batch size"
            )
        self.images = [data.pairs[idx[0]].image for idx in groups.values()]
        self.captions = [[data.pairs[i].caption for i in idx] for idx in groups.values()]
        self.prepare, self.tokenize = prepare, tokenize
        self.batch_size, self.image_hw = int(batch_size), image_hw
        self.image_sizes = [int(s) for s in image_sizes] if image_sizes else None
        self.seed, self.shuffle, self.augment_text = int(seed), shuffle, augment_text
        self.pin_memory, self.prefetch = pin_memory, prefetch
        if batch_size % world:
            raise ValueError(f"the global batch {batch_size} does not split over {world} ranks")
        self.rank, self.world = int(rank), int(world)
        self.epoch = 0
        self.reported: set[int] = set()

    def __len__(self) -> int:
        return len(self.ids) // self.batch_size  # the last partial batch is dropped

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int) -> np.ndarray:
        n = len(self.ids)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def caption_of(self, image: int, epoch: int) -> str:
        caps = self.captions[image]
        if self.augment_text:
            return caps[int(np.random.default_rng([self.seed, epoch, image, 1]).integers(len(caps)))]
        return caps[epoch % len(caps)]

    def image_hw_of(self, epoch: int, index: int) -> tuple[int, int]:
        """Batch ``index``'s output size: ``image_hw``, or one of ``image_sizes`` drawn from
        (seed, epoch, index), the same on every rank and after a resume."""
        if not self.image_sizes:
            return self.image_hw
        s = self.image_sizes[int(np.random.default_rng([self.seed, epoch, index, 2]).integers(len(self.image_sizes)))]
        return (s, s)

    def make_batch(self, epoch: int, index: int) -> Batch:
        """Batch ``index`` of ``epoch`` (pure: the same arguments give the same batch); under
        torch.distributed, this rank's contiguous share of it, so the ranks together see
        exactly the single-process batch."""
        rows = self.order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        per = self.batch_size // self.world
        rows = rows[self.rank * per : (self.rank + 1) * per]
        h, w = self.image_hw_of(epoch, index)
        shape = (len(rows), 3, h, w)
        buf = torch.empty(shape, dtype=torch.float32, pin_memory=self.pin_memory)
        res = self.prepare([self.images[i] for i in rows], epoch, [int(i) for i in rows], buf.numpy())
        ok = np.asarray(res.ok, dtype=bool)
        failures = list(res.errors)
        for e in failures:
            i = int(rows[getattr(e, "index", 0) or 0])
            if i not in self.reported:
                self.reported.add(i)
                log.warning("skipping an image that does not decode: %s", e)
        keep = np.flatnonzero(ok)
        tokens = self.tokenize([self.caption_of(int(rows[j]), epoch) for j in keep])
        pixels = buf if len(keep) == len(rows) else buf[torch.from_numpy(keep)]
        mask = tokens.get("attention_mask")
        return Batch(
            pixel_values=pixels,
            input_ids=torch.from_numpy(tokens["input_ids"]),
            attention_mask=None if mask is None else torch.from_numpy(mask),
            image_index=rows[keep],
            failures=failures,
        )

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` from batch ``start`` on, the next one prepared meanwhile."""
        n = len(self)
        if not self.prefetch:
            for i in range(start, n):
                yield self.make_batch(epoch, i)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ferroclip-loader") as pool:
            pending: Future[Batch] | None = pool.submit(self.make_batch, epoch, start) if start < n else None
            for i in range(start, n):
                assert pending is not None
                batch = pending.result()
                pending = pool.submit(self.make_batch, epoch, i + 1) if i + 1 < n else None
                yield batch

    def __iter__(self) -> Iterator[Batch]:
        return self.batches(self.epoch)


def split_micro(batch: Batch, micro: int, device: torch.device, non_blocking: bool = False) -> list[Any]:
    """The global batch as micro-batches of ``micro`` rows on ``device``."""
    from .step import MicroBatch

    out = []
    for s in range(0, len(batch), micro):
        sl = slice(s, s + micro)
        mask = batch.attention_mask
        out.append(
            MicroBatch(
                batch.pixel_values[sl].to(device, non_blocking=non_blocking),
                batch.input_ids[sl].to(device, non_blocking=non_blocking),
                None if mask is None else mask[sl].to(device, non_blocking=non_blocking),
            )
        )
    return out


