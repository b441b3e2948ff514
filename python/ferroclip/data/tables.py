"""Caption tables in text files: CSV/TSV, a JSON list (or ``{"data": [...]}``), JSON Lines.

Rows are numbered as a text editor shows them (the CSV header is line 1, a JSON record is
numbered by the line its ``{`` is on), so a bad-row report can be opened at that line.
Image paths are relative to the directory of the table.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError
from ._collect import PairCollector
from .columns import CAPTION_DEFAULTS, IMAGE_DEFAULTS, JSON_IMAGE_DEFAULTS, pick_column

__all__ = ["read_csv", "read_json", "read_jsonl", "read_text", "text_lines"]

_WS = " \t\n\r"


def text_lines(text: str) -> Iterator[str]:
    """Lines as an editor numbers them: split at ``\\n``, ``\\r\\n`` or ``\\r`` only.

    ``str.splitlines`` also splits at form feeds and Unicode line separators, which a
    caption may hold, and would shift every line number after them.
    """
    for raw in io.StringIO(text, newline=""):
        yield raw.rstrip("\r\n")


def read_text(path: Path) -> str:
    """The file as text; bytes that are not UTF-8 are kept as surrogates (PEP 383).

    One badly encoded caption then makes one bad row (see ``PairCollector.captions``)
    instead of failing the whole file, and a non-UTF-8 file name still opens.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}", str(path)) from e
    return data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


def read_csv(
    path: Path,
    out: PairCollector,
    *,
    image_column: str | None,
    caption_column: str | None,
    sep: str,
    label_column: str | None = None,
) -> None:
    """Rows of a delimited file with a header; extra columns are ignored."""
    where, base = str(path), str(path.parent)
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError(f"{where}: empty file; expected a header line naming the columns", where) from None
    except csv.Error as e:
        raise DataError(f"{where}:1: cannot parse the header: {e}", where) from e
    img = header.index(
        pick_column(image_column, IMAGE_DEFAULTS, header, where=where, what="image", option="image_column")
    )
    cap = header.index(
        pick_column(caption_column, CAPTION_DEFAULTS, header, where=where, what="caption", option="caption_column")
    )
    lab = (
        header.index(pick_column(label_column, (label_column,), header, where=where, what="label", option="label_column"))
        if label_column is not None
        else None
    )
    prev = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:  # e.g. a NUL byte; the reader cannot resynchronise after it
            raise DataError(f"{where}:{reader.line_num}: cannot parse CSV: {e}", where) from e
        line, prev = prev + 1, reader.line_num
        if not any(c.strip() for c in row):
            continue  # blank line
        if len(row) != len(header):
            hint = " (an unquoted separator in a caption?)" if len(row) > len(header) else ""
            out.bad(where, line, f"{len(row)} fields where the header has {len(header)}{hint}")
            continue
        out.add_path(row[img], base, row[cap], where, line, row[lab] if lab is not None else None)


def _records(text: str, where: str) -> Iterator[tuple[int, Any]]:
    """Each record of a top-level list (or of the ``data`` list) with the line it starts on."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}:{e.lineno}: not valid JSON: {e.msg}", where) from e
    if isinstance(whole, dict) and isinstance(whole.get("data"), list):
        pos = _data_array(text)
    elif isinstance(whole, list):
        pos = _skip_ws(text, 0)
    else:
        raise DataError(f'{where}: expected a JSON list of records or {{"data": [...]}}', where)
    # The text is valid JSON (checked above), so this walk cannot fail.
    dec = json.JSONDecoder()
    line, counted = 1, 0
    pos = _skip_ws(text, pos + 1)  # past "["
    while text[pos] != "]":
        line += text.count("\n", counted, pos)
        counted = pos
        value, end = dec.raw_decode(text, pos)
        yield line, value
        pos = _skip_ws(text, end)
        if text[pos] == ",":
            pos = _skip_ws(text, pos + 1)


def _data_array(text: str) -> int:
    """Offset of the ``[`` of the last top-level ``"data"`` member (the one json.loads keeps)."""
    dec = json.JSONDecoder()
    pos = _skip_ws(text, _skip_ws(text, 0) + 1)
    found = -1
    while text[pos] != "}":
        key, pos = dec.raw_decode(text, pos)
        pos = _skip_ws(text, _skip_ws(text, pos) + 1)  # past ":"
        if key == "data":
            found = pos
        _, pos = dec.raw_decode(text, pos)
        pos = _skip_ws(text, pos)
        if text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
    return found


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _add_records(
    rows: list[tuple[int, Any]],
    out: PairCollector,
    where: str,
    base: str,
    image_key: str | None,
    caption_key: str | None,
    label_key: str | None,
) -> None:
    keys = list(dict.fromkeys(k for _, r in rows if isinstance(r, dict) for k in r))
    if not rows:
        return
    img = pick_column(image_key, JSON_IMAGE_DEFAULTS, keys, where=where, what="image", option="json_image_key")
    cap = pick_column(caption_key, CAPTION_DEFAULTS, keys, where=where, what="caption", option="json_caption_key")
    if label_key is not None:
        pick_column(label_key, (label_key,), keys, where=where, what="label", option="label_column")
    for line, rec in rows:
        if not isinstance(rec, dict):
            out.bad(where, line, f"record is a {type(rec).__name__}, not an object")
        elif img not in rec:
            out.bad(where, line, f"no {img!r} field")
        elif cap not in rec:
            out.bad(where, line, f"no {cap!r} field")
        else:
            out.add_path(rec[img], base, rec[cap], where, line, rec.get(label_key) if label_key is not None else None)


def read_json(
    path: Path, out: PairCollector, *, image_key: str | None, caption_key: str | None, label_key: str | None = None
) -> None:
    """Records of a JSON list, or of the ``data`` list of a JSON object (the seed's two layouts)."""
    where = str(path)
    rows = list(_records(read_text(path), where))
    _add_records(rows, out, where, str(path.parent), image_key, caption_key, label_key)


def read_jsonl(
    path: Path, out: PairCollector, *, image_key: str | None, caption_key: str | None, label_key: str | None = None
) -> None:
    """One JSON record per line; a line that is not JSON is a bad row, not an error."""
    where = str(path)
    rows: list[tuple[int, Any]] = []
    for line, raw in enumerate(text_lines(read_text(path)), start=1):
        if not raw.strip():
            continue
        try:
            rows.append((line, json.loads(raw)))
        except json.JSONDecodeError as e:
            out.bad(where, line, f"not valid JSON: {e.msg}")
    _add_records(rows, out, where, str(path.parent), image_key, caption_key, label_key)
