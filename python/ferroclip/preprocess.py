"""`Preprocessor`: many images to one model-ready float batch, in parallel, in Rust.

The output equals the reference processor's (PIL + transformers' PIL-backend processor,
after ``ImageOps.exif_transpose``) bit for bit on lossless inputs and on JPEG, because the
core decodes JPEG with the same libjpeg-turbo and ports Pillow's resampling to the integer,
in the pass order of the Pillow release the config names (by default the installed one).
Bad files never kill a batch: each one is reported with its index, path and reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from . import _native, _pil_fallback
from ._sources import ImageInput, to_native_items
from .config import PreprocessConfig, resolve_pil_version
from .errors import ImageError, item_error, raise_first
from .fetch import DEFAULT_MAX_URL_BYTES, DEFAULT_URL_TIMEOUT

__all__ = ["DEFAULT_MAX_PIXELS", "PreprocessResult", "Preprocessor"]

#: Twice Pillow's decompression-bomb threshold (``Image.MAX_IMAGE_PIXELS``), where Pillow raises.
DEFAULT_MAX_PIXELS = 2 * 89_478_485
DEFAULT_MAX_FILE_BYTES = 1 << 30


@dataclass
class PreprocessResult:
    """Output of :meth:`Preprocessor.preprocess`.

    ``pixel_values[i]`` belongs to input ``i``; rows of failed inputs are zero and
    ``ok[i]`` is False. ``errors`` holds one exception per failed input, in input order,
    each with ``.index``, ``.path`` and ``.reason``. ``pil_fallback`` lists, in order, the
    inputs the Rust decoders refused and Pillow decoded instead (``Preprocessor(pil_fallback=...)``);
    ``warnings`` maps an input's index to the messages its decode left: recoverable damage
    the decoder worked around (a corrupt JPEG's libjpeg warnings; the pixels are what PIL
    gives), or, for a Pillow-fallback input, the core's refusal and Pillow's own warnings.
    """

    pixel_values: npt.NDArray[np.floating[Any]]
    ok: npt.NDArray[np.bool_]
    errors: list[ImageError | Exception] = field(default_factory=list)
    pil_fallback: list[int] = field(default_factory=list)
    warnings: dict[int, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ok)

    def raise_for_errors(self) -> None:
        """Raise the first failure (its own class), saying how many others failed."""
        raise_first(self.errors)


def collect_result(
    pixels: npt.NDArray[np.floating[Any]],
    n: int,
    raw_errors: list[tuple[int, str | None, str, str]],
    raw_warnings: list[tuple[int, list[str]]],
    failed: dict[int, ImageError | Exception],
    urls: dict[int, str],
) -> PreprocessResult:
    """One result from the core's per-item errors and warnings and the errors found before
    it ran (in Python)."""
    errors: dict[int, ImageError | Exception] = {
        index: item_error(index, urls.get(index, path), kind, reason) for index, path, kind, reason in raw_errors
    }
    for index, exc in failed.items():
        if getattr(exc, "index", None) is None:
            exc.index = index  # type: ignore[union-attr]  # plain TypeError/ValueError too
        errors[index] = exc
    ok = np.ones(n, dtype=bool)
    ok[list(errors)] = False
    warned = {index: list(messages) for index, messages in raw_warnings}
    return PreprocessResult(pixel_values=pixels, ok=ok, errors=[errors[i] for i in sorted(errors)], warnings=warned)


def check_image_options(
    config: PreprocessConfig, num_threads: int | None, dtype: str, alpha: str | None, sixteen_bit: str = "scale"
) -> Literal["white", "drop"]:
    """The argument checks :class:`Preprocessor` and :class:`~ferroclip.TrainAugment` share,
    so training and evaluation of one model refuse and default the same way; returns the
    alpha rule (``None``: the config's, e.g. ``"drop"`` for the MobileCLIP preset)."""
    if not isinstance(config, PreprocessConfig):
        raise TypeError(f"config must be a PreprocessConfig, got {type(config).__name__}")
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    if sixteen_bit not in ("scale", "clip"):
        raise ValueError(f"sixteen_bit must be 'scale' or 'clip', got {sixteen_bit!r}")
    if alpha is None:
        alpha = config.alpha
    if alpha not in ("white", "drop"):
        raise ValueError(f"alpha must be 'white', 'drop' or None, got {alpha!r}")
    return cast(Literal["white", "drop"], alpha)


class Preprocessor:
    """Turns images into ``(N, 3, H, W)`` batches as ``config`` prescribes.

    Args:
        config: the model's :class:`PreprocessConfig` (a preset, ``from_pretrained``, ...).
        num_threads: worker threads; default ``FERROCLIP_NUM_THREADS`` or all cores.
        fast: decode JPEGs at 1/2, 1/4 or 1/8 scale in the DCT domain when the resized
            image is at least that much smaller. Much faster on large photos; no longer
            bit-exact (see the benchmark report for the measured difference).
        exif_transpose: apply EXIF orientation, as ``ImageOps.exif_transpose``.
        alpha: ``"white"`` composites transparency onto white (what HF's ``convert_to_rgb``
            does), ``"drop"`` discards alpha (PIL ``convert("RGB")``, open_clip); default
            ``None``: what the config says (``config.alpha``).
        max_pixels: images whose header announces more pixels fail with
            :class:`ImageTooLargeError` before any pixel memory is allocated.
        max_file_bytes: larger files fail without being read.
        dtype: ``"float32"`` (default) or ``"float16"`` output.
        url_timeout: seconds before an ``http(s)://`` input's download is abandoned.
        url_max_bytes: downloads larger than this fail (checked while streaming).
        pil_fallback: re-decode with Pillow the files and bytes the Rust decoders refuse
            (file variants they do not implement, see ``docs/``), then resize and normalise
            them in Rust like any other input; reported in ``result.pil_fallback`` and
            ``result.warnings``. Default ``None``: on when Pillow is importable. Without
            Pillow those inputs keep their typed error.
        strict: damaged data (corrupt JPEG entropy data, which libjpeg only warns about and
            PIL decodes as libjpeg leaves it) is an error instead of a decode with the
            warning in ``result.warnings``, and the Pillow fallback does not retry damaged
            files (bad CRCs, ...); unsupported variants still take it. Truncated files
            are errors either way, as in PIL.
        sixteen_bit: 16-bit grayscale (PNG, TIFF) as ``"scale"`` (default: the high byte,
            so the whole 16-bit range maps to 0-255, as PIL does for 16-bit colour) or
            ``"clip"`` (PIL's own ``I;16 -> RGB``: values above 255 become 255, which turns
            most 16-bit scans white; choose it to match a pipeline that fed PIL's result).

    Example:
        >>> pre = Preprocessor(PreprocessConfig.clip(224))
        >>> res = pre.preprocess(["cat.jpg", "dog.png"])   # doctest: +SKIP
        >>> res.pixel_values.shape                          # doctest: +SKIP
        (2, 3, 224, 224)
    """

    def __init__(
        self,
        config: PreprocessConfig,
        *,
        num_threads: int | None = None,
        fast: bool = False,
        exif_transpose: bool = True,
        alpha: Literal["white", "drop"] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        dtype: Literal["float32", "float16"] = "float32",
        url_timeout: float = DEFAULT_URL_TIMEOUT,
        url_max_bytes: int = DEFAULT_MAX_URL_BYTES,
        pil_fallback: bool | None = None,
        strict: bool = False,
        sixteen_bit: Literal["scale", "clip"] = "scale",
    ) -> None:
        alpha = check_image_options(config, num_threads, dtype, alpha, sixteen_bit)
        if pil_fallback and not _pil_fallback.HAVE_PIL:
            raise ValueError("pil_fallback=True needs Pillow installed (pip install pillow)")
        self.pil_fallback = _pil_fallback.HAVE_PIL if pil_fallback is None else bool(pil_fallback)
        self.max_pixels = max_pixels
        self.strict = strict
        self.sixteen_bit = sixteen_bit
        self.config = config
        self.alpha = alpha
        self.num_threads = num_threads
        self.fast = fast
        self.exif_transpose = exif_transpose
        self.dtype = dtype
        self.url_timeout = url_timeout
        self.url_max_bytes = url_max_bytes
        self._spec = _native.PreprocessSpec(
            resize_mode=config.resize_mode,
            size=config.size,
            crop_size=config.crop_size,
            crop_rounding=config.crop_rounding,
            resample=config.resample,
            pil_version=cast(str, config.pil_version),  # a rule name once __post_init__ has run
            rescale=config.rescale,
            rescale_factor=config.rescale_factor,
            mean=config.image_mean,
            std=config.image_std,
            pad_value=config.fill_rgb,
            exif_transpose=exif_transpose,
            alpha=alpha,
            max_pixels=max_pixels,
            jpeg_draft=fast,
            max_file_bytes=max_file_bytes,
            strict=strict,
            sixteen_bit=sixteen_bit,
        )

    @property
    def output_size(self) -> tuple[int, int]:
        return self.config.output_size

    def preprocess(
        self,
        images: ImageInput | list[ImageInput],
        *,
        on_error: Literal["report", "raise"] = "report",
        out: npt.NDArray[np.floating[Any]] | None = None,
    ) -> PreprocessResult:
        """Preprocess a batch (paths, URLs, encoded bytes, uint8 HWC arrays, PIL images; mixed is fine).

        With ``on_error="report"`` failures come back in ``result.errors``; with ``"raise"``
        the first failure is raised after the whole batch ran. ``out`` may be a C-contiguous
        ``(N, 3, H, W)`` array of the output dtype to fill in place (e.g. a pinned buffer).
        """
        if on_error not in ("report", "raise"):
            raise ValueError(f"on_error must be 'report' or 'raise', got {on_error!r}")
        items, failed, urls = to_native_items(
            images, self.exif_transpose, url_timeout=self.url_timeout, url_max_bytes=self.url_max_bytes
        )
        pixels, raw_errors, raw_warnings = _native.preprocess_batch(
            items, self._spec, out=out, dtype=self.dtype, num_threads=self.num_threads
        )
        result = collect_result(pixels, len(items), raw_errors, raw_warnings, failed, urls)
        if self.pil_fallback:
            self._retry_with_pil(result, items)
        if on_error == "raise":
            result.raise_for_errors()
        return result

    __call__ = preprocess

    def _retry_with_pil(self, result: PreprocessResult, items: list[Any]) -> None:
        """Decode the core's decode refusals with Pillow and preprocess those pixels in Rust."""
        _pil_fallback.retry(
            result, items,
            lambda arrays, _: _native.preprocess_batch(arrays, self._spec, dtype=self.dtype, num_threads=self.num_threads)[:2],
            strict=self.strict, exif_transpose=self.exif_transpose, alpha=self.alpha, max_pixels=self.max_pixels,
            sixteen_bit=self.sixteen_bit,
        )

    def __repr__(self) -> str:
        return f"Preprocessor({self.config!r}, num_threads={self.num_threads}, fast={self.fast})"


def decode_image(
    image: str | bytes,
    *,
    exif_transpose: bool = True,
    alpha: Literal["white", "drop"] = "white",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    sixteen_bit: Literal["scale", "clip"] = "scale",
    pil_version: str | int | None = None,
) -> npt.NDArray[np.uint8]:
    """Decode one file or bytes object to an ``(H, W, 3)`` uint8 array, as the reference sees it.

    ``pil_version`` names the Pillow whose reading to match, resolved as
    :class:`PreprocessConfig` resolves it (default: the installed Pillow), so this array is
    the one a :class:`Preprocessor` under the same Pillow starts from. Of the decoders only
    the BMP reader differs between releases (Pillow 12 and older read an odd RLE4 absolute
    run one pixel short, for one).
    """
    rule, _ = resolve_pil_version(pil_version)
    return _native.decode_image(
        image,
        exif_transpose=exif_transpose,
        alpha=alpha,
        max_pixels=max_pixels,
        sixteen_bit=sixteen_bit,
        pil_version=rule,
    )
