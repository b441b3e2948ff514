"""Turning raw rows into pairs while keeping every skipped row and its reason.

Each reader hands rows here, so the rules are one place: captions are stripped and must not
be empty, a row may carry several captions, path images are resolved against the directory
of the file naming them and checked once each, and identical image bytes within one load
share one image id (otherwise an image stored once per caption would count as many images,
and a split could put its copies in both train and test).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from typing import Any

from .pairs import BadRow, CaptionDataset, ImageCaptionPair

__all__ = ["PairCollector", "resolve_path"]

log = logging.getLogger("ferroclip.data")
_LOGGED = 10  # bad rows logged one by one; the rest are counted in one line
# Bytes that were not UTF-8, as read_text keeps them (surrogateescape).
_NOT_UTF8 = re.compile("[\udc80-\udcff]")


def resolve_path(value: str, base: str) -> str:
    """``value`` as an absolute, normalised path; relative ones are taken from ``base``."""
    p = os.path.expanduser(value)
    return os.path.abspath(p if os.path.isabs(p) else os.path.join(base, p))


class PairCollector:
    """Pairs and bad rows of one load, in the order the rows were read."""

    def __init__(self, source: str, *, check_files: bool) -> None:
        self.source = source
        self.check_files = check_files
        self.pairs: list[ImageCaptionPair] = []
        self.bad_rows: list[BadRow] = []
        self._file_state: dict[str, str | None] = {}
        self._by_digest: dict[bytes, str] = {}

    def bad(self, origin: str, line: int | None, reason: str) -> None:
        self.bad_rows.append(BadRow(origin, line, reason))

    def captions(self, value: Any, origin: str, line: int | None) -> list[str]:
        """The non-empty captions in ``value`` (a string or a list of strings); the rest are bad rows."""
        if value is None:
            self.bad(origin, line, "no caption")
            return []
        if isinstance(value, str):
            values: list[Any] = [value]
        elif isinstance(value, (list, tuple)):
            values = list(value)
            if not values:
                self.bad(origin, line, "empty caption list")
                return []
        else:
            self.bad(origin, line, f"caption is {_kind(value)}, not text")
            return []
        out = []
        for i, v in enumerate(values):
            which = f"caption {i + 1} of {len(values)}" if len(values) > 1 else "caption"
            if v is None:
                self.bad(origin, line, f"{which} is missing")
            elif not isinstance(v, str):
                self.bad(origin, line, f"{which} is {_kind(v)}, not text")
            elif _NOT_UTF8.search(v):
                self.bad(origin, line, f"{which} is not UTF-8 text")
            elif not v.strip():
                self.bad(origin, line, f"{which} is empty")
            else:
                out.append(v.strip())
        return out

    def add_path(
        self, value: Any, base: str, captions: Any, origin: str, line: int | None, label: Any = None
    ) -> None:
        """Pairs for an image named by a path (relative to ``base``) and its caption(s);
        ``label`` (a class name; empty or missing: none) is kept on each pair."""
        if not isinstance(value, str) or not value.strip():
            self.bad(origin, line, "no image path" if value in (None, "") else f"image path is {_kind(value)}")
            return
        path = resolve_path(value.strip(), base)
        problem = self._check(path) if self.check_files else None
        if problem is not None:
            self.bad(origin, line, problem)
            return
        where = f"{origin}:{line}" if line is not None else origin
        name = str(label).strip() if label is not None and str(label).strip() else None
        for c in self.captions(captions, origin, line):
            self.pairs.append(ImageCaptionPair(path, c, path, where, name))

    def add_bytes(self, data: bytes, image_id: str, captions: Any, origin: str, line: int | None) -> None:
        """Pairs for an image stored as encoded bytes; ``image_id`` is used unless the same bytes came earlier."""
        if not data:
            self.bad(origin, line, "image is empty (0 bytes)")
            return
        texts = self.captions(captions, origin, line)
        if not texts:
            return
        digest = hashlib.blake2b(data, digest_size=16).digest()
        image_id = self._by_digest.setdefault(digest, image_id)
        where = f"{origin}:{line}" if line is not None else origin
        for c in texts:
            self.pairs.append(ImageCaptionPair(bytes(data), c, image_id, where))

    def result(self) -> CaptionDataset:
        for b in self.bad_rows[:_LOGGED]:
            log.warning("skipped %s", b)
        if len(self.bad_rows) > _LOGGED:
            log.warning("skipped %d more bad rows of %s", len(self.bad_rows) - _LOGGED, self.source)
        return CaptionDataset(tuple(self.pairs), tuple(self.bad_rows), self.source)

    def _check(self, path: str) -> str | None:
        if path not in self._file_state:
            self._file_state[path] = _file_problem(path)
        return self._file_state[path]


def _file_problem(path: str) -> str | None:
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"no image file {path}"
    except OSError as e:
        return f"cannot read image file {path}: {e.strerror or e}"
    if not stat.S_ISREG(st.st_mode):
        return f"image path {path} is not a regular file"
    if st.st_size == 0:
        return f"image file {path} is empty (0 bytes)"
    if not os.access(path, os.R_OK):
        return f"image file {path} is not readable (permission denied)"
    return None


def _kind(value: Any) -> str:
    return "missing" if value is None else f"a {type(value).__name__}"
