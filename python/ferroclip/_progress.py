"""Progress bars by one rule: drawn for long work on a terminal, unless asked otherwise.

``progress=None`` (the default of the API) draws a bar only when stderr is a terminal and
only once the work has run for :data:`DELAY` seconds, so a handful of images (``zero_shot``
over 3 files, ``score_batch`` over 5 rows) draws nothing and a log file gets no bar
fragments. ``True`` always draws one (from the start, on any stream); ``False`` never.
"""

from __future__ import annotations

from typing import Any

DELAY = 2.0


def bar(total: int, *, progress: bool | None, desc: str, unit: str) -> Any:
    """A ``tqdm`` bar (disabled or delayed by the rule above); use it as a context manager."""
    from tqdm.auto import tqdm

    if progress is None:
        # disable=None: tqdm disables itself when the stream is not a terminal.
        return tqdm(total=total, desc=desc, unit=unit, disable=None if total else True, delay=DELAY)
    return tqdm(total=total, desc=desc, unit=unit, disable=not progress or total == 0)
