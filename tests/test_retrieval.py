"""Retrieval maths against numpy: similarity, exact top-k, Recall@K / mAP@K (and CLIP_benchmark's
definition), near duplicates, EmbeddingIndex (save/load, a kill during save, faiss interop).

Small-integer embeddings make every dot product exact in float32, so results must equal
numpy's bit for bit and ties are frequent (they decide the order). Real-valued inputs are
checked against a stable argsort of ferroclip's own similarity matrix.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ferroclip
from ferroclip import EmbeddingIndex, ShapeError, near_duplicates, recall_at_k, similarity, topk, zero_shot_classify

FAST = settings(max_examples=40, deadline=None)


@st.composite
def int_matrices(draw, max_rows=40, max_dim=9, levels=3):
    """Two integer-valued float32 matrices with the same dim (few values -> many ties)."""
    dim = draw(st.integers(0, max_dim))
    q = draw(st.integers(0, 6))
    n = draw(st.integers(0, max_rows))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    a = rng.integers(-levels, levels + 1, size=(q, dim)).astype(np.float32)
    b = rng.integers(-levels, levels + 1, size=(n, dim)).astype(np.float32)
    return a, b


def stable_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, idx, axis=1), idx


@FAST
@given(int_matrices(), st.integers(1, 3))
def test_similarity_equals_numpy_exactly(ab, threads):
    a, b = ab
    np.testing.assert_array_equal(similarity(a, b, num_threads=threads), a @ b.T)


@FAST
@given(int_matrices(), st.integers(0, 50), st.integers(1, 3))
def test_topk_equals_stable_argsort_with_ties(ab, k, threads):
    q, d = ab
    scores, idx = topk(q, d, k, num_threads=threads)
    ref_s, ref_i = stable_topk(q @ d.T, k)
    assert idx.dtype == np.int64 and scores.dtype == np.float32
    assert idx.shape == (len(q), min(k, len(d)))
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(scores, ref_s)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 300), st.integers(1, 2500), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_topk_real_valued_matches_own_similarity(nq, n, k, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((nq, 24), dtype=np.float32)
    d = rng.standard_normal((n, 24), dtype=np.float32)
    scores, idx = topk(q, d, k, num_threads=2)
    ref_s, ref_i = stable_topk(similarity(q, d), k)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(scores, ref_s)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ d.T, idx, axis=1), rtol=1e-5, atol=1e-5)


def test_topk_duplicates_tie_to_lower_index_across_blocks():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((3, 8)).astype(np.float32)
    d = np.tile(base, (1500, 1))  # every vector 1500 times, spread over several blocks
    for q_rows in (1, 7):
        q = np.repeat(base[:1], q_rows, axis=0)
        _, idx = topk(q, d, 5, num_threads=2)
        _, ref = stable_topk(similarity(q, d), 5)
        np.testing.assert_array_equal(idx, ref)
        assert (idx % 3 == 0).all() and (np.diff(idx, axis=1) > 0).all()


def test_topk_edges_k_over_n_empty_database_single_query():
    q = np.ones((1, 4), np.float32)
    d = np.arange(12, dtype=np.float32).reshape(3, 4)
    s, i = topk(q, d, 10)
    assert i.tolist() == [[2, 1, 0]] and s.shape == (1, 3)
    s, i = topk(q, np.zeros((0, 4), np.float32), 3)
    assert s.shape == (1, 0) and i.shape == (1, 0)
    s, i = topk(q[0], d, 1)  # 1-d query
    assert i.tolist() == [[2]]
    s, i = topk(q, d, 0)
    assert i.shape == (1, 0)


def test_float64_non_contiguous_and_float16_database():
    rng = np.random.default_rng(1)
    d = rng.integers(-3, 4, size=(50, 12)).astype(np.float64)
    q = rng.integers(-3, 4, size=(12, 5)).astype(np.float64).T  # non-contiguous
    ref_s, ref_i = stable_topk(q @ d.T, 7)
    for db in (d, d[:, ::1].astype(np.float16), np.asfortranarray(d)):
        s, i = topk(q, db, 7)
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_array_equal(s, ref_s.astype(np.float32))
    np.testing.assert_array_equal(similarity(q, d[::2]), (q @ d[::2].T).astype(np.float32))


def test_torch_tensors_if_available():
    torch = pytest.importorskip("torch")
    q = torch.arange(8, dtype=torch.float64).reshape(2, 4)
    d = torch.eye(4)
    _, i = topk(q, d, 2)
    assert i.tolist() == [[3, 2], [3, 2]]


def test_errors_name_the_argument():
    good = np.ones((2, 4), np.float32)
    with pytest.raises(ShapeError, match="queries.*3.*database.*4"):
        topk(np.ones((2, 3), np.float32), good, 1)
    with pytest.raises(ShapeError, match="database must be 2-d"):
        topk(good, np.ones(4, np.float32), 1)
    with pytest.raises(ValueError, match="k must be"):
        topk(good, good, -1)
    bad = good.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="queries holds NaN.*row 1"):
        topk(bad, good, 1)
    big = np.ones((5000, 4), np.float32)
    big[4321, 0] = np.inf
    with pytest.raises(ValueError, match="database holds NaN or Inf.*row 4321"):
        topk(good, big, 1)
    with pytest.raises(ValueError, match="b holds NaN or Inf"):
        similarity(good, big)
    with pytest.raises(ValueError, match="non-finite"):  # finite inputs, overflowing product
        topk(np.full((1, 4), 3e38, np.float32), good, 1)
    with pytest.raises(ShapeError, match="must hold numbers"):
        similarity(np.array([["a"]]), good)
    assert issubclass(ShapeError, ValueError) and issubclass(ShapeError, ferroclip.FerroclipError)


def brute_recall(img, txt, t2i, ks):
    """Reference by definition on exact numpy scores (see _brute_on_scores)."""
    s = img @ txt.T
    return _brute_on_scores(s, s.T, t2i, ks)


def average_precision_at_k(relevant_in_order: np.ndarray, n_positives: int, k: int) -> float:
    """AP@K straight from the definition: mean of precision@r at each hit r <= K."""
    hits = relevant_in_order[:k]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at * hits).sum() / min(k, n_positives))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 40), st.integers(0, 6), st.integers(0, 2**32 - 1), st.booleans())
def test_recall_matches_brute_force(n_img, n_txt, dim, seed, real):
    rng = np.random.default_rng(seed)
    if real:
        img = rng.standard_normal((n_img, dim)).astype(np.float32)
        txt = rng.standard_normal((n_txt, dim)).astype(np.float32)
    else:
        img = rng.integers(-2, 3, size=(n_img, dim)).astype(np.float32)
        txt = rng.integers(-2, 3, size=(n_txt, dim)).astype(np.float32)
    t2i = rng.integers(0, n_img, size=n_txt)
    ks = (1, 2, 5)
    got = recall_at_k(img, txt, t2i, ks, num_threads=2)
    if real:  # near-ties: the reference must rank ferroclip's own scores
        want = _brute_on_scores(similarity(img, txt), similarity(txt, img), t2i, ks)
    else:  # exact integer scores: the plain numpy definition
        want = brute_recall(img, txt, t2i, ks)
    assert list(got) == list(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def _brute_on_scores(s_it, s_ti, t2i, ks):
    """Full stable sort per query; rank = first positive's position; AP@K by definition."""
    per = {"i2t": [], "t2i": []}  # (best rank, relevance in sorted order, number of positives)
    for i in range(len(s_it)):
        pos = np.flatnonzero(t2i == i)
        if len(pos):
            rel = np.isin(np.argsort(-s_it[i], kind="stable"), pos)
            per["i2t"].append((np.flatnonzero(rel)[0], rel, len(pos)))
    for t in range(len(s_ti)):
        rel = np.argsort(-s_ti[t], kind="stable") == t2i[t]
        per["t2i"].append((np.flatnonzero(rel)[0], rel, 1))
    out = {}
    for name, rows in per.items():
        ranks = np.array([r[0] for r in rows])
        for k in ks:
            out[f"{name}_R@{k}"] = float(np.mean(ranks < k))
        for k in ks:
            out[f"{name}_mAP@{k}"] = float(np.mean([average_precision_at_k(rel, p, k) for _, rel, p in rows]))
        out[f"{name}_median_rank"] = float(np.median(ranks + 1))
        out[f"{name}_mean_rank"] = float(np.mean(ranks + 1))
    out["i2t_skipped_images"] = len(s_it) - len(per["i2t"])
    return out


