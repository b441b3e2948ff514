"""`embed_folder`: embed a folder of images once, then only what changed.

The cache is a directory per model (keyed by the model's name, backend, dtype and
preprocessing, so a different model never reuses stale vectors) holding *parts*: an
``.npy`` of embeddings and a ``.json`` listing, per row, the file's relative path, size,
mtime and content hash. A part counts only once its JSON exists, and both are written
atomically, JSON last; a run killed at any moment therefore keeps every finished part and
the next run embeds only what is missing. Embeddings are found by content hash, so a
renamed or copied file is not embedded again; size + mtime spare re-hashing unchanged
files. Files that failed are recorded with their hash and reported again (not retried)
until they change.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ._atomic import atomic_write
from .errors import ConfigError

__all__ = [
    "IMAGE_SUFFIXES",
    "OTHER_IMAGE_SUFFIXES",
    "FolderEmbeddings",
    "default_cache_dir",
    "embed_folder",
    "list_images",
    "scan_folder",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".hif"})
#: Image formats by name that the core does not decode (HEIF/HEIC is in ``IMAGE_SUFFIXES``:
#: the core reads it when built with libheif, the default). They are handed to the decoder anyway, so each one is embedded or listed as a failure with the
#: decoder's reason; none is skipped without a word.
OTHER_IMAGE_SUFFIXES = frozenset(
    {
        ".avif", ".jxl", ".jp2", ".j2k", ".jpe", ".jfif", ".psd", ".ico", ".svg",
        ".tga", ".qoi", ".pnm", ".pbm", ".pgm", ".ppm", ".exr", ".hdr", ".dds",
        ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2",
    }
)
_FORMAT = 1


@dataclass
class FolderEmbeddings:
    """Embeddings of every readable image under ``root``, rows in ``paths`` order (sorted)."""

    root: Path
    paths: list[str]
    embeddings: npt.NDArray[np.float32]
    errors: dict[str, str] = field(default_factory=dict)
    #: Files under ``root`` that are not images by name (``notes.txt``): not embedded, listed.
    skipped: list[str] = field(default_factory=list)
    embedded: int = 0  # computed in this run
    reused: int = 0  # taken from the cache
    cache_dir: Path | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def search(self, query: npt.NDArray[np.float32], k: int = 10) -> list[tuple[str, float]]:
        """Top-``k`` files for one embedding (cosine, both sides normalised), best first."""
        from .retrieval import topk

        if len(self.paths) == 0:
            return []
        q = np.asarray(query, dtype=np.float32).reshape(1, -1)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        scores, idx = topk(q, self.embeddings, min(k, len(self.paths)))
        return [(self.paths[i], float(s)) for i, s in zip(idx[0], scores[0])]


def default_cache_dir() -> Path:
    """``$FERROCLIP_CACHE`` or ``~/.cache/ferroclip/embeddings``."""
    env = os.environ.get("FERROCLIP_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ferroclip" / "embeddings"


def scan_folder(
    root: str | os.PathLike[str], *, recursive: bool = True, exclude: Path | None = None
) -> tuple[list[Path], list[Path]]:
    """``(images, others)`` under ``root``, sorted: files that are images by suffix (those
    the core reads and :data:`OTHER_IMAGE_SUFFIXES`), and every other regular file.
    Hidden files and directories and ``exclude`` are left out."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    images: list[Path] = []
    others: list[Path] = []
    walker = os.walk(root) if recursive else [(str(root), [], os.listdir(root))]
    for dirpath, dirnames, filenames in walker:
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (exclude is None or Path(dirpath, d) != exclude))
        for name in filenames:
            p = Path(dirpath, name)
            if name.startswith(".") or not p.is_file():
                continue
            suffix = p.suffix.lower()
            (images if suffix in IMAGE_SUFFIXES or suffix in OTHER_IMAGE_SUFFIXES else others).append(p)
    return sorted(images), sorted(others)


def list_images(root: str | os.PathLike[str], *, recursive: bool = True, exclude: Path | None = None) -> list[Path]:
    """Image files under ``root`` by suffix, sorted, hidden directories and ``exclude`` skipped."""
    return scan_folder(root, recursive=recursive, exclude=exclude)[0]


