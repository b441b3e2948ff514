"""Turning what users hand us into what the Rust core reads: paths, bytes, uint8 arrays.

PIL images are converted here (never inside Rust) with the reference's own rules, so the
core only ever sees encoded bytes or uint8 HW/HWC pixels.
"""

from __future__ import annotations

import os
from typing import Any, Union

import numpy as np

from .errors import ImageError, ShapeError
from .fetch import DEFAULT_MAX_URL_BYTES, DEFAULT_URL_TIMEOUT, fetch_urls, is_url

ImageInput = Union[str, os.PathLike[str], bytes, bytearray, memoryview, np.ndarray, Any]

# Stand-in passed to the core for an item that already failed in Python; its core error
# is replaced by the Python one, so the row stays zero and the order is kept.
_FAILED = b""


def _from_pil(img: Any, exif_transpose: bool) -> np.ndarray:
    from PIL import ImageOps

    if exif_transpose:
        img = ImageOps.exif_transpose(img)
    has_alpha = "A" in img.getbands() or img.info.get("transparency") is not None
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.uint32)
        return np.ascontiguousarray((arr >> 8).clip(0, 255).astype(np.uint8))
    return np.ascontiguousarray(np.asarray(img.convert("RGBA" if has_alpha else "RGB")))


def _from_array(arr: np.ndarray, index: int) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise ShapeError(f"item {index}: image arrays must be uint8 HxW or HxWxC, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ShapeError(f"item {index}: image arrays must be HxW or HxWx{{1,3,4}}, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def as_list(images: Any) -> list[Any]:
    """One image (path, URL, bytes, HW/HWC array, PIL image) or an iterable of them, as a list.

    A 4-D uint8 array is a batch of HWC images.
    """
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)) or _is_pil(images):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    return list(images)


def to_native_items(
    images: Any,
    exif_transpose: bool,
    *,
    url_timeout: float = DEFAULT_URL_TIMEOUT,
    url_max_bytes: int = DEFAULT_MAX_URL_BYTES,
) -> tuple[list[Any], dict[int, ImageError | Exception], dict[int, str]]:
    """Map inputs to core items; failures found here are returned by index.

    URL strings are downloaded here, concurrently, so the core only sees their bytes; the
    third value maps those indices back to their URL so later errors can name it.
    """
    images = as_list(images)
    url_index = [i for i, obj in enumerate(images) if is_url(obj)]
    fetched = dict(
        zip(url_index, fetch_urls([images[i] for i in url_index], timeout=url_timeout, max_bytes=url_max_bytes))
    )
    items: list[Any] = []
    failed: dict[int, ImageError | Exception] = {}
    for i, obj in enumerate(images):
        if i in fetched:
            body = fetched[i]
            if isinstance(body, ImageError):
                failed[i] = body
                items.append(_FAILED)
            else:
                items.append(body)
            continue
        try:
            if isinstance(obj, bytes):
                items.append(obj)
            elif isinstance(obj, (bytearray, memoryview)):
                items.append(bytes(obj))
            elif isinstance(obj, os.PathLike):
                items.append(os.fspath(obj))
            elif isinstance(obj, str):
                items.append(obj)
            elif isinstance(obj, np.ndarray):
                items.append(_from_array(obj, i))
            elif _is_pil(obj):
                items.append(_from_pil(obj, exif_transpose))
            else:
                raise TypeError(
                    f"item {i}: expected a path, bytes, a uint8 numpy array or a PIL image, got {type(obj).__name__}"
                )
        except (ShapeError, TypeError, OSError, ValueError) as exc:
            failed[i] = exc
            items.append(_FAILED)
    return items, failed, {i: images[i] for i in url_index}


def _is_pil(obj: Any) -> bool:
    mod = type(obj).__module__
    return mod.startswith("PIL.") and hasattr(obj, "getbands")