def test_map_by_hand():
    # Image 0 has captions 0, 1, 2; its scores put them at 0-based ranks 0, 2, 3.
    img = np.array([[1.0, 0.0]], np.float32)
    txt = np.array([[4, 0], [2, 0], [1, 0], [3, 0]], np.float32)
    got = recall_at_k(img, txt, [0, 0, 0, 0], ks=(1, 3, 10))
    # ranks of captions 0, 3 and 1 among [4, 3, 2, 1]*...; all four captions are image 0's
    assert got["i2t_mAP@10"] == pytest.approx(1.0)
    img2 = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    txt2 = np.array([[4, 0], [3.5, 0], [2, 0], [1, 0], [0, 9]], np.float32)
    got = recall_at_k(img2, txt2, [0, 1, 0, 0, 1], ks=(1, 3, 10))
    # image 0: positives 0, 2, 3 at ranks 0, 2, 3 (caption 1 is image 1's, rank 1)
    ap0_10 = (1 / 1 + 2 / 3 + 3 / 4) / 3
    ap0_3 = (1 / 1 + 2 / 3) / 3
    # image 1: scores [0, 0, 0, 0, 9]: caption 4 first (rank 0), caption 1 ties at 0 with
    # lower-index captions 0 -> rank 2. AP@10 = (1/1 + 2/3) / 2, AP@1 = 1/min(1, 2) = 1
    ap1_10 = (1 + 2 / 3) / 2
    ap1_3 = (1 + 2 / 3) / 2
    assert got["i2t_mAP@10"] == pytest.approx((ap0_10 + ap1_10) / 2)
    assert got["i2t_mAP@3"] == pytest.approx((ap0_3 + ap1_3) / 2)
    assert got["i2t_mAP@1"] == pytest.approx(1.0)
    assert list(got)[:9] == [
        "i2t_R@1", "i2t_R@3", "i2t_R@10", "i2t_mAP@1", "i2t_mAP@3", "i2t_mAP@10",
        "i2t_median_rank", "i2t_mean_rank", "t2i_R@1",
    ]