def _file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _model_identity(model: Any) -> dict[str, Any]:
    from .models.onnx_backend import preprocess_to_dict

    cfg = preprocess_to_dict(model.preprocess_config)
    cfg.pop("name", None)
    # How the file is read changes the vectors too. Recorded only when not the default,
    # so caches written before these options existed keep their keys.
    if cfg.get("alpha") == "white":
        cfg.pop("alpha")
    alpha = getattr(model.preprocessor, "alpha", "white")
    if alpha != model.preprocess_config.alpha:
        cfg["alpha_override"] = alpha
    if not getattr(model.preprocessor, "exif_transpose", True):
        cfg["exif_transpose"] = False
    ident = {
        "format": _FORMAT,
        "model": model.name,
        "family": model.family,
        "backend": model.backend.name,
        "dtype": model.dtype,
        "dim": model.dim,
        "fast": model.preprocessor.fast,
        "preprocess": cfg,
    }
    stored: dict[str, Any] = json.loads(json.dumps(ident))  # the form it has once stored (tuples become lists)
    return stored


def failure_reasons(res: Any) -> dict[int, str]:
    """Row index -> reason (without the file name) for the failed rows of an ``EncodeResult``.

    Shared by ``embed_folder`` and ``ferroclip.distributed`` so both record the same text.
    """
    return {e.index: getattr(e, "reason", str(e)) for e in res.errors if getattr(e, "index", None) is not None}


def model_cache_dir(model: Any, cache_dir: str | os.PathLike[str] | None) -> Path:
    ident = _model_identity(model)
    digest = hashlib.blake2b(json.dumps(ident, sort_keys=True).encode(), digest_size=6).hexdigest()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model.name).name if os.path.isabs(model.name) else model.name)
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / f"{slug[:60]}-{digest}"


class _Store:
    """The committed parts of one model's cache."""

    def __init__(self, root: Path, identity: dict[str, Any]) -> None:
        self.root = root
        self.parts = root / "parts"
        self.parts.mkdir(parents=True, exist_ok=True)
        meta = root / "model.json"
        if meta.is_file():
            stored = json.loads(meta.read_text(encoding="utf-8"))
            if stored != identity:
                raise ConfigError(
                    f"{root} caches embeddings of another model or setting ({stored.get('model')!r}, "
                    f"dim {stored.get('dim')}); use another cache directory"
                )
        else:
            with atomic_write(meta) as fh:
                fh.write(json.dumps(identity, indent=2, sort_keys=True).encode())
        self.vectors: dict[str, np.ndarray] = {}  # content hash -> embedding
        self.stats: dict[str, dict[str, Any]] = {}  # rel path -> {size, mtime_ns, hash}
        self.failures: dict[str, str] = {}  # content hash -> reason
        self.part_names: list[str] = []
        for js in sorted(self.parts.glob("part-*.json")):
            self._load_part(js)

    def _load_part(self, js: Path) -> None:
        try:
            meta = json.loads(js.read_text(encoding="utf-8"))
            rows = meta["rows"]
            emb = np.load(js.with_suffix(".npy"), allow_pickle=False) if rows else np.zeros((0, 0), np.float32)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"{js}: unreadable cache part ({exc}); delete it to re-embed its files") from None
        if len(emb) != len(rows):
            raise ConfigError(f"{js}: {len(rows)} rows listed but {len(emb)} embeddings stored")
        for row, rec in enumerate(rows):
            self.vectors[rec["hash"]] = emb[row]
            self.stats[rec["path"]] = rec
        for rec in meta.get("failed", []):
            self.failures[rec["hash"]] = rec["reason"]
            self.stats[rec["path"]] = rec
        self.part_names.append(js.stem)

    def commit(self, rows: list[dict[str, Any]], emb: np.ndarray, failed: list[dict[str, Any]]) -> str:
        name = f"part-{len(self.part_names):06d}-{uuid.uuid4().hex[:8]}"
        if rows:
            with atomic_write(self.parts / f"{name}.npy") as fh:
                np.save(fh, np.ascontiguousarray(emb, dtype=np.float32))
        with atomic_write(self.parts / f"{name}.json") as fh:
            fh.write(json.dumps({"rows": rows, "failed": failed}).encode())
        for row, rec in enumerate(rows):
            self.vectors[rec["hash"]] = emb[row]
            self.stats[rec["path"]] = rec
        for rec in failed:
            self.failures[rec["hash"]] = rec["reason"]
            self.stats[rec["path"]] = rec
        self.part_names.append(name)
        return name

    def compact(self, rows: list[dict[str, Any]], failed: list[dict[str, Any]]) -> None:
        """Rewrite the cache as one part holding exactly ``rows`` (the current files)."""
        old = list(self.part_names)
        emb = np.stack([self.vectors[r["hash"]] for r in rows]) if rows else np.zeros((0, 0), np.float32)
        keep = self.commit(rows, emb, failed)
        for name in old:  # the new part is committed first: a crash here leaves duplicates, not gaps
            if name != keep:
                for suffix in (".json", ".npy"):
                    (self.parts / f"{name}{suffix}").unlink(missing_ok=True)
        self.part_names = [keep]


