"""Exceptions raised by ferroclip.

Every class derives from :class:`FerroclipError`, and also from the builtin a caller would
already catch (``ValueError`` for bad data, ``OSError`` for files), so existing
``except ValueError`` / ``except OSError`` code keeps working.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigError",
    "DataError",
    "FerroclipError",
    "ImageDecodeError",
    "ImageError",
    "ImageFetchError",
    "ImageNotFoundError",
    "ImageReadError",
    "ImageTooLargeError",
    "InternalError",
    "ModelError",
    "ModelNotFoundError",
    "NotAFileError",
    "ShapeError",
    "UnsupportedFormatError",
    "item_error",
    "raise_first",
]


class FerroclipError(Exception):
    """Catch this to catch everything ferroclip raises on purpose."""


class ImageError(FerroclipError):
    """One image could not be turned into pixels.

    ``path`` names the file (``None`` for bytes or arrays), ``index`` its position in the
    batch (``None`` outside a batch), ``reason`` the cause without the file name and
    ``kind`` a stable machine-readable tag (``"decode"``, ``"too_large"``, ...).
    """

    def __init__(
        self,
        message: str,
        path: str | None = None,
        reason: str | None = None,
        kind: str | None = None,
        index: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.reason = reason if reason is not None else message
        self.kind = kind
        self.index = index

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # keep pickling (multiprocessing) working with the extra fields
        return (type(self), (self.message, self.path, self.reason, self.kind, self.index))


class ImageDecodeError(ImageError, ValueError, OSError):
    """The bytes are not a valid image: empty, truncated, corrupt.

    Also an ``OSError``, as Pillow's ``UnidentifiedImageError`` is, so code written against
    ``Image.open`` (``except OSError``) keeps catching corrupt files; it stays a
    ``ValueError`` for the callers who treat bad data as such.
    """


class UnsupportedFormatError(ImageDecodeError):
    """The bytes are of a format (or variant) ferroclip does not read."""


class ImageTooLargeError(ImageDecodeError):
    """The image (from its header) or the file is over the configured limit."""


class ImageReadError(ImageError, OSError):
    """The file could not be read (permissions, I/O error)."""


class ImageFetchError(ImageReadError):
    """A URL could not be downloaded: bad scheme, timeout, HTTP error, over the byte cap."""


class ImageNotFoundError(ImageReadError, FileNotFoundError):
    """No file at that path."""


class NotAFileError(ImageReadError):
    """The path is a directory, FIFO, socket or device, not a regular file."""


class ShapeError(FerroclipError, ValueError):
    """An array has the wrong shape, dtype or layout."""


class ConfigError(FerroclipError, ValueError):
    """A preprocessing or model configuration is invalid or cannot be read."""


class ModelError(FerroclipError, RuntimeError):
    """A model cannot be loaded or run as asked (missing weights, unknown family, device)."""


class ModelNotFoundError(ModelError, FileNotFoundError):
    """A local model path (a name that can only be a path) does not exist.

    A ``FileNotFoundError`` too, so a seed's ``except FileNotFoundError`` around loading a
    model still works; ``path`` names what was looked for.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (type(self), (self.message, self.path))


class DataError(FerroclipError, ValueError):
    """Embedding, metadata, label or split files disagree with each other or hold bad values.

    ``path`` names the file at fault when there is one. Raised for mismatched row counts,
    unknown image ids, wrong embedding dimensions and splits that do not fit their data.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (type(self), (self.message, self.path))


class InternalError(FerroclipError, RuntimeError):
    """A bug in ferroclip or in a decoder it uses. Please report it with the input."""


_KIND_TO_CLASS: dict[str, type[ImageError]] = {
    "decode": ImageDecodeError,
    "unsupported": UnsupportedFormatError,
    "too_large": ImageTooLargeError,
    "io": ImageReadError,
    "permission_denied": ImageReadError,
    "not_found": ImageNotFoundError,
    "not_a_file": NotAFileError,
    "fetch": ImageFetchError,
    "shape": ImageDecodeError,
    "internal": ImageError,
}


def raise_first(errors: list[ImageError | Exception]) -> None:
    """Raise the first failure of a batch (its own class), saying how many others failed."""
    if not errors:
        return
    first = errors[0]
    others = len(errors) - 1
    if others:
        note = f" ({others} other item{'s' if others > 1 else ''} also failed)"
        if isinstance(first, ImageError):
            first.message += note
        else:
            first.args = (f"{first.args[0] if first.args else first}{note}",)
    raise first


def item_error(index: int, path: str | None, kind: str, reason: str) -> ImageError:
    """Build the exception object for one failed batch item (as reported by the core)."""
    cls = _KIND_TO_CLASS.get(kind, ImageError)
    where = path if path is not None else f"item {index}"
    return cls(f"{where}: {reason}", path=path, reason=reason, kind=kind, index=index)