# --- CLIP_benchmark's retrieval definition, reimplemented from clip_benchmark/metrics/
# zeroshot_retrieval.py (scores = texts @ images.T, a boolean positive-pair matrix,
# `recall_at_k` via topk one-hot, `batchify` over query blocks, "recall > 0" per query).


def clip_benchmark_recall_at_k(scores, positive_pairs, k, topk_fn):
    torch = pytest.importorskip("torch")
    nb_texts, nb_images = scores.shape
    topk_indices = topk_fn(scores, k)
    nb_positive = positive_pairs.sum(dim=1)
    topk_indices_onehot = torch.nn.functional.one_hot(topk_indices, num_classes=nb_images)
    positive_pairs_reshaped = positive_pairs.view(nb_texts, 1, nb_images)
    nb_true_positive = (topk_indices_onehot * positive_pairs_reshaped).sum(dim=(1, 2))
    return nb_true_positive / nb_positive


def clip_benchmark_batchify(func, X, Y, batch_size, *args, **kwargs):
    torch = pytest.importorskip("torch")
    results = []
    for start in range(0, len(X), batch_size):
        results.append(func(X[start : start + batch_size], Y[start : start + batch_size], *args, **kwargs))
    return torch.cat(results)


def clip_benchmark_hits(images_emb, texts_emb, texts_image_index, k, batch_size, topk_fn):
    """Per-query hits (bool) as CLIP_benchmark computes them: (image_retrieval, text_retrieval)."""
    torch = pytest.importorskip("torch")
    scores = texts_emb @ images_emb.t()
    positive_pairs = torch.zeros_like(scores, dtype=bool)
    positive_pairs[torch.arange(len(scores)), texts_image_index] = True
    # (topk needs k <= candidates: a direction where it is not is left out, as None)
    t2i = i2t = None
    if k <= scores.shape[1]:
        t2i = clip_benchmark_batchify(clip_benchmark_recall_at_k, scores, positive_pairs, batch_size, k, topk_fn) > 0
    if k <= scores.shape[0]:
        i2t = clip_benchmark_batchify(clip_benchmark_recall_at_k, scores.T, positive_pairs.T, batch_size, k, topk_fn) > 0
    return t2i, i2t


def torch_topk(scores, k):
    return __import__("torch").topk(scores, k, dim=1)[1]


def stable_torch_topk(scores, k):
    """One of the answers torch.topk may give: equal scores in index order."""
    return __import__("torch").sort(scores, dim=1, descending=True, stable=True)[1][:, :k]


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 15), st.integers(1, 5), st.integers(1, 8), st.sampled_from([1, 2, 5, 40]),
    st.integers(1, 7), st.integers(0, 2**32 - 1),
)
def test_recall_equals_clip_benchmark(n_img, max_caps, dim, levels, batch_size, seed):
    """Same per-query hits and means as CLIP_benchmark, ties included.

    Integer embeddings make every score exact (torch and ferroclip agree on them bit for bit)
    and, with few levels, full of ties. torch.topk breaks ties at the K boundary arbitrarily,
    so CLIP_benchmark's own answer is only defined up to that choice: ferroclip must equal it
    with topk's choice pinned to index order (a valid topk result), and equal plain
    torch.topk on every query where no tie crosses the boundary.
    """
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    caps = rng.integers(1, max_caps + 1, size=n_img)  # every image has captions, as in COCO
    t2i = np.repeat(np.arange(n_img), caps)
    rng.shuffle(t2i)
    img = rng.integers(-levels, levels + 1, size=(n_img, dim)).astype(np.float32)
    txt = rng.integers(-levels, levels + 1, size=(len(t2i), dim)).astype(np.float32)
    ks = sorted({1, 2, 5, n_img, len(t2i)})
    got, i2t_rank, t2i_rank = recall_at_k(img, txt, t2i, ks, return_ranks=True)
    ti, tt, idx = torch.from_numpy(img), torch.from_numpy(txt), torch.from_numpy(t2i)
    s_ti = (tt @ ti.t()).numpy()
    checked = 0
    for k in ks:
        ref_t2i, ref_i2t = clip_benchmark_hits(ti, tt, idx, k, batch_size, stable_torch_topk)
        raw_t2i, raw_i2t = clip_benchmark_hits(ti, tt, idx, k, batch_size, torch_topk)
        for name, ours, ref, raw, scores in (
            ("t2i", t2i_rank < k, ref_t2i, raw_t2i, s_ti),
            ("i2t", i2t_rank < k, ref_i2t, raw_i2t, s_ti.T),
        ):
            if ref is None:
                continue
            checked += 1
            np.testing.assert_array_equal(ours, ref.numpy(), err_msg=f"{name} k={k}")
            assert got[f"{name}_R@{k}"] == pytest.approx(ref.float().mean().item(), abs=1e-6)
            unambiguous = _no_tie_at_boundary(scores, k)
            np.testing.assert_array_equal(ours[unambiguous], raw.numpy()[unambiguous], err_msg=f"{name} k={k}")
    assert checked >= 2


