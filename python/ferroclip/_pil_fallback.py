"""Pillow fallback for the file variants no maintained Rust decoder reads (exotic TIFF,
arithmetic/lossless JPEG, OS/2 v2 BMP, GIFs without a palette, ...).

The core decodes in Rust threads without the GIL, so Pillow cannot run there: the batch
layer re-decodes, after the core ran, exactly the items the core refused with a decode
error, the way the reference pipeline does (``Image.open`` + ``ImageOps.exif_transpose``,
the alpha rule, 16-bit gray by its high byte like the core), and sends the RGB pixels
through the same Rust resize/normalise path. Items Pillow refuses too keep the core's
typed error; the pixel-count limit still applies before Pillow allocates.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import numpy.typing as npt

from .errors import ImageDecodeError, ImageError, ImageTooLargeError, item_error

if TYPE_CHECKING:
    from .preprocess import PreprocessResult

#: The Rust pass over Pillow's pixels: (RGB arrays, their positions in the batch) ->
#: (pixel rows, raw errors ``(position, ...)``), as ``preprocess_batch``/``augment_batch`` return.
RustPass = Callable[[list[npt.NDArray[np.uint8]], list[int]], tuple[npt.NDArray[Any], list[tuple[Any, ...]]]]

try:
    from PIL import Image, ImageOps

    HAVE_PIL = True
except ImportError:  # pragma: no cover - exercised by monkeypatching HAVE_PIL
    HAVE_PIL = False

#: Core error kinds the fallback retries; not too_large (a limit, not a variant) nor read errors.
RETRY_KINDS = ("decode", "unsupported")


def wants_fallback(exc: ImageError | Exception, item: Any, strict: bool) -> bool:
    """Whether a core failure is a decode refusal of a file or bytes Pillow may read;
    ``strict``: only unsupported variants, not damaged data (libjpeg warnings, bad CRCs)."""
    kinds = ("unsupported",) if strict else RETRY_KINDS
    return (
        isinstance(exc, ImageDecodeError)
        and not isinstance(exc, ImageTooLargeError)
        and getattr(exc, "kind", None) in kinds
        and isinstance(item, (str, bytes))
    )


def _to_rgb(
    img: Image.Image, alpha: Literal["white", "drop"], sixteen_bit: Literal["scale", "clip"] = "scale"
) -> Image.Image:
    """The reference's colour rule: HF ``convert_to_rgb`` (composite onto white) or
    PIL ``convert("RGB")`` (alpha dropped)."""
    if img.mode.startswith("I;16") and sixteen_bit == "scale":
        # ferroclip's documented 16-bit rule: the high byte (see decode docs); "clip" is PIL's own
        img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8), "L")
    if img.mode == "RGB":
        return img
    if alpha == "drop":
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def pil_decode(
    item: str | bytes,
    *,
    exif_transpose: bool,
    alpha: Literal["white", "drop"],
    max_pixels: int,
    sixteen_bit: Literal["scale", "clip"] = "scale",
) -> tuple[npt.NDArray[np.uint8], list[str]]:
    """RGB uint8 HWC pixels of one file as the reference decodes it, and Pillow's warnings.

    Raises whatever Pillow raises (the caller keeps the core's typed error then) or
    :class:`ImageTooLargeError` above ``max_pixels`` (``reason`` only: the caller names the item)."""
    source = io.BytesIO(item) if isinstance(item, bytes) else item
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Image.open(source) as opened:
            w, h = opened.size
            if w * h > max_pixels:
                reason = f"image too large: {w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels}"
                raise ImageTooLargeError(reason, reason=reason, kind="too_large")
            img = ImageOps.exif_transpose(opened) if exif_transpose else opened
            pixels = np.ascontiguousarray(np.asarray(_to_rgb(img, alpha, sixteen_bit)))
    return pixels, [str(w.message) for w in caught]


def retry(
    result: PreprocessResult,
    items: list[Any],
    rust_pass: RustPass,
    *,
    strict: bool,
    exif_transpose: bool,
    alpha: Literal["white", "drop"],
    max_pixels: int,
    sixteen_bit: Literal["scale", "clip"],
) -> None:
    """Decode the core's decode refusals in ``result`` with Pillow and send those pixels
    through ``rust_pass`` (the same resize/normalise or augmentation the batch ran), in place:
    rows filled, errors replaced by ``pil_fallback`` entries and a warning naming the refusal."""
    retry_items = [exc for exc in result.errors if wants_fallback(exc, items[getattr(exc, "index", -1)], strict)]
    decoded: list[tuple[int, npt.NDArray[np.uint8], list[str]]] = []
    too_large: dict[int, ImageError] = {}
    for exc in retry_items:
        index = cast(int, getattr(exc, "index"))
        try:
            arr, notes = pil_decode(
                items[index], exif_transpose=exif_transpose, alpha=alpha, max_pixels=max_pixels, sixteen_bit=sixteen_bit
            )
        except ImageError as big:  # over max_pixels: that limit is the answer, as for any input
            path = cast(ImageError, exc).path
            too_large[index] = item_error(index, path, "too_large", big.reason)
            continue
        except Exception:  # noqa: BLE001 - Pillow refuses too: the core's typed error stands
            continue
        decoded.append((index, arr, [f"decoded by Pillow: {getattr(exc, 'reason', exc)}", *notes]))
    result.errors = [too_large.get(cast(int, getattr(e, "index", -1)), e) for e in result.errors]
    if not decoded:
        return
    pixels, raw_errors = rust_pass([arr for _, arr, _ in decoded], [index for index, _, _ in decoded])
    failed_again = {pos for pos, *_ in raw_errors}
    done = set()
    for pos, (index, _, notes) in enumerate(decoded):
        if pos in failed_again:
            continue
        result.pixel_values[index] = pixels[pos]
        result.ok[index] = True
        result.pil_fallback.append(index)
        result.warnings[index] = notes
        done.add(index)
    result.errors = [exc for exc in result.errors if getattr(exc, "index", None) not in done]
