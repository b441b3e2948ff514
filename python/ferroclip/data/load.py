"""``load_pairs``: one entry point that tells the format of a source and reads it whole, up front.

Reading everything before training means a wrong column name is a :class:`DataError` at
start-up and a bad row is a line in the report, never an exception mid-epoch.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

from ..errors import DataError
from ._collect import PairCollector
from .folders import CAPTIONS_FILE, image_files, read_captions_file, read_sidecar_folder
from .hub import is_hf_dataset, is_saved_dataset, read_hf_dataset, read_parquet, read_saved_dataset
from .pairs import CaptionDataset, concat
from .shards import read_shards
from .tables import read_csv, read_json, read_jsonl

__all__ = ["FORMATS", "PairSource", "load_pairs"]

# A path, a glob, a list of paths, or a datasets.Dataset / DatasetDict (Any: datasets is optional).
PairSource = Union[str, os.PathLike[str], Sequence[Union[str, os.PathLike[str]]], Any]

FORMATS = ("csv", "tsv", "json", "jsonl", "captions", "folder", "hf", "parquet", "webdataset")
_BY_SUFFIX = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "captions",
    ".parquet": "parquet",
    ".tar": "webdataset",
}
_GLOB_CHARS = set("*?[")


def load_pairs(
    source: PairSource,
    *,
    format: str | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
    sep: str | None = None,
    json_image_key: str | None = None,
    json_caption_key: str | None = None,
    hf_split: str | None = None,
    root: str | os.PathLike[str] | None = None,
    check_files: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    label_column: str | None = None,
) -> CaptionDataset:
    """Every (image, caption) pair of ``source``, with the rows that had to be skipped.

    ``source`` is a file (``.csv``, ``.tsv``, ``.json``, ``.jsonl``, ``captions.txt``,
    ``.parquet``, a webdataset ``.tar``), a folder (``captions.txt``, a ``.txt`` per image,
    ``.tar`` shards, ``.parquet`` files or a ``save_to_disk`` dataset), a glob or list of
    those, or an in-memory ``datasets.Dataset``/``DatasetDict``. ``format`` (one of
    :data:`FORMATS`) overrides the guess from the suffix or folder contents.

    Columns: ``image_column``/``caption_column`` for CSV, TSV, parquet and Hugging Face
    datasets, ``json_image_key``/``json_caption_key`` for JSON and JSON Lines. Left as
    ``None`` they are ``image_path`` (or ``image`` when only that exists; JSON: ``image``,
    or ``image_path``) and ``caption`` (or ``captions``/``text``). A caption cell may hold a
    list of captions. ``sep`` defaults to ``","`` (``"\\t"`` for ``.tsv``). ``hf_split``
    picks the split of a ``DatasetDict`` (default ``train``, or its only split); ``root`` is where relative paths of an in-memory
    dataset start (default: the working directory); elsewhere they start at the folder of
    the file naming them. ``check_files`` reports path images that are missing or empty.
    ``cache_dir`` is handed to ``datasets`` when parquet is read. ``label_column`` names a
    class-name column (key) of a CSV/TSV/JSON/JSON Lines table: each pair then carries its
    image's ``label``, and fine-tuning reports zero-shot accuracy; other formats refuse it.

    Raises :class:`DataError` for a column, key or split that is not there, an unreadable
    or malformed file, or a source of unknown format. Bad rows are never raised: they are
    in ``result.bad_rows`` (each with file, line and reason) and logged.

    Example::

        from ferroclip.data import load_pairs

        ds = load_pairs("data/dataset.csv")                     # image_path,caption
        ds = load_pairs("data/images")                          # captions.txt or cat.jpg + cat.txt
        ds = load_pairs("shards/train-*.tar")                   # webdataset
        ds = load_pairs(hf_dataset, image_column="image", caption_column="text")
        for bad in ds.bad_rows:
            print(bad)                                          # data/dataset.csv:17: caption is empty
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; use one of {FORMATS}")
    opts: dict[str, Any] = dict(
        format=format,
        image_column=image_column,
        caption_column=caption_column,
        sep=sep,
        json_image_key=json_image_key,
        json_caption_key=json_caption_key,
        hf_split=hf_split,
        root=root,
        check_files=check_files,
        cache_dir=None if cache_dir is None else os.fspath(cache_dir),
        label_column=label_column,
    )
    if label_column is not None and is_hf_dataset(source):
        raise DataError("label_column is read from CSV, TSV, JSON and JSON Lines tables only", "dataset")
    if is_hf_dataset(source):
        out = PairCollector("dataset", check_files=check_files)
        base = os.path.abspath(os.fspath(root)) if root is not None else os.getcwd()
        read_hf_dataset(
            source,
            out,
            name="dataset",
            base=base,
            image_column=image_column,
            caption_column=caption_column,
            hf_split=hf_split,
        )
        return out.result()
    paths = _expand(source)
    if len(paths) > 1:
        kinds = {_format_of(p, format) for p in paths}
        if kinds == {"webdataset"} or kinds == {"parquet"}:
            return _load_many(paths, kinds.pop(), opts)
        return concat([_load_one(p, opts) for p in paths])
    return _load_one(paths[0], opts)


