"""`TrainAugment`: torchvision-style training augmentation, fused into the Rust preprocessing.

Per sample: ``RandomResizedCrop`` (torchvision's box sampling, then the crop and resize as one
``PIL.Image.resize(size, resample, box=box)``, byte for byte), ``RandomHorizontalFlip``,
optionally ``ColorJitter`` and ``RandomGrayscale`` (Pillow's arithmetic, as torchvision applies
them to PIL images), then the model's normalisation. The box is drawn before decoding, so a
JPEG is decoded only where the resize reads.

Randomness is a function of ``(seed, epoch, index)`` alone: the same sample gets the same
pixels whatever the thread count, DataLoader worker count or batch it comes in, and another
epoch gets new draws. Evaluation keeps using :class:`~ferroclip.Preprocessor`, the model's
exact preprocessing.

Deviations from torchvision, on purpose: the draws come from ferroclip's own counter-based
generator (same procedure and distributions, not torch's bit stream), and the crop+resize is
``resize(box=)``, whose kernel reads the real pixels just outside the box where torchvision's
``crop().resize()`` repeats the crop's edge; inside, the two agree.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from . import _native, _pil_fallback
from ._sources import ImageInput, to_native_items
from .config import PreprocessConfig
from .preprocess import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS, PreprocessResult, check_image_options, collect_result

__all__ = ["AugmentParams", "TrainAugment"]

_U64 = 2**64


@dataclass(frozen=True)
class AugmentParams:
    """The random decisions for one sample.

    Attributes:
        box: crop box ``(x0, y0, x1, y1)`` in the EXIF-oriented image (``x1``/``y1`` exclusive),
            as ``PIL.Image.resize(box=...)`` takes it.
        flip: mirrored left to right (after the resize).
        grayscale: converted to 3-channel gray (after the jitter).
        jitter: ``(op, factor)`` pairs in the order they are applied; ``op`` is one of
            ``"brightness"``, ``"contrast"``, ``"saturation"``, ``"hue"``.
    """

    box: tuple[int, int, int, int]
    flip: bool
    grayscale: bool
    jitter: tuple[tuple[str, float], ...]


def _size(value: int | tuple[int, int] | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an int or (height, width), got {value!r}")
    if isinstance(value, int):
        value = (value, value)
    try:
        h, w = (operator.index(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an int or (height, width), got {value!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be positive, got {(h, w)}")
    return h, w


def _range(value: Sequence[float], what: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a (min, max) pair of numbers, got {value!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi):
        raise ValueError(f"{what} must satisfy 0 < min <= max, got {value!r}")
    return lo, hi


def _probability(value: float, what: str) -> float:
    p = float(value)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{what} must be a probability in [0, 1], got {value!r}")
    return p


def _counter(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an int, got {value!r}")
    if not 0 <= int(value) < _U64:
        raise ValueError(f"{what} must be in [0, 2**64), got {value}")
    return int(value)


def _indices(indices: Sequence[int], n: int | None) -> list[int]:
    out = [_counter(i, "indices") for i in (indices.tolist() if isinstance(indices, np.ndarray) else indices)]
    if n is not None and len(out) != n:
        raise ValueError(f"indices has {len(out)} entries for {n} images")
    return out


class TrainAugment:
    """Random-resized-crop training batches at any size, reproducible by ``(seed, epoch, index)``.

    Args:
        config: the model's :class:`PreprocessConfig`; its resample filter, rescale, mean/std
            and ``pil_version`` are used, and its output size is the default ``size``.
        size: output ``(height, width)`` (an int: square); each :meth:`augment` call may
            override it, e.g. a size per batch for multi-resolution training.
        scale, ratio: ``RandomResizedCrop``'s area fraction and aspect-ratio ranges.
        hflip: probability of a horizontal flip.
        color_jitter: ``(brightness, contrast, saturation, hue)`` strengths as
            ``ColorJitter`` takes them (0 disables one; ``hue <= 0.5``), or ``None``.
        grayscale: probability of ``RandomGrayscale``.
        seed: the run's seed, in ``[0, 2**64)``.
        num_threads, dtype, exif_transpose, alpha, max_pixels, max_file_bytes, strict,
            sixteen_bit, pil_fallback: as for :class:`~ferroclip.Preprocessor` (``alpha=None``:
            the config's rule, as the evaluation preprocessing of the same model uses). With
            the Pillow fallback, a file the Rust decoders refuse is decoded by Pillow and
            augmented in Rust like any other (the same crop for the same sample: the box
            depends only on the seed and the image size).

    Example:
        >>> aug = TrainAugment(PreprocessConfig.clip(224), seed=0)
        >>> res = aug.augment(["cat.jpg"], epoch=0, indices=[17])   # doctest: +SKIP
        >>> res.pixel_values.shape                                 # doctest: +SKIP
        (1, 3, 224, 224)
    """

    def __init__(
        self,
        config: PreprocessConfig,
        *,
        size: int | tuple[int, int] | None = None,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        color_jitter: tuple[float, float, float, float] | None = None,
        grayscale: float = 0.0,
        seed: int = 0,
        num_threads: int | None = None,
        dtype: Literal["float32", "float16"] = "float32",
        exif_transpose: bool = True,
        alpha: Literal["white", "drop"] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        strict: bool = False,
        sixteen_bit: Literal["scale", "clip"] = "scale",
        pil_fallback: bool | None = None,
    ) -> None:
        alpha = check_image_options(config, num_threads, dtype, alpha, sixteen_bit)
        if pil_fallback and not _pil_fallback.HAVE_PIL:
            raise ValueError("pil_fallback=True needs Pillow installed (pip install pillow)")
        self.pil_fallback = _pil_fallback.HAVE_PIL if pil_fallback is None else bool(pil_fallback)
        self.max_pixels, self.strict, self.sixteen_bit = max_pixels, strict, sixteen_bit
        if color_jitter is not None:
            try:
                jitter = tuple(float(v) for v in color_jitter)
            except (TypeError, ValueError):
                raise ValueError(f"color_jitter must be 4 numbers or None, got {color_jitter!r}") from None
            if len(jitter) != 4 or not all(np.isfinite(v) and v >= 0 for v in jitter):
                raise ValueError(
                    f"color_jitter must be (brightness, contrast, saturation, hue) >= 0, got {color_jitter!r}"
                )
            if jitter[3] > 0.5:
                raise ValueError(f"color_jitter hue must be <= 0.5, got {jitter[3]}")
            color_jitter = jitter
        self.config = config
        self.size = _size(config.output_size if size is None else size, "size")
        self.scale = _range(scale, "scale")
        self.ratio = _range(ratio, "ratio")
        self.hflip = _probability(hflip, "hflip")
        self.grayscale = _probability(grayscale, "grayscale")
        self.color_jitter = color_jitter
        self.seed = _counter(seed, "seed")
        self.num_threads = num_threads
        self.dtype = dtype
        self.exif_transpose = exif_transpose
        self.alpha = alpha
        self._spec = _native.AugmentSpec(
            scale=self.scale,
            ratio=self.ratio,
            hflip=self.hflip,
            color_jitter=color_jitter,
            grayscale=self.grayscale,
            seed=self.seed,
            resample=config.resample,
            pil_version=str(config.pil_version),
            rescale=config.rescale,
            rescale_factor=config.rescale_factor,
            mean=config.image_mean,
            std=config.image_std,
            exif_transpose=exif_transpose,
            alpha=alpha,
            max_pixels=max_pixels,
            max_file_bytes=max_file_bytes,
            strict=strict,
            sixteen_bit=sixteen_bit,
        )

    def augment(
        self,
        images: ImageInput | list[ImageInput],
        *,
        epoch: int,
        indices: Sequence[int],
        size: int | tuple[int, int] | None = None,
        out: npt.NDArray[np.floating[Any]] | None = None,
        on_error: Literal["report", "raise"] = "report",
    ) -> PreprocessResult:
        """Augment a batch: image ``i`` is sample ``indices[i]`` of ``epoch``.

        ``images`` are whatever :meth:`Preprocessor.preprocess` accepts. ``size`` overrides
        the output size for this batch. ``out`` may be a C-contiguous ``(N, 3, H, W)`` array
        of the output dtype to fill in place (e.g. a numpy view of a pinned tensor).
        Failures are per item, as for :meth:`Preprocessor.preprocess`.
        """
        if on_error not in ("report", "raise"):
            raise ValueError(f"on_error must be 'report' or 'raise', got {on_error!r}")
        hw = self.size if size is None else _size(size, "size")
        epoch = _counter(epoch, "epoch")
        items, failed, urls = to_native_items(images, self.exif_transpose)
        keys = _indices(indices, len(items))
        pixels, raw_errors, raw_warnings = _native.augment_batch(
            items, self._spec, epoch=epoch, indices=keys, size=hw, out=out, dtype=self.dtype,
            num_threads=self.num_threads,
        )
        result = collect_result(pixels, len(items), raw_errors, raw_warnings, failed, urls)
        if self.pil_fallback:
            _pil_fallback.retry(
                result, items,
                lambda arrays, pos: _native.augment_batch(
                    arrays, self._spec, epoch=epoch, indices=[keys[i] for i in pos], size=hw, dtype=self.dtype,
                    num_threads=self.num_threads,
                )[:2],
                strict=self.strict, exif_transpose=self.exif_transpose, alpha=self.alpha, max_pixels=self.max_pixels,
                sixteen_bit=self.sixteen_bit,
            )
        if on_error == "raise":
            result.raise_for_errors()
        return result

    __call__ = augment

    def params(self, width: int, height: int, *, epoch: int, indices: Sequence[int]) -> list[AugmentParams]:
        """The random decisions :meth:`augment` makes for these samples of a ``width`` x ``height`` image."""
        w, h = operator.index(width), operator.index(height)
        if w < 1 or h < 1:
            raise ValueError(f"width and height must be positive, got {width}x{height}")
        raw = self._spec.params(w, h, _counter(epoch, "epoch"), _indices(indices, None))
        return [AugmentParams(box=b, flip=f, grayscale=g, jitter=tuple(j)) for b, f, g, j in raw]

    def boxes(
        self, width: int, height: int, *, epoch: int, indices: Sequence[int]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Crop boxes ``(N, 4)`` as ``(x0, y0, x1, y1)`` and whether each sample is flipped."""
        ps = self.params(width, height, epoch=epoch, indices=indices)
        boxes = np.array([p.box for p in ps], dtype=np.int64).reshape(len(ps), 4)
        return boxes, np.array([p.flip for p in ps], dtype=bool)

    def __repr__(self) -> str:
        return (
            f"TrainAugment({self.config!r}, size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"hflip={self.hflip}, color_jitter={self.color_jitter}, grayscale={self.grayscale}, seed={self.seed})"
        )