def embed_folder(
    model: Any,
    folder: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    batch_size: int = 64,
    commit_every: int = 1024,
    recursive: bool = True,
    retry_failed: bool = False,
    force_recompute: bool = False,
    progress: bool | None = None,
) -> FolderEmbeddings:
    """Embed every image under ``folder`` with ``model``, reusing the on-disk cache.

    Args:
        model: an :class:`~ferroclip.models.EmbeddingModel`.
        cache_dir: where caches live (default ``~/.cache/ferroclip/embeddings``, or
            ``$FERROCLIP_CACHE``); each model and setting gets its own ``<model>-<hash>``
            directory inside.
        commit_every: images embedded between commits: at most this much work is redone
            after a crash.
        retry_failed: also retry files that failed before and did not change since.
        force_recompute: embed every file again, ignoring (and then replacing) the cache;
            seed 000's ``force_recompute``, for when the cached vectors are in doubt.

    Returns:
        :class:`FolderEmbeddings` over the readable images (unit-norm rows); unreadable
        ones, and images of formats the core does not decode (AVIF, JPEG XL, ...), are in
        ``errors`` (path -> reason); files that are not images by name are in ``skipped``.
    """
    root = Path(folder).resolve()
    store_dir = model_cache_dir(model, cache_dir)
    store = _Store(store_dir, _model_identity(model))
    files, others = scan_folder(root, recursive=recursive, exclude=store_dir)
    rels = [f.relative_to(root).as_posix() for f in files]
    skipped = [f.relative_to(root).as_posix() for f in others]

    todo: list[tuple[str, Path, dict[str, Any]]] = []
    current: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    failed_recs: dict[str, dict[str, Any]] = {}
    reused = 0
    for rel, path in zip(rels, files):
        try:
            st = path.stat()
            rec = None if force_recompute else store.stats.get(rel)
            if rec is not None and rec["size"] == st.st_size and rec["mtime_ns"] == st.st_mtime_ns:
                digest = rec["hash"]
            else:
                digest = _file_hash(path)
        except OSError as exc:
            errors[rel] = f"cannot read: {exc.strerror or exc}"
            continue
        rec = {"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "hash": digest}
        if digest in store.vectors and not force_recompute:
            current[rel] = rec
            reused += 1
        elif digest in store.failures and not (retry_failed or force_recompute):
            errors[rel] = store.failures[digest]
            failed_recs[rel] = dict(rec, reason=errors[rel])
        else:
            todo.append((rel, path, rec))

    embedded = 0
    for start in range(0, len(todo), commit_every):
        chunk = todo[start : start + commit_every]
        res = model.encode_images([str(p) for _, p, _ in chunk], batch_size=batch_size, progress=progress)
        reasons = failure_reasons(res)
        good = [i for i in range(len(chunk)) if res.ok[i]]
        rows = [chunk[i][2] for i in good]
        failed = [dict(chunk[i][2], reason=reasons.get(i, "failed")) for i in range(len(chunk)) if not res.ok[i]]
        store.commit(rows, res.embeddings[good], failed)
        for rec in rows:
            current[rec["path"]] = rec
        for rec in failed:
            errors[rec["path"]] = rec["reason"]
            failed_recs[rec["path"]] = rec
        embedded += len(rows)

    ordered = [rel for rel in rels if rel in current]
    rows = [current[rel] for rel in ordered]
    live_failed = [failed_recs[rel] for rel in rels if rel in failed_recs]
    stale = len(store.stats) != len(rows) + len(live_failed)
    if todo or stale or len(store.part_names) > 1:
        store.compact(rows, live_failed)
    emb = np.stack([store.vectors[r["hash"]] for r in rows]).astype(np.float32) if rows else np.zeros((0, model.dim), np.float32)
    return FolderEmbeddings(
        root, ordered, emb, errors, skipped=skipped, embedded=embedded, reused=reused, cache_dir=store_dir
    )

