"""Retrieval maths on embeddings: similarity, exact top-k, Recall@K, near duplicates, zero-shot.

The work runs in Rust without the GIL: blocked sgemm tiles, per-query heaps for top-k (the
full ``Q x N`` score matrix is never built) and a linear-time rank per query for recall.
Scores are plain dot products: L2-normalise CLIP embeddings first to get cosine similarity.

Ordering is a stable descending sort (equal scores: lower index first), i.e. numpy's
``argsort(-scores, kind="stable")`` on the scores :func:`similarity` returns.

Inputs are validated and converted here, once: numpy arrays or CPU torch tensors of any
float dtype; float64 or non-contiguous input is copied to C-contiguous float32. A float16
database is used as is (half the memory). Non-finite values are rejected by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, ParamSpec, TypeVar, cast, overload

import numpy as np
import numpy.typing as npt

from . import _native
from .errors import ShapeError

__all__ = ["class_embeddings", "near_duplicates", "recall_at_k", "similarity", "topk", "zero_shot_classify"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """numpy array from an array-like or a torch tensor (only if torch is already imported)."""
    if isinstance(x, np.ndarray):
        return x
    torch = __import__("sys").modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            raise ShapeError(f"{name} is a torch tensor on {x.device}; move it to the CPU first")
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16
            x = x.float()
        return cast("np.ndarray", x.detach().cpu().numpy())
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as e:
        raise ShapeError(f"{name} cannot be read as an array: {e}") from e


def _matrix(x: Any, name: str, *, allow_f16: bool = False, check_finite: bool = True) -> np.ndarray:
    """2-d C-contiguous float32 (or float16 when allowed) view or copy of ``x``."""
    a = _to_numpy(x, name)
    if a.ndim != 2:
        raise ShapeError(f"{name} must be 2-d (rows, dim), got shape {a.shape}")
    if a.dtype.kind not in "fiub":
        raise ShapeError(f"{name} must hold numbers, got dtype {a.dtype}")
    keep = a.dtype == np.float32 or (allow_f16 and a.dtype == np.float16)
    a = np.ascontiguousarray(a if keep else a.astype(np.float32))
    if check_finite and not np.isfinite(a).all():
        raise _non_finite(a, name)
    return a


def _non_finite(a: np.ndarray, name: str) -> ValueError:
    row = int(np.argwhere(~np.isfinite(a))[0][0])
    return ValueError(f"{name} holds NaN or Inf (first in row {row})")


def _threads(num_threads: int | None) -> int | None:
    if num_threads is not None and (isinstance(num_threads, bool) or int(num_threads) < 1):
        raise ValueError(f"num_threads must be a positive integer or None, got {num_threads!r}")
    return None if num_threads is None else int(num_threads)


def _same_dim(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ShapeError(f"{a_name} has dimension {a.shape[1]} but {b_name} has dimension {b.shape[1]}")


def _call(fn: Callable[_P, _R], named: dict[str, np.ndarray], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """Run a native call; on a non-finite score, say which argument holds the NaN/Inf.

    Large databases are not scanned up front (that would cost as much as a Q=1 search):
    the core checks every score it computes, and only a failing call pays for the scan.
    """
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        if "non-finite similarity" not in str(e):
            raise
        for name, arr in named.items():
            if not np.isfinite(arr).all():
                raise _non_finite(arr, name) from e
        raise


def similarity(a: Any, b: Any, *, num_threads: int | None = None) -> npt.NDArray[np.float32]:
    """``a @ b.T`` as float32, shape ``(len(a), len(b))``. ``b`` may be float16."""
    a_ = _matrix(a, "a", allow_f16=True)
    b_ = _matrix(b, "b", allow_f16=True, check_finite=False)
    _same_dim(a_, "a", b_, "b")
    return _call(_native.similarity, {"a": a_, "b": b_}, a_, b_, num_threads=_threads(num_threads))


def topk(
    queries: Any, database: Any, k: int, *, num_threads: int | None = None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The ``k`` highest dot-product rows of ``database`` for each query, best first.

    Returns ``(scores, indices)``: float32 and int64 of shape ``(Q, min(k, N))``. Exact (no
    approximation); ties go to the lower database index. A 1-d ``queries`` is one query
    (the result is still 2-d). ``database`` may be float16.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    q = _to_numpy(queries, "queries")
    if q.ndim == 1:
        q = q[None, :]
    q_ = _matrix(q, "queries")
    d_ = _matrix(database, "database", allow_f16=True, check_finite=False)
    _same_dim(q_, "queries", d_, "database")
    return _call(
        _native.topk, {"queries": q_, "database": d_}, q_, d_, int(k), num_threads=_threads(num_threads)
    )


@overload
def recall_at_k(
    image_emb: Any,
    text_emb: Any,
    text_to_image: Any,
    ks: Sequence[int] = ...,
    *,
    num_threads: int | None = ...,
    return_ranks: Literal[False] = ...,
) -> dict[str, float]: ...


@overload
def recall_at_k(
    image_emb: Any,
    text_emb: Any,
    text_to_image: Any,
    ks: Sequence[int] = ...,
    *,
    num_threads: int | None = ...,
    return_ranks: Literal[True],
) -> tuple[dict[str, float], npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...


@overload
def recall_at_k(
    image_emb: Any,
    text_emb: Any,
    text_to_image: Any,
    ks: Sequence[int] = ...,
    *,
    num_threads: int | None = ...,
    return_ranks: bool = ...,
) -> dict[str, float] | tuple[dict[str, float], npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...


def recall_at_k(
    image_emb: Any,
    text_emb: Any,
    text_to_image: Any,
    ks: Sequence[int] = (1, 5, 10),
    *,
    num_threads: int | None = None,
    return_ranks: bool = False,
) -> dict[str, float] | tuple[dict[str, float], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Image-to-text and text-to-image retrieval metrics, many captions per image.

    ``text_to_image[t]`` is the row of ``image_emb`` that caption ``t`` describes. Keys:
    ``"i2t_R@K"`` / ``"t2i_R@K"`` (fraction of queries whose positive ranks within K; an
    image counts if ANY of its captions does: the CLIP-paper / CLIP_benchmark definition),
    ``"i2t_mAP@K"`` / ``"t2i_mAP@K"`` (mean over queries of
    ``AP@K = sum(hits_up_to_r / (r + 1) for each positive at 0-based rank r < K) / min(K, P)``
    with P the query's number of positives; for t2i, P = 1 and this is MRR@K),
    ``"{i2t,t2i}_median_rank"`` and ``"_mean_rank"`` (1-based rank of the best positive),
    ``"i2t_skipped_images"`` (images with no caption, left out of every i2t metric;
    CLIP_benchmark would count them as misses). With ``return_ranks`` also the 0-based
    ranks per image (best caption; -1 if skipped) and per caption. Ties are ranked as a
    stable sort: equal scores with lower index come first.
    """
    img = _matrix(image_emb, "image_emb", allow_f16=True)
    txt = _matrix(text_emb, "text_emb", allow_f16=True)
    _same_dim(img, "image_emb", txt, "text_emb")
    mapping = _to_numpy(text_to_image, "text_to_image")
    if mapping.ndim != 1 or len(mapping) != len(txt):
        raise ShapeError(
            f"text_to_image must be 1-d with one entry per caption ({len(txt)}), got shape {mapping.shape}"
        )
    if mapping.size and mapping.dtype.kind not in "iu":
        raise ShapeError(f"text_to_image must hold integer image indices, got dtype {mapping.dtype}")
    if mapping.dtype.kind == "u" and mapping.size and mapping.max() > np.iinfo(np.int64).max:
        raise ValueError("text_to_image holds an index beyond int64")
    mapping = np.ascontiguousarray(mapping, dtype=np.int64)
    ks_ = [int(k) for k in ks]
    if any(k < 1 for k in ks_):
        raise ValueError(f"ks must be positive integers, got {list(ks)}")
    metrics, i2t, t2i = _native.recall_at_k(img, txt, mapping, ks_, num_threads=_threads(num_threads))
    return (metrics, i2t, t2i) if return_ranks else metrics


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Float32 rows scaled to unit L2 norm (all-zero rows stay zero)."""
    x = x.astype(np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, np.float32(1e-12)), dtype=np.float32)


def near_duplicates(
    emb: Any,
    threshold: float,
    *,
    normalize: bool = True,
    max_pairs: int = 10_000_000,
    num_threads: int | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Every pair of rows ``i < j`` whose cosine similarity is ``>= threshold``.

    For de-duplicating an image set or a caption set before training or evaluation. The
    self-join runs in Rust in L2-sized tiles, so the ``N x N`` matrix never exists; only
    the pairs found are kept, and more than ``max_pairs`` of them is an error (lower
    thresholds grow the answer quadratically). Returns ``(i, j, scores)``: int64, int64,
    float32, sorted by ``i`` then ``j``; each score equals ``similarity(e, e)[i, j]`` on the
    (normalised) rows. ``normalize=True`` scales a float32 copy of the rows to unit norm;
    pass ``False`` for embeddings that are already unit-norm (no copy; float16 kept), the
    score is then the plain dot product. Note that a row's cosine with an exact copy of
    itself may round to just below 1.0, so use a threshold such as 0.99, not 1.0.

    >>> i, j, s = near_duplicates(np.array([[1, 0], [1, 0], [0, 1]], np.float32), 0.99)
    >>> list(zip(i.tolist(), j.tolist()))
    [(0, 1)]
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise TypeError(f"threshold must be a number, got {type(threshold).__name__}")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, (int, np.integer)) or max_pairs < 0:
        raise ValueError(f"max_pairs must be a non-negative integer, got {max_pairs!r}")
    e = _matrix(emb, "emb", allow_f16=True)
    if normalize:
        e = _unit_rows(e)
    return _native.near_duplicates(e, float(threshold), max_pairs=int(max_pairs), num_threads=_threads(num_threads))


def class_embeddings(prompt_emb: Any, num_templates: int) -> npt.NDArray[np.float32]:
    """One embedding per class from ``num_templates`` prompt embeddings per class
    (class-major rows): CLIP's prompt ensembling, the normalised mean of the normalised
    prompts. ``EmbeddingModel.zero_shot`` and fine-tuning's zero-shot metric share it."""
    e = np.asarray(prompt_emb, dtype=np.float32)
    if num_templates < 1 or e.ndim != 2 or len(e) % num_templates:
        raise ShapeError(f"{len(e)} prompt rows do not split into classes of {num_templates} templates")
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), np.float32(1e-12))
    mean = e.reshape(-1, num_templates, e.shape[1]).mean(axis=1)
    return cast(npt.NDArray[np.float32], mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), np.float32(1e-12)))


def zero_shot_classify(
    image_emb: Any,
    class_emb: Any,
    labels: Sequence[str] | None = None,
    *,
    num_threads: int | None = None,
) -> npt.NDArray[np.int64] | list[str]:
    """Best class per image by cosine similarity (both sides are L2-normalised here).

    Returns class indices, or the matching ``labels`` when given. Ties go to the lower class.
    """
    img = _matrix(image_emb, "image_emb")
    cls = _matrix(class_emb, "class_emb")
    _same_dim(img, "image_emb", cls, "class_emb")
    if labels is not None and len(labels) != len(cls):
        raise ShapeError(f"labels has {len(labels)} entries but class_emb has {len(cls)} rows")
    if len(cls) == 0:
        raise ShapeError("class_emb holds no classes")
    cls = cls / np.maximum(np.linalg.norm(cls, axis=1, keepdims=True), np.float32(1e-12))
    # The image norm is positive per row, so it does not change each row's argmax.
    _, idx = topk(img, np.ascontiguousarray(cls, dtype=np.float32), 1, num_threads=num_threads)
    best = idx[:, 0]
    return [labels[i] for i in best] if labels is not None else best
