"""Exact top-k throughput: ferroclip vs numpy (and faiss / torch when importable).

    python benches/bench_retrieval.py            # N=100k, D=512, Q in (1, 1000), k=10
    python benches/bench_retrieval.py --n 20000 --repeats 3

Every peer does exact inner-product search. ferroclip's indices are checked against a
numpy reference before timing (mismatches allowed only between near-tied scores, since
different BLAS kernels round differently). Prints a markdown table of median queries/s.
Thread counts: ferroclip ``num_threads``; numpy via threadpoolctl (if installed); faiss
``omp_set_num_threads``; torch ``set_num_threads``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np

import ferroclip


def numpy_topk(q: np.ndarray, d: np.ndarray, k: int, chunk: int = 16384):
    """Chunked matmul + argpartition, then an exact sort of the survivors (stable)."""
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for start in range(0, len(d), chunk):
        s = q @ d[start : start + chunk].T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], axis=1)
        best_i = np.concatenate([best_i, part + start], axis=1)
        order = np.lexsort((best_i, -best_s), axis=-1)[:, :k]
        best_s = np.take_along_axis(best_s, order, 1)
        best_i = np.take_along_axis(best_i, order, 1)
    return best_s, best_i


def numpy_limits(threads: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (pools, page faults)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def check(name: str, got_i: np.ndarray, ref_i: np.ndarray, q: np.ndarray, d: np.ndarray) -> str:
    if np.array_equal(got_i, ref_i):
        return "equal"
    s_got = np.einsum("qd,qkd->qk", q.astype(np.float64), d[got_i].astype(np.float64))
    s_ref = np.einsum("qd,qkd->qk", q.astype(np.float64), d[ref_i].astype(np.float64))
    gap = float(np.abs(s_got - s_ref).max())
    if gap > 1e-4:
        raise SystemExit(f"{name}: indices differ from the numpy reference beyond near-ties (gap {gap})")
    return f"near-ties differ ({int((got_i != ref_i).sum())} slots, score gap {gap:.1e})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="database rows")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, nargs="+", default=[1, 1000])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    d = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)

    peers = {"numpy": None}
    try:
        import faiss

        index = faiss.IndexFlatIP(args.dim)
        index.add(d)
        peers["faiss"] = faiss
    except ImportError:
        print("faiss: not installed, skipped")
    try:
        import torch

        td = torch.from_numpy(d)
        peers["torch"] = torch
    except ImportError:
        print("torch: not installed, skipped")

    rows = []
    for nq in args.queries:
        q = rng.standard_normal((nq, args.dim), dtype=np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        with numpy_limits(max(args.threads)):
            _, ref_i = numpy_topk(q, d, args.k)
        status = check("ferroclip", ferroclip.topk(q, d, args.k)[1], ref_i, q, d)
        print(f"Q={nq}: ferroclip vs numpy reference indices: {status}")
        repeats = args.repeats if nq > 10 else 4 * args.repeats
        for threads in args.threads:
            qps = {}
            qps["ferroclip"] = nq / timed(lambda: ferroclip.topk(q, d, args.k, num_threads=threads), repeats)
            with numpy_limits(threads):
                qps["numpy"] = nq / timed(lambda: numpy_topk(q, d, args.k), repeats)
            if "faiss" in peers:
                peers["faiss"].omp_set_num_threads(threads)
                qps["faiss"] = nq / timed(lambda: index.search(q, args.k), repeats)
            if "torch" in peers:
                torch = peers["torch"]
                torch.set_num_threads(threads)
                tq = torch.from_numpy(q)
                qps["torch"] = nq / timed(lambda: torch.topk(tq @ td.T, args.k, dim=1), repeats)
            rows.append((nq, threads, qps))

    names = list(rows[0][2])
    print(f"\nN={args.n}, D={args.dim}, k={args.k}, median of {args.repeats}+ runs, queries/s")
    head = "| Q | threads | " + " | ".join(names) + " | " + " | ".join(f"ferroclip/{p}" for p in names[1:]) + " |"
    print(head)
    print("|" + "---|" * (2 + 2 * len(names) - 1))
    for nq, threads, qps in rows:
        cells = [f"{qps[n]:,.0f}" for n in names] + [f"{qps['ferroclip'] / qps[p]:.2f}x" for p in names[1:]]
        print(f"| {nq} | {threads} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