def _expand(source: Any) -> list[Path]:
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if not os.path.exists(text) and _GLOB_CHARS & set(text):
            found = sorted(glob.glob(text))
            if not found:
                raise DataError(f"{text}: no files match this pattern", text)
            return [Path(p) for p in found]
        if not os.path.exists(text):
            raise DataError(f"{text}: no such file or folder", text)
        return [Path(text)]
    if isinstance(source, Sequence) and source and all(isinstance(s, (str, os.PathLike)) for s in source):
        return [p for s in source for p in _expand(s)]
    raise TypeError(
        "source must be a path, a glob, a list of paths or a datasets.Dataset/DatasetDict, "
        f"got {type(source).__name__}"
    )


def _format_of(path: Path, asked: str | None) -> str:
    if asked is not None:
        return asked
    if path.is_dir():
        return _folder_format(path)
    fmt = _BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}; pass format= one of {FORMATS}", str(path)
        )
    return fmt


def _folder_format(folder: Path) -> str:
    if is_saved_dataset(folder):
        return "hf"
    if (folder / CAPTIONS_FILE).is_file():
        return "captions"
    if any(folder.glob("*.tar")):
        return "webdataset"
    if any(folder.glob("*.parquet")):
        return "parquet"
    if image_files(folder):
        return "folder"
    raise DataError(
        f"{folder}: found no {CAPTIONS_FILE}, images with .txt captions, .tar shards, .parquet files "
        "or saved Hugging Face dataset here",
        str(folder),
    )


def _members(folder: Path, suffix: str) -> list[Path]:
    return sorted(p for p in folder.glob(f"*{suffix}") if p.is_file())


def _load_one(path: Path, opts: dict[str, Any]) -> CaptionDataset:
    fmt = _format_of(path, opts["format"])
    if path.is_dir() and fmt in ("webdataset", "parquet"):
        return _load_many(_members(path, ".tar" if fmt == "webdataset" else ".parquet"), fmt, opts, str(path))
    out = PairCollector(str(path), check_files=opts["check_files"])
    cols = dict(image_column=opts["image_column"], caption_column=opts["caption_column"])
    keys = dict(image_key=opts["json_image_key"], caption_key=opts["json_caption_key"])
    label = opts["label_column"]
    if label is not None and fmt not in ("csv", "tsv", "json", "jsonl"):
        raise DataError(f"{path}: label_column is read from CSV, TSV, JSON and JSON Lines tables only, not {fmt}", str(path))
    if fmt in ("csv", "tsv"):
        sep = opts["sep"] if opts["sep"] is not None else ("\t" if fmt == "tsv" else ",")
        read_csv(_file(path, fmt), out, sep=sep, label_column=label, **cols)
    elif fmt == "json":
        read_json(_file(path, fmt), out, label_key=label, **keys)
    elif fmt == "jsonl":
        read_jsonl(_file(path, fmt), out, label_key=label, **keys)
    elif fmt == "captions":
        read_captions_file(path / CAPTIONS_FILE if path.is_dir() else path, out)
    elif fmt == "folder":
        if not path.is_dir():
            raise DataError(f"{path}: format='folder' needs a folder of images with .txt captions", str(path))
        read_sidecar_folder(path, out)
    elif fmt == "hf":
        read_saved_dataset(path, out, hf_split=opts["hf_split"], **cols)
    else:  # a single shard or parquet file
        return _load_many([path], fmt, opts)
    return out.result()


def _load_many(paths: list[Path], fmt: str, opts: dict[str, Any], name: str = "") -> CaptionDataset:
    if opts["label_column"] is not None:
        raise DataError(f"{name or paths[0]}: label_column is read from CSV, TSV, JSON and JSON Lines tables only, not {fmt}")
    if not paths:
        raise DataError(f"{name}: no {fmt} files here", name)
    name = name or (str(paths[0]) if len(paths) == 1 else str(paths[0].parent))
    out = PairCollector(name, check_files=opts["check_files"])
    if fmt == "webdataset":
        read_shards(paths, out)
    else:
        read_parquet(
            paths,
            out,
            cache_dir=opts["cache_dir"],
            hf_split=opts["hf_split"],
            image_column=opts["image_column"],
            caption_column=opts["caption_column"],
        )
    return out.result()


def _file(path: Path, fmt: str) -> Path:
    if path.is_dir():
        raise DataError(f"{path}: is a folder, but format {fmt!r} reads a file", str(path))
    return path
