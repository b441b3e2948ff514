"""``embed_dataset``: embed a large image collection on a Ray cluster (or a laptop's local Ray).

Ray Data does the scheduling: the items of unfinished shards become a dataset, and
``map_batches`` runs :class:`ImageEmbedder`, an actor pool where each actor loads the model
once and embeds with :meth:`EmbeddingModel.encode_images`, the very path
:func:`ferroclip.embed_folder` takes (Rust preprocessing, GIL released), so a row's vector
is the one ``embed_folder`` gives for that file. Results stream back to the driver, which
writes each shard as soon as all its rows have arrived (see :mod:`.shards` for why that makes
a run resumable). Only vectors travel back: actors read files and URLs themselves. With a ``text_column`` the
actor also embeds each row's text with :meth:`EmbeddingModel.encode_texts`.

A killed actor (OOM killer, a lost node, a segfault) is restarted by Ray and its batch
retried, at most :data:`ACTOR_RESTARTS` times per actor and :data:`TASK_RETRIES` times per
batch (Ray Data's default is unbounded, which turns an image that reliably crashes the
decoder into a job that never ends); past that the job fails, and a re-run embeds only the
shards not written yet.
"""

from __future__ import annotations

import math
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..cache import _model_identity, failure_reasons
from .shards import OutputDir, ShardPlan, plan_shards
from .sources import DatasetSource, collect_items

__all__ = ["ACTOR_RESTARTS", "TASK_RETRIES", "EmbedSummary", "ImageEmbedder", "embed_dataset", "import_ray"]

#: How often Ray restarts one dead actor, and retries one batch, before the job fails.
ACTOR_RESTARTS = 3
TASK_RETRIES = 3

# Tests only: a file path; while that file exists, the first actor to reach the batch number
# it holds renames it (so this fires once) and SIGKILLs itself. See tests/test_distributed_embed.py.
_KILL_HOOK_ENV = "_FERROCLIP_TEST_KILL_ACTOR_FILE"


def import_ray() -> Any:
    """``ray`` with Ray Data, or an ImportError naming the extra that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "ferroclip.distributed needs Ray Data, which is not installed: pip install 'ferroclip[ray]'"
        ) from e
    return ray


@dataclass
class EmbedSummary:
    """What one ``embed_dataset`` call did. ``out_dir`` is what ``EmbeddingIndex.from_parquet`` reads."""

    out_dir: Path
    num_items: int
    shards_total: int
    shards_embedded: int  # written by this run
    shards_skipped: int  # already done by an earlier run
    images_embedded: int  # rows written by this run, failures included
    images_failed: int  # rows of this run with ok=false
    seconds: float
    run_id: str

    @property
    def images_per_second(self) -> float:
        return self.images_embedded / self.seconds if self.seconds > 0 else 0.0


class ImageEmbedder:
    """The Ray Data actor: holds one model for its lifetime and embeds batches of rows."""

    def __init__(
        self, model: str, load_kwargs: dict[str, Any], batch_size: int, num_threads: int | None, texts: bool = False
    ) -> None:
        from ..models import load_model

        if num_threads is not None:
            try:
                import torch

                torch.set_num_threads(num_threads)
            except ImportError:
                pass
        self.model = load_model(model, **load_kwargs)
        self.batch_size = batch_size
        self.texts = texts
        self.batches = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches += 1
        _maybe_kill_for_test(self.batches)
        images = [bytes(d) if has else str(p) for p, d, has in zip(batch["path"], batch["data"], batch["has_data"])]
        res = self.model.encode_images(images, batch_size=self.batch_size, progress=False)
        reasons = failure_reasons(res)
        out = {
            "shard": batch["shard"],
            "pos": batch["pos"],
            "ok": res.ok,
            "error": np.array([reasons.get(i, "failed") for i in range(len(images))], dtype=object),
            "embedding": res.embeddings,
        }
        if self.texts:
            out.update(self._texts([str(t) for t in batch["text"]]))
        return out

    def _texts(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Text embeddings of the rows; a missing or empty text is that row's ``text_ok=false``."""
        ok = np.array([bool(t.strip()) for t in texts], dtype=bool)
        emb = np.zeros((len(texts), self.model.dim), np.float32)
        if ok.any():
            emb[ok] = self.model.encode_texts([t for t, good in zip(texts, ok) if good], batch_size=self.batch_size)
        errors = np.array([None if good else "no text for this item" for good in ok], dtype=object)
        return {"text_ok": ok, "text_error": errors, "text_embedding": emb}


