"""The output of ``embed_dataset``: a directory per model and setting, Parquet shards, a manifest.

Layout: ``OUT/<model>-<fingerprint>/shard-00000.parquet ... manifest.json``. The fingerprint
hashes the model's identity (the one :func:`ferroclip.embed_folder` keys its cache by: name,
backend, dtype, preprocessing) plus the stored dtype, the shard size and the text column
embedded (if any), so a changed model or setting gets a new directory and never mixes
vectors with an old one.

The plan is fixed before anything runs: sorted items cut into shards of ``shard_size``. Each
shard file is written atomically and carries, in its Parquet metadata, the fingerprint and a
digest of its ids. A shard whose file exists with both matching is done; everything else is
(re-)embedded. So a run killed at any point, driver or actor, loses at most the shards in
flight, and a re-run over a changed source re-embeds only the shards whose ids changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from .._atomic import atomic_write
from ..errors import DataError
from .sources import Item

__all__ = ["MANIFEST", "OutputDir", "ShardPlan", "find_output_dir", "shard_fingerprint"]

MANIFEST = "manifest.json"
_FORMAT = "ferroclip.embed_dataset"
_VERSION = 1
_META = b"ferroclip"  # Parquet key-value metadata key holding our JSON


def shard_fingerprint(identity: dict[str, Any], *, dtype: str, shard_size: int, text_column: str | None = None) -> str:
    """What decides the vectors and the layout, hashed: a different value, a different directory.

    ``text_column`` enters the key only when set, so image-only outputs keep the directory
    they had before text embedding existed."""
    key: dict[str, Any] = {"model": identity, "dtype": dtype, "shard_size": shard_size}
    if text_column is not None:
        key["text_column"] = text_column
    return hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=6).hexdigest()


@dataclass(frozen=True)
class ShardPlan:
    """Shard ``index`` holds ``items`` (sorted ids); ``digest`` names exactly that id list."""

    index: int
    items: tuple[Item, ...]
    digest: str

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}.parquet"


def plan_shards(items: list[Item], shard_size: int) -> list[ShardPlan]:
    plans = []
    for index, start in enumerate(range(0, len(items), shard_size)):
        chunk = tuple(items[start : start + shard_size])
        h = hashlib.blake2b(digest_size=12)
        for it in chunk:
            h.update(it.id.encode("utf-8", "surrogatepass") + b"\0")
        plans.append(ShardPlan(index, chunk, h.hexdigest()))
    return plans


class OutputDir:
    """One model-and-setting directory: which shards are done, writing shards and the manifest."""

    def __init__(
        self,
        out: str | os.PathLike[str],
        model_spec: str,
        identity: dict[str, Any],
        *,
        dtype: str,
        shard_size: int,
        text_column: str | None = None,
    ):
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.fingerprint = shard_fingerprint(identity, dtype=dtype, shard_size=shard_size, text_column=text_column)
        self.text_column = text_column
        name = identity.get("model", "model")
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name if os.path.isabs(name) else name)
        self.root = Path(out) / f"{slug[:60]}-{self.fingerprint}"
        self.model_spec = model_spec
        self.identity = identity
        self.dtype = dtype
        self.shard_size = shard_size
        self.dim = int(identity["dim"])

    def is_done(self, plan: ShardPlan) -> bool:
        """The shard's file exists and was written for this fingerprint and these ids."""
        import pyarrow.parquet as pq

        path = self.root / plan.name
        if not path.is_file():
            return False
        try:
            meta = json.loads((pq.read_schema(path).metadata or {}).get(_META, b"{}"))
        except (OSError, ValueError):  # unreadable: embed it again
            return False
        return bool(meta.get("fingerprint") == self.fingerprint and meta.get("ids_digest") == plan.digest)

    def write_shard(
        self,
        plan: ShardPlan,
        embeddings: npt.NDArray[np.float32],
        ok: npt.NDArray[np.bool_],
        errors: list[str | None],
        run_id: str,
        text: tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_], list[str | None]] | None = None,
    ) -> None:
        """Write one finished shard (rows in plan order) atomically; failed rows have a null embedding.

        ``text`` is ``(text_embeddings, text_ok, text_errors)`` when a text column is embedded:
        it adds ``text``, ``text_embedding`` (null where ``text_ok`` is false), ``text_ok`` and
        ``text_error``, independent of the image columns."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        n = len(plan.items)
        if embeddings.shape != (n, self.dim) or len(ok) != n or len(errors) != n:
            raise DataError(f"{plan.name}: {n} items planned but {embeddings.shape} embeddings came back")
        if (text is None) != (self.text_column is None):
            raise ValueError(f"{plan.name}: text columns given {text is not None}, text_column={self.text_column!r}")
        emb = self._vectors(embeddings, ok)
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "model": self.model_spec,
            "identity": self.identity,
            "fingerprint": self.fingerprint,
            "shard": plan.index,
            "ids_digest": plan.digest,
            "run": run_id,
            "text_column": self.text_column,
        }
        columns: dict[str, Any] = {
            "id": pa.array([it.id for it in plan.items], pa.string()),
            "path": pa.array([it.path for it in plan.items], pa.string()),
            "embedding": emb,
            "ok": pa.array(np.asarray(ok, dtype=bool)),
            "error": pa.array(errors, pa.string()),
        }
        dictionary = ["id", "path", "error"]
        if text is not None:
            temb, tok, terrors = text
            if temb.shape != (n, self.dim) or len(tok) != n or len(terrors) != n:
                raise DataError(f"{plan.name}: {n} items planned but {temb.shape} text embeddings came back")
            columns["text"] = pa.array([it.text for it in plan.items], pa.string())
            columns["text_embedding"] = self._vectors(temb, tok)
            columns["text_ok"] = pa.array(np.asarray(tok, dtype=bool))
            columns["text_error"] = pa.array(terrors, pa.string())
            dictionary.append("text_error")
        table = pa.table(columns).replace_schema_metadata({_META: json.dumps(meta).encode()})
        with atomic_write(self.root / plan.name) as fh:
            pq.write_table(table, fh, use_dictionary=dictionary, compression="zstd")

    def _vectors(self, embeddings: npt.NDArray[np.float32], ok: npt.NDArray[np.bool_]) -> Any:
        """A fixed-size list column in the stored dtype, null where ``ok`` is false."""
        import pyarrow as pa

        values = pa.array(np.ascontiguousarray(embeddings, dtype=self.dtype).reshape(-1))
        return pa.FixedSizeListArray.from_arrays(values, self.dim, mask=pa.array(~np.asarray(ok, dtype=bool)))

    def write_manifest(self, plans: list[ShardPlan], *, runs: list[dict[str, Any]], complete: bool) -> None:
        manifest = {
            "format": _FORMAT,
            "version": _VERSION,
            "model": self.model_spec,
            "identity": self.identity,
            "fingerprint": self.fingerprint,
            "dtype": self.dtype,
            "dim": self.dim,
            "shard_size": self.shard_size,
            "text_column": self.text_column,
            "num_items": sum(len(p.items) for p in plans),
            "complete": complete,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "shards": [{"file": p.name, "count": len(p.items), "ids_digest": p.digest} for p in plans],
            "runs": runs,
        }
        with atomic_write(self.root / MANIFEST, "w") as fh:
            json.dump(manifest, fh, indent=1)

    def read_runs(self) -> list[dict[str, Any]]:
        try:
            return list(json.loads((self.root / MANIFEST).read_text(encoding="utf-8")).get("runs", []))
        except (OSError, ValueError):
            return []

    def remove_stale(self, plans: list[ShardPlan]) -> None:
        """Drop shard files the plan no longer has (a source that shrank) and temp files of killed runs."""
        keep = {p.name for p in plans}
        for f in self.root.glob("shard-*.parquet"):
            if f.name not in keep:
                f.unlink(missing_ok=True)
        for f in self.root.glob(".shard-*.parquet.*.tmp"):
            f.unlink(missing_ok=True)


def find_output_dir(path: str | os.PathLike[str]) -> Path:
    """The directory holding the manifest: ``path`` itself, or its only model subdirectory."""
    root = Path(path)
    if (root / MANIFEST).is_file():
        return root
    found = sorted(p.parent for p in root.glob(f"*/{MANIFEST}"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{root}: no {MANIFEST} here or one level down (not an embed_dataset output)", str(root))
    raise DataError(
        f"{root} holds embeddings of {len(found)} models or settings; pick one: " + ", ".join(p.name for p in found),
        str(root),
    )


def read_manifest(root: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{root / MANIFEST}: unreadable manifest ({e})", str(root / MANIFEST)) from e
    if manifest.get("format") != _FORMAT:
        raise DataError(f"{root / MANIFEST}: not an embed_dataset manifest", str(root / MANIFEST))
    return cast("dict[str, Any]", manifest)
