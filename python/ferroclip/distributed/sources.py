"""What ``embed_dataset`` can read, turned into one sorted list of items before anything runs.

The list is built on the driver and sorted by id, so the same source always splits into the
same shards: that is what lets a re-run recognise the shards it already wrote. Folders are
listed exactly as :func:`ferroclip.embed_folder` lists them (same files, same relative-path
ids), so the two give comparable results.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from ..cache import scan_folder
from ..data.pairs import CaptionDataset
from ..errors import DataError
from ..fetch import is_url

__all__ = ["DatasetSource", "Item", "PATH_COLUMNS", "collect_items"]

#: Column names tried, in order, for the image path or URL of a CSV/TSV/Parquet list.
PATH_COLUMNS = ("path", "image_path", "url", "image_url", "image", "filepath", "file")

#: A folder, a list file (``.txt``/``.csv``/``.tsv``/``.parquet``), webdataset shards
#: (``.tar`` paths, ``pipe:`` URLs), a glob, a list of paths or URLs, or a
#: :class:`~ferroclip.data.CaptionDataset`.
DatasetSource = Union[str, os.PathLike[str], Sequence[Union[str, os.PathLike[str]]], CaptionDataset]


@dataclass(frozen=True)
class Item:
    """One image to embed: its stable ``id``, where it came from, and its bytes if in memory.

    ``path`` is a local path or an ``http(s)`` URL the actor reads itself; ``data`` is set
    instead for images that only exist as bytes (webdataset members, dataset rows), and
    ``path`` then names their origin. ``text`` is the item's text when a ``text_column``
    was asked for (``None`` or ``""`` where the source has none for this item).
    """

    id: str
    path: str
    data: bytes | None = None
    text: str | None = None


def collect_items(source: DatasetSource, *, column: str | None = None, text_column: str | None = None) -> list[Item]:
    """Every image of ``source``, one per id, sorted by id.

    ``column`` names the path/URL column of a CSV/TSV/Parquet list (default: the first of
    :data:`PATH_COLUMNS` present). Duplicate ids keep their first occurrence.

    ``text_column`` also reads each item's text: the named column of a CSV/TSV/Parquet list,
    ``"caption"`` for a :class:`~ferroclip.data.CaptionDataset` (the first caption, with the
    pair the image comes from), or the member extension of webdataset samples (``"txt"``).
    Folders and ``.txt`` lists carry no text: a :class:`DataError` says so.
    """
    items = list(_items(source, column, text_column))
    unique: dict[str, Item] = {}
    for it in items:
        unique.setdefault(it.id, it)
    return [unique[k] for k in sorted(unique)]


def _items(source: Any, column: str | None, text_column: str | None) -> Iterable[Item]:
    if isinstance(source, CaptionDataset):
        if text_column not in (None, "caption"):
            raise DataError(f"a caption dataset's only text is 'caption', not text_column={text_column!r}", source.source)
        for pair in source.first_pair_per_image():
            text = pair.caption if text_column else None
            if isinstance(pair.image, bytes):
                yield Item(pair.image_id, pair.origin, pair.image, text)
            else:
                yield Item(pair.image_id, pair.image, text=text)
        return
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if text.startswith("pipe:"):
            yield from _webdataset([text], text_column)
        elif is_url(text):
            _no_text(text_column, text, "a single URL")
            yield Item(text, text)
        elif os.path.exists(text):
            yield from _one_path(Path(text), column, text_column)
        elif set("*?[") & set(text):
            found = sorted(glob.glob(text))
            if not found:
                raise DataError(f"{text}: no files match this pattern", text)
            for p in found:
                yield from _one_path(Path(p), column, text_column)
        else:
            raise DataError(f"{text}: no such file or folder", text)
        return
    if isinstance(source, Sequence) and all(isinstance(s, (str, os.PathLike)) for s in source):
        entries = [os.fspath(s) for s in source]
        shards = [e for e in entries if e.startswith("pipe:") or e.endswith(".tar")]
        if shards and len(shards) == len(entries):
            yield from _webdataset(shards, text_column)
            return
        _no_text(text_column, "the list", "a plain list of paths or URLs")
        for e in entries:  # a plain list of images: each entry is its own id
            yield Item(e, e if is_url(e) else os.path.abspath(e))
        return
    raise TypeError(
        "source must be a folder, a list file, webdataset shards, a glob, a list of paths or URLs, "
        f"or a CaptionDataset, got {type(source).__name__}"
    )


def _no_text(text_column: str | None, where: str, what: str) -> None:
    if text_column is not None:
        raise DataError(
            f"{where}: {what} has no text to embed (text_column={text_column!r}); use a CSV/TSV/Parquet list, "
            "webdataset shards or a caption dataset",
            where,
        )


def _one_path(path: Path, column: str | None, text_column: str | None) -> Iterable[Item]:
    if path.is_dir():
        images, _ = scan_folder(path)
        if images:
            _no_text(text_column, str(path), "a folder of images")
            root = path.resolve()
            for f in images:
                yield Item(f.relative_to(path).as_posix(), str(root / f.relative_to(path)))
            return
        shards = sorted(str(p) for p in path.glob("*.tar"))
        if shards:
            yield from _webdataset(shards, text_column)
            return
        raise DataError(f"{path}: no images and no .tar shards here", str(path))
    suffix = path.suffix.lower()
    if suffix == ".tar":
        yield from _webdataset([str(path)], text_column)
    elif suffix in (".txt", ".lst"):
        _no_text(text_column, str(path), "a .txt list")
        lines = path.read_text(encoding="utf-8").splitlines()
        yield from _entries(((ln.strip(), None) for ln in lines if ln.strip() and not ln.startswith("#")), path.parent)
    elif suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ","))
        names = list(rows[0]) if rows else []
        name = _pick(column, names, path)
        tcol = _text_pick(text_column, names, path)
        yield from _entries(
            ((r[name].strip(), r.get(tcol) if tcol else None) for r in rows if r.get(name)), path.parent
        )
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        name = _pick(column, names, path)
        tcol = _text_pick(text_column, names, path)
        table = pq.read_table(path, columns=[name] + ([tcol] if tcol and tcol != name else []))
        values = table.column(name).to_pylist()
        texts = table.column(tcol).to_pylist() if tcol else [None] * len(values)
        yield from _entries(
            ((v, t if isinstance(t, str) else None) for v, t in zip(values, texts) if isinstance(v, str) and v),
            path.parent,
        )
    else:
        raise DataError(
            f"{path}: cannot tell what this file lists from its suffix; use a folder, .txt, .csv, .tsv, "
            ".parquet or .tar",
            str(path),
        )


def _pick(column: str | None, names: list[str], path: Path) -> str:
    if column is not None:
        if column not in names:
            raise DataError(f"{path}: no column {column!r} (columns: {', '.join(names)})", str(path))
        return column
    for name in PATH_COLUMNS:
        if name in names:
            return name
    raise DataError(
        f"{path}: no path or URL column; name one with column= (looked for {', '.join(PATH_COLUMNS)})", str(path)
    )


def _text_pick(text_column: str | None, names: list[str], path: Path) -> str | None:
    if text_column is not None and text_column not in names:
        raise DataError(f"{path}: no text column {text_column!r} (columns: {', '.join(names)})", str(path))
    return text_column


def _entries(values: Iterable[tuple[str, str | None]], base: Path) -> Iterable[Item]:
    """List entries: the id is the entry as written; relative paths start at the list's folder."""
    for v, text in values:
        yield Item(v, v if is_url(v) else str((base / v).resolve()), text=text)


def _webdataset(urls: list[str], text_column: str | None = None) -> Iterable[Item]:
    """Samples of tar shards (local or ``pipe:``) read with webdataset's own tar iteration;
    the image is the first ``jpg``/``jpeg``/``png``/``webp`` member, nothing is decoded;
    the text, if asked for, is the member with extension ``text_column`` as UTF-8."""
    from ..data.shards import IMAGE_KEYS, import_webdataset

    tariterators = import_webdataset()
    from webdataset.gopen import gopen

    for url in urls:
        with gopen(url, "rb") as stream:  # closed here: webdataset's own opener leaves it open
            members = tariterators.tar_file_expander([{"url": url, "stream": stream}], handler=_raise)
            for sample in tariterators.group_by_keys(members, handler=_raise):
                key = next((k for k in IMAGE_KEYS if k in sample), None)
                if key is not None:
                    raw = sample.get(text_column) if text_column else None
                    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else None
                    yield Item(f"{url}#{sample['__key__']}", f"{url}#{sample['__key__']}.{key}", sample[key], text)


def _raise(exn: Exception) -> bool:
    raise DataError(f"cannot read webdataset shard: {exn}") from exn
