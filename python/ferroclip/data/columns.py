"""Choosing the image and caption columns of a table, and failing early when a name is wrong.

A misspelt column would otherwise turn every row into a bad row; it is a :class:`DataError`
raised before any row is read, naming the columns present and the nearest one.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from ..errors import DataError

__all__ = ["CAPTION_DEFAULTS", "IMAGE_DEFAULTS", "JSON_IMAGE_DEFAULTS", "closest", "pick_column"]

# The first name is the default; the others are used only when the default is absent and
# exactly one of them is present (``image,caption`` headers from the seed's examples).
IMAGE_DEFAULTS = ("image_path", "image")
JSON_IMAGE_DEFAULTS = ("image", "image_path")
CAPTION_DEFAULTS = ("caption", "captions", "text")


def closest(name: str, present: Sequence[str]) -> str | None:
    """The present name nearest to ``name`` (case first, then spelling), if any is near."""
    for p in present:
        if p.lower() == name.lower():
            return p
    near = difflib.get_close_matches(name, list(present), n=1, cutoff=0.5)
    return near[0] if near else None


def pick_column(
    asked: str | None,
    defaults: Sequence[str],
    present: Sequence[str],
    *,
    where: str,
    what: str,
    option: str,
) -> str:
    """The column to read: ``asked`` if given, else the first default found (see module doc).

    ``option`` is the keyword that sets it, quoted in the error so the fix is one edit away.
    """
    if asked is not None:
        if asked in present:
            return asked
        wanted = asked
    else:
        if defaults[0] in present:
            return defaults[0]
        found = [d for d in defaults[1:] if d in present]
        if len(found) == 1:
            return found[0]
        wanted = defaults[0]
    near = closest(wanted, present)
    hint = f"; did you mean {near!r}? (pass {option}={near!r})" if near else f"; pass {option}= to name it"
    shown = ", ".join(repr(p) for p in present) or "none"
    raise DataError(f"{where}: no {what} column {wanted!r}; columns present: {shown}{hint}", where)
