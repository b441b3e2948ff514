"""Hugging Face ``datasets``: in-memory ``Dataset``/``DatasetDict``, ``save_to_disk`` folders, parquet.

The image column may hold ``Image`` features, raw bytes or paths. ``Image`` columns are read
with ``decode=False``, so the stored encoded bytes reach the Rust decoder untouched (no PIL
decode and re-encode); a column of PIL objects is stored as PNG, which is lossless.
Relative paths are taken from the folder of the saved dataset or parquet file, or from
``root`` for an in-memory dataset. ``datasets`` is imported only when one of these is read.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from ..errors import DataError
from ._collect import PairCollector
from .columns import CAPTION_DEFAULTS, IMAGE_DEFAULTS, closest, pick_column

__all__ = ["import_datasets", "is_hf_dataset", "is_saved_dataset", "read_hf_dataset", "read_parquet", "read_saved_dataset"]

_BATCH = 1024


def import_datasets() -> Any:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            "reading Hugging Face datasets and parquet files needs the `datasets` package: "
            "pip install 'ferroclip[data]'"
        ) from e
    return datasets


def is_hf_dataset(obj: Any) -> bool:
    """True for a ``datasets.Dataset`` or ``DatasetDict``, without importing ``datasets``."""
    return type(obj).__module__.startswith("datasets.") and type(obj).__name__ in ("Dataset", "DatasetDict")


def is_saved_dataset(folder: Path) -> bool:
    """A folder written by ``save_to_disk`` (one dataset, or a dict of splits)."""
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def read_saved_dataset(folder: Path, out: PairCollector, **columns: Any) -> None:
    datasets = import_datasets()
    try:
        ds = datasets.load_from_disk(str(folder))
    except (OSError, ValueError) as e:
        raise DataError(f"{folder}: cannot load the saved dataset: {e}", str(folder)) from e
    read_hf_dataset(ds, out, name=str(folder), base=str(folder), **columns)


def read_parquet(paths: list[Path], out: PairCollector, *, cache_dir: str | None, **columns: Any) -> None:
    datasets = import_datasets()
    name = str(paths[0]) if len(paths) == 1 else str(paths[0].parent)
    try:
        ds = datasets.Dataset.from_parquet([str(p) for p in paths], cache_dir=cache_dir)
    except (OSError, ValueError) as e:
        raise DataError(f"{name}: cannot read parquet: {e}", name) from e
    read_hf_dataset(ds, out, name=name, base=str(paths[0].parent), **columns)


def read_hf_dataset(
    ds: Any,
    out: PairCollector,
    *,
    name: str,
    base: str,
    image_column: str | None,
    caption_column: str | None,
    hf_split: str | None,
) -> None:
    """Rows of a ``Dataset``, or of one split of a ``DatasetDict``; origins are ``name[row]``.

    The split is ``hf_split``, else ``train``, else the only split there is.
    """
    datasets = import_datasets()
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if hf_split is None:
            hf_split = splits[0] if len(splits) == 1 else "train"
        if hf_split not in ds:
            near = closest(hf_split, splits)
            hint = f"; did you mean {near!r}?" if near else ""
            raise DataError(f"{name}: no split {hf_split!r}; splits present: {splits}{hint} (pass hf_split=)", name)
        ds, name = ds[hf_split], f"{name}[{hf_split}]" if len(splits) > 1 else name
    if not isinstance(ds, datasets.Dataset):
        raise TypeError(f"expected a datasets.Dataset or DatasetDict, got {type(ds).__name__}")
    cols = list(ds.column_names)
    img = pick_column(image_column, IMAGE_DEFAULTS, cols, where=name, what="image", option="image_column")
    cap = pick_column(caption_column, CAPTION_DEFAULTS, cols, where=name, what="caption", option="caption_column")
    ds = ds.select_columns(list(dict.fromkeys([img, cap])))
    if isinstance(ds.features[img], datasets.Image):
        ds = ds.cast_column(img, datasets.Image(decode=False))
    row = 0
    for batch in ds.iter(batch_size=_BATCH):
        for value, caption in zip(batch[img], batch[cap]):
            _add_row(out, value, caption, name, row, base)
            row += 1


def _add_row(out: PairCollector, value: Any, caption: Any, name: str, row: int, base: str) -> None:
    origin = f"{name}[{row}]"
    if isinstance(value, dict):  # an Image feature read with decode=False
        data, path = value.get("bytes"), value.get("path")
        if data:
            out.add_bytes(data, f"{name}#{row}", caption, origin, None)
        elif path:
            out.add_path(path, base, caption, origin, None)
        else:
            out.bad(origin, None, "image has neither bytes nor a path")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        out.add_bytes(bytes(value), f"{name}#{row}", caption, origin, None)
    elif isinstance(value, (str, os.PathLike)):
        out.add_path(os.fspath(value), base, caption, origin, None)
    elif type(value).__module__.startswith("PIL."):
        buf = io.BytesIO()
        value.save(buf, "PNG")
        out.add_bytes(buf.getvalue(), f"{name}#{row}", caption, origin, None)
    elif value is None:
        out.bad(origin, None, "no image")
    else:
        out.bad(origin, None, f"image is a {type(value).__name__}; expected an Image feature, bytes or a path")