def _no_tie_at_boundary(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows whose K-th and (K+1)-th best scores differ: any topk returns the same set."""
    if k >= scores.shape[1]:
        return np.ones(len(scores), bool)
    part = -np.sort(-scores, axis=1)
    return part[:, k - 1] != part[:, k]


def test_clip_benchmark_counts_captionless_images_as_misses():
    """The one documented difference: CLIP_benchmark divides by 0 positives (NaN > 0 is
    False), so an image without captions is a miss; ferroclip skips it and says so."""
    torch = pytest.importorskip("torch")
    img = np.eye(3, dtype=np.float32)
    txt = np.eye(3, dtype=np.float32)[:2]
    got = recall_at_k(img, txt, [0, 1], ks=(1,))
    _, ref = clip_benchmark_hits(torch.from_numpy(img), torch.from_numpy(txt), torch.tensor([0, 1]), 1, 8, stable_torch_topk)
    assert ref.float().mean().item() == pytest.approx(2 / 3)
    assert got["i2t_R@1"] == 1.0 and got["i2t_skipped_images"] == 1
    assert got["i2t_R@1"] * (3 - got["i2t_skipped_images"]) / 3 == pytest.approx(ref.float().mean().item())


def test_recall_multi_caption_any_counts_and_skips():
    img = np.eye(3, dtype=np.float32)
    # image 0: captions 0 (points at image 1's direction) and 1 (exact) -> found at R@1
    txt = np.array([[0, 1, 0], [1, 0, 0], [0, 0.5, 0]], np.float32)
    got, i2t, t2i = recall_at_k(img, txt, [0, 0, 1], ks=(1,), return_ranks=True)
    assert i2t.tolist() == [0, 1, -1]  # image 1: caption 0 scores 1.0 above its caption 2
    assert t2i.tolist() == [1, 0, 0]
    assert got["i2t_R@1"] == 0.5 and got["i2t_skipped_images"] == 1
    assert got["t2i_R@1"] == pytest.approx(2 / 3)


def test_recall_errors():
    img = np.eye(2, dtype=np.float32)
    with pytest.raises(ValueError, match=r"text_to_image\[1\] = 5"):
        recall_at_k(img, img, [0, 5])
    with pytest.raises(ShapeError, match="one entry per caption"):
        recall_at_k(img, img, [0])
    with pytest.raises(ShapeError, match="integer"):
        recall_at_k(img, img, [0.0, 1.0])
    with pytest.raises(ValueError, match="ks must be positive"):
        recall_at_k(img, img, [0, 1], ks=(0,))
    with pytest.raises(ShapeError, match="text_emb has dimension 3"):
        recall_at_k(img, np.ones((2, 3), np.float32), [0, 1])


def test_zero_shot_classify():
    img = np.array([[2.0, 0.1], [0.0, -1.0], [0.1, 3.0]], np.float32)
    cls = np.array([[10.0, 0.0], [0.0, 1.0]], np.float32)  # norms differ: cosine, not dot
    assert zero_shot_classify(img, cls).tolist() == [0, 0, 1]
    assert zero_shot_classify(img, cls, labels=["cat", "dog"]) == ["cat", "cat", "dog"]


def test_index_add_search_remove_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    v = rng.standard_normal((300, 16)).astype(np.float32)
    ids = [f"doc{i}" for i in range(300)]
    index = EmbeddingIndex(16)
    index.add(v[:100], ids[:100])
    index.add(v[100:], ids[100:])
    q = rng.standard_normal((4, 16)).astype(np.float32)
    s, got = index.search(q, 5)
    _, ref = stable_topk(similarity(q, v), 5)
    assert got.tolist() == [[ids[j] for j in row] for row in ref]
    s_sub, got_sub = index.search(q, 3, subset=ids[::2])
    _, ref_sub = stable_topk(similarity(q, v[::2]), 3)
    assert got_sub.tolist() == [[ids[2 * j] for j in row] for row in ref_sub]

    index.remove(["doc0", "doc5"])
    assert len(index) == 298
    index.save(tmp_path / "idx")
    index.save(tmp_path / "idx")  # second save replaces, leaves one vectors file
    assert len(list((tmp_path / "idx").glob("vectors-*.npy"))) == 1
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["count"] == 298 and meta["ids"][0] == "doc1"
    for mmap in (True, False):
        loaded = EmbeddingIndex.load(tmp_path / "idx", mmap=mmap)
        np.testing.assert_array_equal(loaded.vectors, index.vectors)
        s2, got2 = loaded.search(q, 5)
        s1, got1 = index.search(q, 5)
        assert got2.tolist() == got1.tolist()
        np.testing.assert_array_equal(s1, s2)
    loaded.add(100 * v[:1], ["new"])  # a memory-mapped index is copied on add
    assert len(loaded) == 299 and loaded.search(v[:1], 1)[1].tolist() == [["new"]]


def test_index_errors_and_float16(tmp_path):
    index = EmbeddingIndex(4, dtype="float16")
    index.add(np.eye(4, dtype=np.float32), [10, 11, 12, 13])
    s, got = index.search(np.array([0, 0, 1, 0], np.float32), 2)
    assert got.dtype == np.int64 and got.tolist() == [[12, 10]]
    with pytest.raises(ValueError, match="already in the index"):
        index.add(np.ones((1, 4), np.float32), [10])
    with pytest.raises(ValueError, match="float16 range"):
        index.add(np.full((1, 4), 1e6, np.float32), [99])
    with pytest.raises(ShapeError, match="dimension 3"):
        index.add(np.ones((1, 3), np.float32), [99])
    with pytest.raises(KeyError):
        index.remove([12345])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "index.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="does not hold"):
        EmbeddingIndex.load(tmp_path / "bad")


# --- near duplicates ----------------------------------------------------------------------


def brute_pairs(scores: np.ndarray, threshold: float):
    i, j = np.nonzero(np.triu(scores >= threshold, k=1))  # row-major: sorted by (i, j)
    return i, j, scores[i, j]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 300), st.integers(1, 6), st.integers(1, 3), st.integers(0, 2**32 - 1), st.integers(1, 3))
def test_near_duplicates_equal_numpy_brute_force(n, dim, levels, seed, threads):
    """Integer rows: exact scores, many equal ones, exact duplicate rows; threshold taken
    from the scores themselves so the inclusive edge is exercised."""
    rng = np.random.default_rng(seed)
    e = rng.integers(-levels, levels + 1, size=(n, dim)).astype(np.float32)
    if n > 4:
        e[n // 2] = e[1]  # an exact duplicate pair
    s = e @ e.T
    candidates = np.unique(s) if n else np.array([0.0])
    for threshold in (candidates[len(candidates) // 2], candidates[-1], candidates[-1] + 1):
        got = near_duplicates(e, float(threshold), normalize=False, num_threads=threads)
        want = brute_pairs(s, threshold)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        assert got[0].dtype == np.int64 and got[2].dtype == np.float32
        if n > 4 and threshold <= s[1, n // 2]:
            assert ((got[0] == 1) & (got[1] == n // 2)).any()


def test_near_duplicates_cosine_float16_and_limits():
    rng = np.random.default_rng(5)
    e = rng.standard_normal((1500, 32)).astype(np.float32)
    e[1400] = 3.0 * e[7]  # same direction, other norm: cosine 1
    e[900] = e[12] + 1e-3 * rng.standard_normal(32).astype(np.float32)
    unit = e / np.linalg.norm(e, axis=1, keepdims=True)
    i, j, s = near_duplicates(e, 0.99)
    assert list(zip(i.tolist(), j.tolist())) == [(7, 1400), (12, 900)]
    # scores equal ferroclip's own similarity of the normalised rows, bit for bit
    u = (e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), np.float32(1e-12))).astype(np.float32)
    np.testing.assert_array_equal(s, similarity(u, u)[i, j])
    np.testing.assert_allclose(s, (unit @ unit.T)[i, j], atol=1e-5)
    # threshold between pairs: same answer as numpy on the normalised float16 rows
    u16 = u.astype(np.float16)
    got = near_duplicates(u16, 0.3, normalize=False, num_threads=2)
    want = brute_pairs(similarity(u16.astype(np.float32), u16.astype(np.float32)), 0.3)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    with pytest.raises(ValueError, match="max_pairs=10"):
        near_duplicates(e, -1.0, max_pairs=10)
    with pytest.raises(ValueError, match="threshold must be finite"):
        near_duplicates(e, float("nan"))
    with pytest.raises(ShapeError, match="emb must be 2-d"):
        near_duplicates(e[0], 0.5)


def test_index_near_duplicates_returns_ids():
    index = EmbeddingIndex(3, dtype="float16")
    index.add(np.array([[1, 0, 0], [0, 1, 0], [2, 0, 0], [0, 1, 0.01]], np.float32), ["a", "b", "c", "d"])
    ids_a, ids_b, scores = index.near_duplicates(0.99)
    assert ids_a.tolist() == ["a", "b"] and ids_b.tolist() == ["c", "d"]
    assert scores.shape == (2,) and (scores >= 0.99).all()


# --- single-query (GEMV) path -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("nq", [1, 2, 3, 4])
def test_few_queries_match_numpy(dtype, nq):
    """Q <= 3 takes the streaming dot kernel (f16 widened in registers), Q = 4 sgemm; both
    must agree with numpy on the widened database, and topk with its own similarity."""
    rng = np.random.default_rng(nq)
    d = rng.standard_normal((5000, 77)).astype(dtype)  # odd dim: a 16-lane tail
    q = rng.standard_normal((nq, 77)).astype(np.float32)
    ref = q.astype(np.float64) @ d.astype(np.float64).T
    sims = similarity(q, d, num_threads=2)
    np.testing.assert_allclose(sims, ref, rtol=1e-5, atol=1e-4)
    for threads in (1, 2):
        s, i = topk(q, d, 10, num_threads=threads)
        want_s, want_i = stable_topk(sims, 10)
        np.testing.assert_array_equal(i, want_i)
        np.testing.assert_array_equal(s, want_s)
    exact = rng.integers(-3, 4, size=(700, 77)).astype(dtype)
    qi = rng.integers(-3, 4, size=(nq, 77)).astype(np.float32)
    np.testing.assert_array_equal(similarity(qi, exact), qi @ exact.astype(np.float32).T)
    np.testing.assert_array_equal(topk(qi, exact, 25)[1], stable_topk(qi @ exact.astype(np.float32).T, 25)[1])


# --- faiss interop ----------------------------------------------------------------------------


def test_faiss_round_trip():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(8)
    v = rng.standard_normal((500, 24)).astype(np.float32)
    index = EmbeddingIndex(24)
    index.add(v, [f"id{i}" for i in range(500)])
    fx = index.to_faiss()
    assert isinstance(fx, faiss.IndexFlatIP) and fx.ntotal == 500 and fx.d == 24
    q = rng.standard_normal((6, 24)).astype(np.float32)
    fs, fi = fx.search(q, 5)
    s, ids = index.search(q, 5)
    np.testing.assert_allclose(s, fs, rtol=1e-5, atol=1e-5)
    assert ids.tolist() == [[f"id{j}" for j in row] for row in fi]  # continuous data: no ties

    back = EmbeddingIndex.from_faiss(fx)
    assert back.ids == list(range(500))
    np.testing.assert_array_equal(back.vectors, v)
    named = EmbeddingIndex.from_faiss(fx, ids=index.ids, dtype="float16")
    assert named.ids == index.ids and named.vectors.dtype == np.float16
    mapped = faiss.IndexIDMap(faiss.IndexFlatIP(24))
    mapped.add_with_ids(v[:3], np.array([70, 80, 90], dtype=np.int64))
    assert EmbeddingIndex.from_faiss(mapped).ids == [70, 80, 90]
    assert EmbeddingIndex.from_faiss(faiss.IndexFlatIP(24)).ids == []
    assert EmbeddingIndex(4, dtype="float16").to_faiss().ntotal == 0
    with pytest.raises(TypeError, match="IndexFlatIP"):
        EmbeddingIndex.from_faiss(faiss.IndexFlatL2(24))


def test_faiss_missing_gives_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    with pytest.raises(ImportError, match="EmbeddingIndex.to_faiss needs faiss.*pip install faiss-cpu"):
        EmbeddingIndex(4).to_faiss()
    with pytest.raises(ImportError, match="from_faiss needs faiss"):
        EmbeddingIndex.from_faiss(object())


# --- a kill during save -------------------------------------------------------------------------

_SAVER = r"""
import os, sys
import numpy as np
from ferroclip import EmbeddingIndex

path, rows, pause_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
real_fsync, calls = os.fsync, [0]

def fsync(fd):  # fault injection: stop at the pause_at-th fsync of the 2nd save, wait to be killed
    calls[0] += 1
    if calls[0] == pause_at:
        print("paused", flush=True)
        sys.stdin.readline()
    real_fsync(fd)

os.fsync = fsync
version = 0
while True:
    version += 1
    index = EmbeddingIndex(64)
    index.add(np.full((rows, 64), version, np.float32), range(version * rows, (version + 1) * rows))
    calls[0] = 0 if version == 2 else -10**9  # count only during the 2nd save
    index.save(path)
    print("saved", version, calls[0] if version == 2 else "", flush=True)
"""


def _saver(tmp_path: Path, pause_at: int) -> subprocess.Popen:
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(ferroclip.__file__).parent.parent), os.environ.get("PYTHONPATH", "")]))
    rows = 20_000
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "idx"), str(rows), str(pause_at)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )


def _kill(proc: subprocess.Popen) -> list[str]:
    """SIGKILL, reap, and return what it printed but we had not read yet."""
    proc.kill()
    proc.wait()
    rest = proc.stdout.readlines()
    proc.stdout.close()
    if not proc.stdin.closed:
        proc.stdin.close()
    return rest


def _check_consistent(root: Path, rows: int = 20_000) -> int:
    loaded = EmbeddingIndex.load(root)
    version = int(loaded.vectors[0, 0])
    assert loaded.ids == list(range(version * rows, (version + 1) * rows))
    assert (loaded.vectors == version).all() and len(loaded) == rows
    return version


def test_kill_at_every_fsync_of_a_save_leaves_a_loadable_index(tmp_path):
    """SIGKILL the saver while it sits in each fsync of its 2nd save (vectors temp file, its
    directory entry, index.json temp file, its directory entry, final sweep): the index on
    disk is always version 1 or 2, whole; litter is ignored by load and swept by the next save."""
    probe = _saver(tmp_path, pause_at=10**9)  # no pause: learn how many fsyncs a save makes
    lines = [probe.stdout.readline() for _ in range(2)]
    _kill(probe)
    n_fsync = int(lines[1].split()[2])
    assert n_fsync >= 3
    versions = []
    for pause_at in range(1, n_fsync + 1):
        proc = _saver(tmp_path, pause_at)
        assert proc.stdout.readline().startswith("saved 1")
        assert proc.stdout.readline().strip() == "paused"
        assert _kill(proc) == []
        versions.append(_check_consistent(tmp_path / "idx"))
        litter = {p.name for p in (tmp_path / "idx").iterdir()} - {"index.json", ".lock"}
        EmbeddingIndex.load(tmp_path / "idx").save(tmp_path / "idx")  # the next save sweeps
        assert {p.name for p in (tmp_path / "idx").iterdir() if p.name != ".lock"} == {
            "index.json", json.loads((tmp_path / "idx" / "index.json").read_text())["vectors"]
        }, litter
    assert versions[0] == 1 and set(versions) <= {1, 2}  # killed before the switch: the old one


def test_kill_at_random_moments_of_repeated_saves(tmp_path):
    import time

    rng = np.random.default_rng(0)
    for delay in rng.uniform(0.0, 0.25, size=3):
        proc = _saver(tmp_path, pause_at=10**9)
        first = proc.stdout.readline()
        assert first.startswith("saved"), first
        time.sleep(float(delay))
        lines = [first, *_kill(proc)]
        # Every line is a whole "saved N" report, except perhaps the last: a kill can cut the
        # print that follows a finished save (a line without a version failed this test once
        # in CI on a loaded host), and then that save is on disk unreported, which the bound
        # below allows (reported + 1).
        done = [re.match(r"saved (\d+) ", line) if line.endswith("\n") else None for line in lines]
        assert all(done[:-1]), lines
        reported = max(int(m.group(1)) for m in done if m)
        version = _check_consistent(tmp_path / "idx")
        assert reported <= version <= reported + 1


# --- Product backend: built-in by default, the process's BLAS with FERROCLIP_BLAS=1 ---

_BACKEND_SCRIPT = r"""
import ctypes, glob, os, sys
import numpy as np
import ferroclip
from ferroclip import _native

print(_native.gemm_backend(), flush=True)
# numpy's OpenBLAS thread count, to check that a retrieval call leaves it as it was.
libs = glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs", "libscipy_openblas64_*.so"))
get_threads = ctypes.CDLL(libs[0]).scipy_openblas_get_num_threads64_ if libs else (lambda: -1)
threads_before = get_threads()

rng = np.random.default_rng(0)
ints = lambda *shape: rng.integers(-3, 4, size=shape).astype(np.float32)  # exact products
# More than one 256 x 1024 tile each way, ragged edges, over 3 queries (the sgemm kernels).
a, b = ints(300, 40), ints(2100, 40)
s = a @ b.T
assert np.array_equal(ferroclip.similarity(a, b, num_threads=2), s)
ref = np.argsort(-s, axis=1, kind="stable")[:, :7]
for th in (1, 2):
    scores, idx = ferroclip.topk(a, b, 7, num_threads=th)
    assert np.array_equal(idx, ref) and np.array_equal(scores, np.take_along_axis(s, ref, axis=1))

e = ints(700, 12)
se = e @ e.T
i, j, v = ferroclip.near_duplicates(e, 20.0, normalize=False, num_threads=2)
wi, wj = np.nonzero(np.triu(se >= 20.0, k=1))
assert np.array_equal(i, wi) and np.array_equal(j, wj) and np.array_equal(v, se[wi, wj])

img, txt = ints(300, 24), ints(1100, 24)
t2i = rng.integers(0, 300, size=1100)
_, i2t_rank, t2i_rank = ferroclip.recall_at_k(img, txt, t2i, (1, 5), num_threads=2, return_ranks=True)
st = img @ txt.T
def rank(row, p):  # stable descending sort position of candidate p
    return int((row > row[p]).sum() + (row[:p] == row[p]).sum())
want_i2t = [min((rank(st[q], p) for p in np.flatnonzero(t2i == q)), default=-1) for q in range(300)]
want_t2i = [rank(st[:, t], t2i[t]) for t in range(1100)]
assert list(i2t_rank) == want_i2t and list(t2i_rank) == want_t2i

assert get_threads() == threads_before, (get_threads(), threads_before)
print("ok", flush=True)
"""


def _run_backend_script(blas: str, gemm: str = "", script: str = _BACKEND_SCRIPT) -> list[str]:
    env = {**os.environ, "FERROCLIP_BLAS": blas, "FERROCLIP_GEMM": gemm, "PYTHONPATH": str(Path(ferroclip.__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "ok", out.stdout
    return lines


def _numpy_has_scipy_openblas() -> bool:
    import platform

    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False
    deps = np.show_config(mode="dicts").get("Build Dependencies", {})
    return deps.get("blas", {}).get("name") == "scipy-openblas"


def _cpu_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), None)
    return set(line.split(":", 1)[1].split()) if line else None


def _builtin_backend() -> str:
    """What the built-in product should be on this CPU: ferroclip's AVX-512 kernel on x86-64
    with AVX-512F (and AVX2 + FMA), its AVX2 kernel with AVX2 + FMA only, matrixmultiply
    elsewhere."""
    import platform

    flags = _cpu_flags()
    if platform.machine() != "x86_64" or flags is None or not {"avx2", "fma"} <= flags:
        return "matrixmultiply"
    return "ferroclip-avx512" if "avx512f" in flags else "ferroclip-avx2"


def test_default_backend_is_the_builtin_product_for_this_cpu():
    if os.environ.get("FERROCLIP_BLAS"):
        pytest.skip("FERROCLIP_BLAS is set for this run")
    if sys.platform != "linux":
        pytest.skip("CPU flags are read from /proc/cpuinfo")
    assert ferroclip._native.gemm_backend() == _builtin_backend()


@pytest.mark.parametrize("blas", ["0", "1", "force"])
def test_both_product_backends_equal_numpy_on_exact_data(blas):
    """Each backend in a fresh process (the choice is made once per process): exact scores,
    top-k, pairs and ranks, and numpy's OpenBLAS thread count unchanged after the calls.
    "1" times the BLAS against the built-in product first (OPENBLAS_CORETYPE=Haswell can make it too
    slow on AVX-512 machines), "force" takes it regardless."""
    backend = _run_backend_script(blas)[0]
    if blas == "0":
        assert backend in ("ferroclip-avx512", "ferroclip-avx2", "matrixmultiply"), backend
    elif _numpy_has_scipy_openblas():  # pip numpy on Linux x86_64: its OpenBLAS is found
        assert "scipy_cblas_sgemm64_ (ILP64)" in backend, backend
        if blas == "force":
            assert backend.startswith("OpenBLAS scipy_cblas_sgemm64_ (ILP64)"), backend


_KERNEL_BITS_SCRIPT = r"""
import sys
import numpy as np
import ferroclip
from ferroclip import _native

print(_native.gemm_backend(), flush=True)
rng = np.random.default_rng(7)
# Real-valued data (sums round), dimensions with tails and two k passes, ragged tiles.
for dim in (33, 512, 520):
    a = rng.standard_normal((301, dim), dtype=np.float32)
    b = rng.standard_normal((1500, dim), dtype=np.float32)
    s = ferroclip.similarity(a, b, num_threads=2)
    scores, idx = ferroclip.topk(a, b, 5, num_threads=2)
    np.save(sys.argv[1] + f"/{dim}.npy", np.concatenate([s.ravel(), scores.ravel()]))
print("ok", flush=True)
"""


@pytest.mark.parametrize("kernel", ["avx2", "matrixmultiply"])
def test_kernels_give_the_same_bits_as_the_default(tmp_path, kernel):
    """The widest kernel this CPU has (AVX-512 where present) and a narrower one, each in a
    fresh process (chosen once per process): ferroclip's kernels compute every score as one
    FMA chain over k, so on random data the AVX-512 and AVX2 kernels agree bit for bit.
    `matrixmultiply` sums in another order: it is only checked to agree to float rounding."""
    outs = {}
    for name in ("default", kernel):
        d = tmp_path / name
        d.mkdir()
        script = _KERNEL_BITS_SCRIPT.replace("sys.argv[1]", repr(str(d)))
        backend = _run_backend_script("0", "" if name == "default" else kernel, script)[0]
        outs[name] = (backend, {dim: np.load(d / f"{dim}.npy") for dim in (33, 512, 520)})
    (default_backend, default), (other_backend, other) = outs["default"], outs[kernel]
    if kernel == "avx2" and default_backend.startswith("ferroclip-") and other_backend == "ferroclip-avx2":
        for dim in default:
            assert np.array_equal(default[dim].view(np.uint32), other[dim].view(np.uint32)), (default_backend, dim)
    else:
        for dim in default:
            np.testing.assert_allclose(default[dim], other[dim], rtol=1e-4, atol=1e-4)
