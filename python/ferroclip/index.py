"""`EmbeddingIndex`: exact dot-product search over embeddings with ids, saved without pickle.

Storage is one row-major float32 or float16 matrix, searched by the Rust top-k (exact, no
training, no approximation). On disk an index is a directory holding ``vectors-<tag>.npy``
and ``index.json`` (format, dim, dtype, count, ids, and the vectors file's name). The JSON is
written last and atomically and names its own vectors file, so a crash mid-save leaves the
previous index intact; ``load`` memory-maps the ``.npy`` (``allow_pickle=False``). Saves to
one directory are serialised by a lock file, so the next save can safely sweep up what a
killed one left behind (temp files, an unreferenced vectors file).

faiss interop (``to_faiss`` / ``from_faiss``) is optional: faiss is imported only there.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import numpy.typing as npt

from ._atomic import atomic_write, fsync_dir
from .errors import DataError, ShapeError
from .retrieval import _matrix, _to_numpy, _threads, near_duplicates, topk

__all__ = ["EmbeddingIndex"]

Id = Union[int, str]
_FORMAT = "ferroclip.EmbeddingIndex"
_VERSION = 1
_F16_MAX = float(np.finfo(np.float16).max)


class EmbeddingIndex:
    """Exact inner-product index of ``dim``-dimensional vectors keyed by int or str ids."""

    def __init__(self, dim: int, dtype: str = "float32") -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        self.dim = int(dim)
        self.dtype = dtype
        self._buf: np.ndarray = np.empty((0, self.dim), dtype=dtype)
        self._n = 0
        self._ids: list[Id] = []
        self._pos: dict[Id, int] = {}

    def __len__(self) -> int:
        return self._n

    @property
    def ids(self) -> list[Id]:
        return list(self._ids)

    @property
    def vectors(self) -> np.ndarray:
        """The stored rows (a read-only view; memory-mapped after ``load(mmap=True)``)."""
        v = self._buf[: self._n]
        v = v.view()
        v.flags.writeable = False
        return v

    def add(self, vectors: Any, ids: Sequence[Id]) -> None:
        """Append rows with their ids. Ids are ints or strs, unique across the index."""
        v = _matrix(vectors, "vectors")
        if v.shape[1] != self.dim:
            raise ShapeError(f"vectors has dimension {v.shape[1]}, the index has {self.dim}")
        ids = list(ids)
        if len(ids) != len(v):
            raise ShapeError(f"ids has {len(ids)} entries but vectors has {len(v)} rows")
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer, str)):
                raise TypeError(f"ids must be int or str, got {type(i).__name__}")
        ids = [int(i) if isinstance(i, np.integer) else i for i in ids]
        if len(set(ids)) != len(ids):
            raise ValueError("ids holds duplicates")
        clash = next((i for i in ids if i in self._pos), None)
        if clash is not None:
            raise ValueError(f"id {clash!r} is already in the index")
        if self.dtype == "float16" and v.size and float(np.abs(v).max()) > _F16_MAX:
            raise ValueError("vectors holds values beyond the float16 range")
        need = self._n + len(v)
        if need > len(self._buf) or not self._buf.flags.writeable:
            grown = np.empty((max(need, 2 * len(self._buf), 16), self.dim), dtype=self.dtype)
            grown[: self._n] = self._buf[: self._n]  # also detaches a memory-mapped index
            self._buf = grown
        self._buf[self._n : need] = v
        for offset, i in enumerate(ids):
            self._pos[i] = self._n + offset
        self._ids.extend(ids)
        self._n = need

    def remove(self, ids: Iterable[Id]) -> None:
        """Delete rows by id (order of the others is kept). Unknown id -> KeyError."""
        drop = set()
        for i in ids:
            if i not in self._pos:
                raise KeyError(i)
            drop.add(self._pos[i])
        if not drop:
            return
        keep = np.ones(self._n, dtype=bool)
        keep[list(drop)] = False
        self._buf = np.ascontiguousarray(self._buf[: self._n][keep])
        self._ids = [i for i, k in zip(self._ids, keep) if k]
        self._pos = {i: r for r, i in enumerate(self._ids)}
        self._n = len(self._ids)

    def search(
        self,
        queries: Any,
        k: int,
        *,
        subset: Iterable[Id] | None = None,
        num_threads: int | None = None,
    ) -> tuple[npt.NDArray[np.float32], np.ndarray]:
        """The ``k`` best rows per query: ``(scores (Q, k'), ids (Q, k'))``, best first.

        ``subset`` restricts the search to those ids (gathered into a temporary copy).
        Equal scores go to the row added earlier.
        """
        q = _to_numpy(queries, "queries")
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim == 2 and q.shape[1] != self.dim:
            raise ShapeError(f"queries has dimension {q.shape[1]}, the index has {self.dim}")
        db = self._buf[: self._n]
        rows = None
        if subset is not None:
            try:
                rows = np.array(sorted({self._pos[i] for i in subset}), dtype=np.int64)
            except KeyError as e:
                raise KeyError(f"subset names an id not in the index: {e.args[0]!r}") from None
            db = db[rows]
        scores, idx = topk(q, db, k, num_threads=num_threads)
        if rows is not None:
            idx = rows[idx]
        id_arr = self._id_array()
        return scores, id_arr[idx] if len(id_arr) else np.empty(idx.shape, dtype=id_arr.dtype)

    def _all_int(self) -> bool:
        return all(isinstance(i, int) for i in self._ids)

    def _id_array(self) -> np.ndarray:
        return np.asarray(self._ids, dtype=np.int64 if self._all_int() else object)

    def near_duplicates(
        self,
        threshold: float,
        *,
        normalize: bool = True,
        max_pairs: int = 10_000_000,
        num_threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, npt.NDArray[np.float32]]:
        """Pairs of stored rows with cosine similarity ``>= threshold``: ``(ids_a, ids_b, scores)``.

        ``ids_a[p]`` was added before ``ids_b[p]``; pairs come in that insertion order. Runs
        block by block without an ``N x N`` matrix (see :func:`ferroclip.near_duplicates`,
        which documents ``normalize`` and ``max_pairs``).
        """
        i, j, scores = near_duplicates(
            self._buf[: self._n], threshold, normalize=normalize, max_pairs=max_pairs, num_threads=_threads(num_threads)
        )
        ids = self._id_array()
        return ids[i], ids[j], scores

    def to_faiss(self) -> Any:
        """A ``faiss.IndexFlatIP`` holding the same rows; faiss row ``r`` is ``self.ids[r]``.

        Exact inner-product search in faiss gives the same neighbours (up to float rounding on
        near-ties); float16 rows are widened to float32, faiss' storage type.
        """
        faiss = _import_faiss("EmbeddingIndex.to_faiss")
        out = faiss.IndexFlatIP(self.dim)
        if self._n:
            out.add(np.ascontiguousarray(self._buf[: self._n], dtype=np.float32))
        return out

    @classmethod
    def from_faiss(cls, index: Any, ids: Sequence[Id] | None = None, *, dtype: str = "float32") -> EmbeddingIndex:
        """Copy the vectors of a faiss ``IndexFlatIP`` (optionally inside ``IndexIDMap``).

        Ids default to the ``IndexIDMap``'s ids, else to ``0..ntotal-1``. Other faiss
        indexes are refused: an L2 or compressed index does not answer the same question.
        """
        faiss = _import_faiss("EmbeddingIndex.from_faiss")
        map_ids = None
        if isinstance(index, faiss.IndexIDMap):
            map_ids = faiss.vector_to_array(index.id_map).tolist()
            index = faiss.downcast_index(index.index)
        if not isinstance(index, faiss.IndexFlat) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise TypeError(
                f"index must be a faiss IndexFlatIP (exact inner product), got {type(index).__name__}"
                + ("" if not isinstance(index, faiss.IndexFlat) else " with a non-inner-product metric")
            )
        n, dim = int(index.ntotal), int(index.d)
        vectors = index.reconstruct_n(0, n) if n else np.empty((0, dim), np.float32)
        if ids is None:
            ids = map_ids if map_ids is not None else list(range(n))
        out = cls(dim, dtype)
        out.add(vectors, ids)
        return out

    def to_parquet(self, path: str | os.PathLike[str]) -> None:
        """Write one Parquet file (``id``, ``embedding`` as a fixed-size list), atomically.

        The layout ``embed_dataset`` writes and Arrow tools read as is; ids must be all int
        or all str.
        """
        from ._index_parquet import write_vectors

        write_vectors(path, self._ids, self._buf[: self._n], self.dtype)

    @classmethod
    def from_parquet(
        cls, path: str | os.PathLike[str], *, dtype: str | None = None, column: str = "embedding"
    ) -> EmbeddingIndex:
        """Open Parquet embeddings: an ``embed_dataset`` output (its one model directory, or
        the directory itself), a folder of ``.parquet`` files or one file.

        ``column`` is the vector column: ``"text_embedding"`` opens the text vectors of an
        ``embed_dataset(..., text_column=...)`` output. Rows with ``ok = false`` (``text_ok``
        for the text column) or no vector are left out. ``dtype`` defaults to the
        stored one; with one shard in that dtype the decoded Arrow buffer is used without a
        copy (read-only, like ``load(mmap=True)``). Raises :class:`~ferroclip.DataError`
        for files without ``id``/``embedding`` columns or with duplicate ids.
        """
        from ._index_parquet import parquet_files, read_vectors

        files = parquet_files(path)
        ids, vectors, dtype = read_vectors(files, dtype, column)
        if len(set(ids)) != len(ids):
            raise DataError(f"{path}: the Parquet files hold duplicate ids")
        index = cls(vectors.shape[1], dtype)
        index._buf = vectors
        index._n = len(ids)
        index._ids = ids
        index._pos = {i: r for r, i in enumerate(ids)}
        return index

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to directory ``path``; crash-safe (the old index survives)."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        with _save_lock(root):
            name = f"vectors-{secrets.token_hex(8)}.npy"
            with atomic_write(root / name) as fh:
                np.save(fh, np.ascontiguousarray(self._buf[: self._n]), allow_pickle=False)
            meta = {
                "format": _FORMAT,
                "version": _VERSION,
                "dim": self.dim,
                "dtype": self.dtype,
                "count": self._n,
                "vectors": name,
                "ids": self._ids,
            }
            with atomic_write(root / "index.json", "w") as fh:
                json.dump(meta, fh)
            # Now unreferenced: vectors of earlier saves, and temp files of saves that were
            # killed (no other save can be running: we hold the lock).
            stale = [p for p in root.glob("vectors-*.npy") if p.name != name]
            stale += list(root.glob(".vectors-*.npy.*.tmp")) + list(root.glob(".index.json.*.tmp"))
            for old in stale:
                old.unlink(missing_ok=True)
            fsync_dir(root)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, mmap: bool = True) -> EmbeddingIndex:
        """Open an index saved by :meth:`save`; vectors are memory-mapped read-only by default."""
        root = Path(path)
        for attempt in range(3):
            meta, name = _read_meta(root)
            try:
                vectors = np.load(root / name, mmap_mode="r" if mmap else None, allow_pickle=False)
                break
            except FileNotFoundError:
                # A concurrent save replaced index.json and removed this file after we read
                # the JSON: read the new one.
                if attempt == 2:
                    raise
        index = cls(meta["dim"], meta["dtype"])
        ids = meta["ids"]
        if vectors.shape != (meta["count"], index.dim) or vectors.dtype != np.dtype(index.dtype):
            raise ValueError(f"{root / name} holds {vectors.shape} {vectors.dtype}, index.json says otherwise")
        if not isinstance(ids, list) or len(ids) != meta["count"] or len(set(ids)) != len(ids):
            raise ValueError(f"{root / 'index.json'}: ids must be {meta['count']} unique values")
        if not vectors.flags.c_contiguous:
            raise ValueError(f"{root / name} is not C-ordered")
        index._buf = vectors
        index._n = len(ids)
        index._ids = ids
        index._pos = {i: r for r, i in enumerate(ids)}
        return index


def _read_meta(root: Path) -> tuple[dict[str, Any], str]:
    try:
        meta = json.loads((root / "index.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{root / 'index.json'} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
        raise ValueError(f"{root} does not hold a version-{_VERSION} ferroclip EmbeddingIndex")
    name = meta.get("vectors")
    if not isinstance(name, str) or Path(name).name != name:
        raise ValueError(f"{root / 'index.json'} names an invalid vectors file {name!r}")
    return meta, name


@contextlib.contextmanager
def _save_lock(root: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``root/.lock`` (POSIX); released if the process dies."""
    try:
        import fcntl
    except ImportError:  # Windows: saves are not serialised
        yield
        return
    with open(root / ".lock", "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _import_faiss(what: str) -> Any:
    try:
        import faiss
    except ImportError as e:
        raise ImportError(f"{what} needs faiss, which is not installed: pip install faiss-cpu") from e
    return faiss