def _maybe_kill_for_test(batches: int) -> None:
    trigger = os.environ.get(_KILL_HOOK_ENV)
    if not trigger or not os.path.exists(trigger):
        return
    try:
        at = int(Path(trigger).read_text(encoding="utf-8").strip() or "1")
    except (OSError, ValueError):
        return
    if batches < at:
        return
    try:
        os.rename(trigger, trigger + ".fired")  # only one actor wins, once
    except OSError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def embed_dataset(
    model: str | os.PathLike[str],
    source: DatasetSource,
    out: str | os.PathLike[str],
    *,
    num_actors: int | None = None,
    batch_size: int = 64,
    num_gpus_per_actor: float = 0,
    num_cpus_per_actor: float = 1,
    address: str | None = None,
    dtype: str = "float32",
    shard_size: int = 1000,
    column: str | None = None,
    text_column: str | None = None,
    load_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> EmbedSummary:
    """Embed every image of ``source`` with ``model`` into Parquet shards under ``out``.

    Re-running with the same arguments embeds only the shards not finished yet (a crash, a
    killed driver or actor loses at most the shards in flight); a different model, model
    dtype, preprocessing, ``dtype`` or ``shard_size`` writes to another subdirectory of
    ``out``. A file that cannot be read or decoded is a row with ``ok=false`` and the reason
    in ``error``, never a failed job.

    With ``text_column`` each item's text is embedded too (``encode_texts``, so a row's
    ``text_embedding`` is ``model.encode_texts([text])[0]``) into the columns ``text``,
    ``text_embedding``, ``text_ok`` and ``text_error``; a missing or empty text is a row with
    ``text_ok=false``, independent of the image's ``ok``. Search the texts with
    ``EmbeddingIndex.from_parquet(out, column="text_embedding")``.

    Args:
        model: what :func:`ferroclip.load_model` takes (preset, hub id, checkpoint dir);
            each actor loads it once, on CUDA when ``num_gpus_per_actor > 0``, else on CPU.
        source: a folder (recursive; ids are relative paths, as in ``embed_folder``), a
            ``.txt``/``.csv``/``.tsv``/``.parquet`` list of paths or URLs (``column`` names
            the column), webdataset ``.tar`` shards or ``pipe:`` URLs, a glob, a list of
            paths/URLs, or a :class:`~ferroclip.data.CaptionDataset` (one row per image).
        num_actors: actors in the pool (default: as many as the cluster's GPUs, or CPUs,
            allow at ``num_gpus_per_actor`` / ``num_cpus_per_actor`` each).
        address: ``None`` joins the Ray already initialised in this process or starts a
            local one (stopped again at the end); ``"auto"`` or ``"ray://host:10001"`` joins
            a cluster. On a cluster ``out`` is written by the driver.
        dtype: the stored embedding type, ``"float32"`` or ``"float16"``.
        shard_size: items per output shard: the unit of resumption.
        text_column: the text to embed as well: a CSV/TSV/Parquet column, ``"caption"`` for
            a caption dataset, or the webdataset member extension (``"txt"``). Folders and
            ``.txt`` lists have none (:class:`~ferroclip.DataError`).
        load_kwargs: more :func:`load_model` arguments (``backend``, ``dtype``, ...).

    Example::

        summary = embed_dataset("clip-vit-b-32", "photos/", "out/", num_actors=2)
        index = ferroclip.EmbeddingIndex.from_parquet(summary.out_dir)
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ray = import_ray()
    t0 = time.perf_counter()
    spec = os.fspath(model)
    kwargs = dict(load_kwargs or {})
    kwargs.setdefault("device", "auto" if num_gpus_per_actor > 0 else "cpu")
    items = collect_items(source, column=column, text_column=text_column)
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        identity = _identity(ray, spec, kwargs, num_gpus_per_actor)
        outdir = OutputDir(out, spec, identity, dtype=dtype, shard_size=shard_size, text_column=text_column)
        plans = plan_shards(items, shard_size)
        todo = [p for p in plans if not outdir.is_done(p)]
        run_id = uuid.uuid4().hex[:12]
        runs = outdir.read_runs() + [{"run": run_id, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "todo": [p.index for p in todo]}]
        outdir.root.mkdir(parents=True, exist_ok=True)
        outdir.write_manifest(plans, runs=runs, complete=False)
        failed = 0
        if todo:
            actors = num_actors or _default_actors(ray, num_gpus_per_actor, num_cpus_per_actor)
            threads = None if num_gpus_per_actor > 0 else max(1, int(num_cpus_per_actor))
            ds = _map_batches(
                ray,
                _dataset(ray, todo, batch_size),
                ImageEmbedder,
                fn_constructor_kwargs=dict(
                    model=spec, load_kwargs=kwargs, batch_size=batch_size, num_threads=threads, texts=text_column is not None
                ),
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=num_cpus_per_actor,
                num_gpus=num_gpus_per_actor or None,
            )
            total = sum(len(p.items) for p in todo)
            with tqdm(total=total, unit="img", desc="embed dataset", disable=not progress) as bar:
                failed = _collect(ds, todo, outdir, run_id, bar)
        outdir.remove_stale(plans)
        outdir.write_manifest(plans, runs=runs, complete=True)
    finally:
        if started:
            ray.shutdown()
    done = sum(len(p.items) for p in todo)
    return EmbedSummary(
        outdir.root, len(items), len(plans), len(todo), len(plans) - len(todo), done, failed, time.perf_counter() - t0, run_id
    )


def _map_batches(ray: Any, ds: Any, fn: Any, **kwargs: Any) -> Any:
    """``ds.map_batches`` with the actors' restart and retry budget bounded.

    Ray Data takes ``max_restarts``/``max_task_retries`` only as free ``ray_remote_args``,
    deprecated since Ray 2.60 (with no named replacement yet) and announced for removal; on a
    Ray whose ``map_batches`` no longer takes them, Ray Data's own default applies (restart
    and retry without bound)."""
    import inspect
    import warnings

    params = inspect.signature(ds.map_batches).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return ds.map_batches(fn, **kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*ray_remote_args.*deprecated", category=Warning)
        return ds.map_batches(fn, **kwargs, max_restarts=ACTOR_RESTARTS, max_task_retries=TASK_RETRIES)


def _identity(ray: Any, spec: str, kwargs: dict[str, Any], num_gpus: float) -> dict[str, Any]:
    """The model identity (as ``embed_folder`` keys its cache) of the model the actors will load.

    On CPU the driver loads it itself; with GPUs a one-off task loads it where actors run,
    so the dtype chosen there (float16 on CUDA) is the one recorded.
    """

    def load() -> dict[str, Any]:
        from ..models import load_model

        return _model_identity(load_model(spec, **kwargs))

    if num_gpus <= 0:
        return load()
    return cast("dict[str, Any]", ray.get(ray.remote(num_gpus=num_gpus)(load).remote()))


def _default_actors(ray: Any, num_gpus: float, num_cpus: float) -> int:
    res = ray.cluster_resources()
    if num_gpus > 0:
        return max(1, int(res.get("GPU", 0) // num_gpus))
    return max(1, int(res.get("CPU", 1) // max(num_cpus, 1e-9)))


def _dataset(ray: Any, todo: list[ShardPlan], batch_size: int) -> Any:
    rows = [
        {
            "shard": p.index,
            "pos": j,
            "path": it.path,
            "data": it.data if it.data is not None else b"",
            "has_data": it.data is not None,
            "text": it.text or "",
        }
        for p in todo
        for j, it in enumerate(p.items)
    ]
    return ray.data.from_items(rows, override_num_blocks=min(max(1, math.ceil(len(rows) / batch_size)), 4096))


class _OpenShard:
    """The rows of one shard received so far, in plan order."""

    def __init__(self, n: int, dim: int, texts: bool) -> None:
        self.emb = np.zeros((n, dim), np.float32)
        self.ok = np.zeros(n, bool)
        self.errors: list[str | None] = [None] * n
        self.text_emb = np.zeros((n, dim) if texts else (0, dim), np.float32)
        self.text_ok = np.zeros(n if texts else 0, bool)
        self.text_errors: list[str | None] = [None] * (n if texts else 0)
        self.texts = texts
        self.seen = 0

    def add(self, batch: dict[str, np.ndarray], rows: np.ndarray) -> None:
        pos = batch["pos"][rows]
        self.emb[pos] = batch["embedding"][rows]
        self.ok[pos] = batch["ok"][rows]
        for r, p in zip(rows, pos):
            self.errors[int(p)] = None if batch["ok"][r] else str(batch["error"][r])
        if self.texts:
            self.text_emb[pos] = batch["text_embedding"][rows]
            self.text_ok[pos] = batch["text_ok"][rows]
            for r, p in zip(rows, pos):
                self.text_errors[int(p)] = None if batch["text_ok"][r] else str(batch["text_error"][r])
        self.seen += len(rows)


def _collect(ds: Any, todo: list[ShardPlan], outdir: OutputDir, run_id: str, bar: Any) -> int:
    """Gather streamed rows per shard and write each shard the moment it is complete."""
    by_index = {p.index: p for p in todo}
    texts = outdir.text_column is not None
    open_shards: dict[int, _OpenShard] = {}
    failed = 0
    t0 = time.perf_counter()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        for shard in np.unique(batch["shard"]):
            plan = by_index[int(shard)]
            if int(shard) not in open_shards:
                open_shards[int(shard)] = _OpenShard(len(plan.items), outdir.dim, texts)
            acc = open_shards[int(shard)]
            rows = np.flatnonzero(batch["shard"] == shard)
            acc.add(batch, rows)
            if acc.seen == len(plan.items):
                text = (acc.text_emb, acc.text_ok, acc.text_errors) if texts else None
                outdir.write_shard(plan, acc.emb, acc.ok, acc.errors, run_id, text=text)
                failed += int((~acc.ok).sum())
                del open_shards[int(shard)]
        bar.update(len(batch["shard"]))
        bar.set_postfix_str(f"{bar.n / max(time.perf_counter() - t0, 1e-9):.1f} img/s", refresh=False)
    if open_shards:  # every row is accounted for or Ray raised; anything else is a bug
        raise RuntimeError(f"shards {sorted(open_shards)} did not receive all their rows")
    return failed
