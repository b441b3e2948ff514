"""Parquet in and out of :class:`~ferroclip.EmbeddingIndex`: ``id`` + fixed-size-list ``embedding`` rows.

This is the layout ``ferroclip.distributed.embed_dataset`` writes (plus ``path``, ``ok`` and
``error``), and the one Arrow tools (Ray Data, DuckDB, polars, LanceDB imports) read without
help. Files are opened memory-mapped; Parquet pages are still decoded, so a read allocates
the vectors once; with one shard in the stored dtype that decoded buffer becomes the index
matrix with no further copy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_write
from .errors import DataError

_META = b"ferroclip"


def import_pyarrow() -> Any:
    """``pyarrow`` (with ``parquet`` and ``compute``), or an ImportError saying how to get it."""
    try:
        import pyarrow
        import pyarrow.compute  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as e:
        raise ImportError("Parquet embeddings need pyarrow: pip install pyarrow (or 'ferroclip[ray]')") from e
    return pyarrow


def parquet_files(path: str | os.PathLike[str]) -> list[Path]:
    """The shard files behind ``path``: a file, an ``embed_dataset`` output, or a folder of .parquet."""
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(f"{root}: no such file or folder", str(root))
    from .distributed.shards import MANIFEST, find_output_dir, read_manifest

    if (root / MANIFEST).is_file() or any(root.glob(f"*/{MANIFEST}")):
        out = find_output_dir(root)
        manifest = read_manifest(out)
        files = [out / s["file"] for s in manifest["shards"]]
        return [f for f in files if f.is_file()]
    files = sorted(root.glob("*.parquet"))
    if not files:
        raise DataError(f"{root}: no .parquet files here", str(root))
    return files


def read_vectors(files: list[Path], dtype: str | None, column: str = "embedding") -> tuple[list[Any], np.ndarray, str]:
    """``(ids, (N, dim) matrix, dtype)`` of the rows with a vector in ``column``.

    The flag column that goes with it (``ok`` for ``embedding``, ``text_ok`` for
    ``text_embedding``: ``X_embedding`` pairs with ``X_ok``) leaves out failed rows too."""
    import_pyarrow()
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ids: list[Any] = []
    parts: list[np.ndarray] = []
    dim = stored = None
    for f in files:
        try:
            table = pq.read_table(f, memory_map=True)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{f}: unreadable Parquet file ({e})", str(f)) from e
        for col in ("id", column):
            if col not in table.column_names:
                raise DataError(f"{f}: no {col!r} column (columns: {', '.join(table.column_names)})", str(f))
        typ = table.schema.field(column).type
        if not pa.types.is_fixed_size_list(typ) or not (
            pa.types.is_float32(typ.value_type) or pa.types.is_float16(typ.value_type)
        ):
            raise DataError(f"{f}: {column!r} must be a fixed-size list of float32 or float16, got {typ}", str(f))
        kind = "float16" if pa.types.is_float16(typ.value_type) else "float32"
        if dim is not None and (typ.list_size, kind) != (dim, stored):
            raise DataError(f"{f}: embeddings are {typ.list_size} x {kind}, earlier files hold {dim} x {stored}", str(f))
        dim, stored = typ.list_size, kind
        keep = pc.is_valid(table.column(column))
        flag = column[: -len("embedding")] + "ok" if column.endswith("embedding") else None
        if flag in table.column_names:
            keep = pc.and_(keep, pc.fill_null(table.column(flag), False))
        if not pc.all(keep).as_py():
            table = table.filter(keep)
        emb = table.column(column).combine_chunks()
        flat = emb.flatten().to_numpy(zero_copy_only=False)
        parts.append(flat.reshape(len(emb), dim))
        ids.extend(table.column("id").to_pylist())
    if dim is None:
        raise DataError("no Parquet files to read")
    want = dtype or stored
    if want not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {want!r}")
    matrix = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.empty((0, dim), want)
    matrix = np.ascontiguousarray(matrix, dtype=want)
    return ids, matrix, want


def write_vectors(path: str | os.PathLike[str], ids: list[Any], vectors: np.ndarray, dtype: str) -> None:
    import_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    if all(isinstance(i, int) for i in ids):
        id_arr = pa.array(ids, pa.int64())
    elif all(isinstance(i, str) for i in ids):
        id_arr = pa.array(ids, pa.string())
    else:
        raise TypeError("to_parquet needs ids that are all int or all str (a Parquet column has one type)")
    dim = vectors.shape[1]
    values = pa.array(np.ascontiguousarray(vectors, dtype=dtype).reshape(-1))
    table = pa.table({"id": id_arr, "embedding": pa.FixedSizeListArray.from_arrays(values, dim)})
    meta = {"format": "ferroclip.EmbeddingIndex", "dim": dim, "dtype": dtype, "count": len(ids)}
    table = table.replace_schema_metadata({_META: json.dumps(meta).encode()})
    with atomic_write(path) as fh:
        pq.write_table(table, fh, compression="zstd")
