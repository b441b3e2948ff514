"""Exact top-k and Recall@K: ferroclip vs numpy, torch and faiss in one run, against the floors.

    python benches/bench_retrieval.py                                      # full (N = 100k and 1M)
    python benches/bench_retrieval.py --quick                              # N = 100k only
    python benches/bench_retrieval.py --out benches/results/retrieval-x86_64.md

Top-k: N database rows of D = 512 (unit norm), Q in (1, 1000), k = 10, 1 and 2 threads.
Peers: numpy (chunked matmul + argpartition), torch (chunked mm + topk), faiss
``IndexFlatIP``; ferroclip with float32 and float16 storage. Every peer's indices are
checked against a numpy reference (float64 scores) before it is timed; a peer that fails is
reported as wrong, and only near-ties (score gap below 1e-4) may differ.

Recall@K: 5k images x 25k captions (5 per image), K = 1, 5, 10, both directions: ferroclip
against a vectorised numpy implementation (full score matrix, rank by counting) and
CLIP_benchmark's approach (torch: topk one-hot over a positive-pair matrix, batchified);
all three must give the same Recall@K first.

Floors, measured in the same run: sgemm GFLOP/s (numpy matmul, 2048^3, per thread count,
best of repeated calls, before and after the timings), the core's theoretical FMA peak
(clock x vector lanes x 2 x FMA units, from ferroclip's probe: a dependent-add chain for the
clock, independent FMA chains for the units), the read bandwidth (the probe's best read
loop over 1 GiB, per thread count: 1, 2 or 4 streams per thread, with and without software
prefetch, in the widest vectors the CPU has, so no kernel of ours can read faster than it) and copy bandwidth (numpy copyto of 1 GiB, counted
as bytes read + written). Columns: GFLOP/s = 2QND / time against the sgemm floor; GB/s =
database bytes read / time against the read bandwidth. A summary after the tables checks
the goals (top-k at >= 90% of the sgemm floor, Recall@K <= 1.05x the bare product, one query
>= 1.2x the best peer in f32 and >= 2x in f16 at >= 85% of the read bandwidth, 2 threads
not slower than 1). For those shares ferroclip is also timed against its floor measured
beside each call (`paired_shares`: top-k against the best of three 2048^3 sgemms and the
bare product of its own shape, one query against the probe's read loops over the very bytes
it reads), and the goals take the median of those per-round shares: on a shared host the
clock and the neighbours' traffic move every call by 20-40% within seconds, which a median
set against a best-of floor taken minutes apart turns into a spurious gap. The share of the
run's best floor is printed beside it.
One run; per case the peers are timed in turn, round after round (median of ``--repeats``
rounds after a warm-up; a call over 2 s is timed once), and the load average is printed,
since a shared machine's other work slows every peer.
"""

from __future__ import annotations

import os
import sys

# OpenBLAS reads OPENBLAS_CORETYPE once, when numpy loads it. Some hosts force an older
# kernel through it (Haswell on a Zen 5 with AVX-512: numpy's sgemm then runs at half its
# speed), which would make the sgemm floor, and numpy's and faiss's own timings, a handicap
# rather than the machine's limit. The run re-executes itself without it (said in the report).
if os.environ.get("OPENBLAS_CORETYPE") and "--keep-openblas-coretype" not in sys.argv:
    _env = dict(os.environ)
    _env["FERROCLIP_BENCH_UNSET_CORETYPE"] = _env.pop("OPENBLAS_CORETYPE")
    os.execve(sys.executable, [sys.executable, *sys.argv], _env)

import argparse
import contextlib
import gc
import statistics
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import _harness  # noqa: E402

import ferroclip  # noqa: E402


def blas_threads(n: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n)


# Seconds of sleep before each timed call (see `interleaved_runs`); `main` raises it to
# what `blas_spin_seconds` measures on this host when that is longer.
SETTLE = 0.1


def blas_spin_seconds(threads: int) -> float:
    """How long numpy's BLAS keeps a core busy after a multi-threaded call, measured: the
    time until the process stops burning CPU while its only running thread sleeps.
    OpenBLAS's idle workers spin for 2^28 TSC cycles, ~70 ms at a 3.8 GHz TSC but ~134 ms
    at 2.0 GHz (a Sapphire Rapids-class guest): a fixed 0.1 s settle left ferroclip's
    2-thread recall sharing a core with a spinning worker for its first ~34 ms whenever it
    was timed right after the bare product."""
    if threads < 2:
        return 0.0
    a = np.ones((512, 512), np.float32)
    out = np.empty_like(a)
    worst = 0.0
    with blas_threads(threads):
        for _ in range(3):
            np.matmul(a, a, out=out)
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 2.0:
                c0 = time.process_time()
                time.sleep(0.01)
                if time.process_time() - c0 < 0.002:
                    break
            worst = max(worst, time.perf_counter() - t0)
    return worst


def wait_out_blas_spin(threads: int) -> float:
    """Raise `SETTLE` to outlast numpy's BLAS spin on this host (`blas_spin_seconds`, with
    a margin); returns the spin measured."""
    global SETTLE
    spin = blas_spin_seconds(threads)
    SETTLE = max(SETTLE, 1.25 * spin + 0.02)
    return spin


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median time per peer, peers timed in turn within each round (see `interleaved_runs`)."""
    return {name: statistics.median(times) for name, times in interleaved_runs(fns, repeats).items()}


def interleaved_runs(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Times per peer and round, peers timed in turn within each round, so a load change on
    a shared machine hits every peer alike. Each peer's first call is a warm-up; a peer whose
    call takes over 2 s keeps that single timing (its correctness run already warmed it).

    Each timed call starts `SETTLE` seconds after the previous one: OpenBLAS's worker
    threads spin for 2^28 TSC cycles (70-134 ms, see `blas_spin_seconds`) after each
    multi-threaded call, and OpenMP's
    (torch, faiss) spin too, so a millisecond call timed right after another library's would share the cores
    with those spinners (measured: ferroclip's 2-thread single query 7.7 ms alone, 16.8 ms
    right after a numpy matvec, 14.5 ms 10 ms after it)."""
    first = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - t0
    runs = {name: [] for name, t in first.items() if t <= 2.0}
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            for name in runs:
                time.sleep(SETTLE)
                t0 = time.perf_counter()
                fns[name]()
                runs[name].append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return {name: runs[name] if name in runs else [t] for name, t in first.items()}


def paired_runs(pair: dict, rounds: int) -> dict[str, list[float]]:
    """Times of two peers in back-to-back pairs, alternating which goes first (ABBA), after
    one warm-up call each: the steadiest ratio a shared host allows."""
    order = list(pair.items())
    for _, fn in order:
        fn()
    times: dict[str, list[float]] = {name: [] for name, _ in order}
    gc.collect()
    gc.disable()
    try:
        for i in range(rounds):
            for name, fn in order if i % 2 == 0 else order[::-1]:
                time.sleep(SETTLE)  # the other side's idle threads asleep (see `interleaved_runs`)
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return times


def paired_shares(subjects: dict, floor, rounds: int) -> dict[str, list[float]]:
    """Each subject's rate as a share of the floor's rate measured right beside it, per round.

    `subjects` maps a name to (call, work): the subject's rate is work / seconds of one call;
    `floor(name)` returns the floor's rate for that subject at that moment (itself a best of
    repeated measurements). Within a round the floor goes first, then the subject; the next
    round the other way round (ABBA). This is the steadiest share a shared host allows: here
    the clock and the neighbours' memory traffic swing the same call by 20-40% from one
    second to the next (a 5k x 25k sgemm: 1.17-1.79 s in 8 calls 0.1 s apart), so a median
    of the subject's calls set against a best-of floor taken minutes earlier mostly measures
    that swing."""
    shares: dict[str, list[float]] = {name: [] for name in subjects}
    gc.collect()
    gc.disable()
    try:
        for i in range(rounds):
            for name, (fn, work) in subjects.items():
                fl = floor(name) if i % 2 == 0 else None
                time.sleep(SETTLE)
                t0 = time.perf_counter()
                fn()
                rate = work / (time.perf_counter() - t0)
                if fl is None:
                    fl = floor(name)
                shares[name].append(rate / fl)
    finally:
        gc.enable()
    return shares


def share_summary(shares: list[float]) -> str:
    return f"median {100 * statistics.median(shares):.0f}% (range {100 * min(shares):.0f}-{100 * max(shares):.0f}%, {len(shares)} rounds)"


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


BARE = "bare matmul (numpy sgemm, preallocated output)"

# --- peers: top-k ------------------------------------------------------------------------------


def numpy_topk(q: np.ndarray, d: np.ndarray, k: int, chunk: int = 65536):
    """Chunked matmul + argpartition per chunk, then a stable exact sort of the survivors."""
    best_s, best_i = [], []
    for start in range(0, len(d), chunk):
        s = q @ d[start : start + chunk].T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        best_s.append(np.take_along_axis(s, part, 1))
        best_i.append(part + start)
    s, i = np.concatenate(best_s, 1), np.concatenate(best_i, 1)
    order = np.lexsort((i, -s), axis=-1)[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


def torch_topk(torch, tq, td, k: int, chunk: int = 131072):
    """mm + topk per database chunk (bounded memory), then topk over the survivors."""
    ss, ii = [], []
    for start in range(0, td.shape[0], chunk):
        s, i = torch.topk(tq @ td[start : start + chunk].T, min(k, td.shape[0] - start), dim=1)
        ss.append(s)
        ii.append(i + start)
    s, pos = torch.topk(torch.cat(ss, 1), k, dim=1)
    return s, torch.gather(torch.cat(ii, 1), 1, pos)


def check(got_i: np.ndarray, ref_i: np.ndarray, q: np.ndarray, d: np.ndarray) -> str:
    """Indices against the numpy reference: equal, or differing only on near-ties (the
    float64 scores of both answers agree to 1e-4)."""
    got_i = np.asarray(got_i)
    if np.array_equal(got_i, ref_i):
        return "same as numpy"
    q64 = q.astype(np.float64)
    got_s = np.einsum("qd,qkd->qk", q64, d[got_i].astype(np.float64))
    ref_s = np.einsum("qd,qkd->qk", q64, d[ref_i].astype(np.float64))
    gap = float(np.abs(got_s - ref_s).max())
    if gap > 1e-4:
        return f"WRONG (score gap {gap:.1e})"
    return f"near-ties ({int((got_i != ref_i).sum())} slots, gap {gap:.0e})"


# --- peers: Recall@K ---------------------------------------------------------------------------


def numpy_recall(img: np.ndarray, txt: np.ndarray, t2i: np.ndarray, ks) -> dict[str, float]:
    """Vectorised: one score matrix, ranks by counting (stable-sort ties), no Python loop."""
    s = img @ txt.T  # (I, T)
    cols = np.arange(s.shape[1])
    pos = s.T[np.arange(len(t2i)), t2i]  # each caption's score with its image
    t2i_rank = (s.T > pos[:, None]).sum(1) + ((s.T == pos[:, None]) & (np.arange(len(img)) < t2i[:, None])).sum(1)
    masked = np.where(t2i[None, :] == np.arange(len(img))[:, None], s, -np.inf)
    best = masked.argmax(1)  # first (lowest-index) best caption per image
    best_s = s[np.arange(len(img)), best]
    i2t_rank = (s > best_s[:, None]).sum(1) + ((s == best_s[:, None]) & (cols < best[:, None])).sum(1)
    out = {}
    for k in ks:
        out[f"i2t_R@{k}"] = float((i2t_rank < k).mean())
        out[f"t2i_R@{k}"] = float((t2i_rank < k).mean())
    return out


def clip_benchmark_recall(torch, img, txt, t2i, ks, batch_size: int = 64) -> dict[str, float]:
    """clip_benchmark/metrics/zeroshot_retrieval.py: topk one-hot over positive pairs."""

    def recall_at_k(scores, positive_pairs, k):
        nb_texts, nb_images = scores.shape
        topk_indices = torch.topk(scores, k, dim=1)[1]
        nb_positive = positive_pairs.sum(dim=1)
        onehot = torch.nn.functional.one_hot(topk_indices, num_classes=nb_images)
        nb_true_positive = (onehot * positive_pairs.view(nb_texts, 1, nb_images)).sum(dim=(1, 2))
        return nb_true_positive / nb_positive

    def batchify(func, X, Y, *args):
        return torch.cat([func(X[s : s + batch_size], Y[s : s + batch_size], *args) for s in range(0, len(X), batch_size)])

    scores = txt @ img.t()
    positive_pairs = torch.zeros_like(scores, dtype=bool)
    positive_pairs[torch.arange(len(scores)), t2i] = True
    out = {}
    for k in ks:
        out[f"t2i_R@{k}"] = (batchify(recall_at_k, scores, positive_pairs, k) > 0).float().mean().item()
        out[f"i2t_R@{k}"] = (batchify(recall_at_k, scores.T, positive_pairs.T, k) > 0).float().mean().item()
    return out


# --- floors ------------------------------------------------------------------------------------


def sgemm_peak(threads: int, n: int = 2048, repeats: int = 7) -> float:
    """numpy's sgemm GFLOP/s: the best of `repeats` calls (the floor is what the hardware
    gives when nothing else runs; a median would fold a neighbour's load into it)."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    with blas_threads(threads):
        np.matmul(a, b, out=out)
        best = best_time(lambda: np.matmul(a, b, out=out), repeats)
    return 2 * n**3 / best / 1e9


def best_time(fn, calls: int) -> float:
    """The fastest of `calls` timed calls of `fn` (a floor: what the hardware gives when
    nothing else runs)."""
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def sgemm_floor_beside(q: np.ndarray, d: np.ndarray, square: tuple, calls: int = 3):
    """A function giving numpy's sgemm FLOP/s at this moment, for `paired_shares`: the
    higher of the best of `calls` 2048^3 products (`square`: operands and output allocated
    once) and one bare product of the case's own shape (`q @ d.T` into an output allocated
    once, over at most 100k database rows), since OpenBLAS runs some shapes faster than the
    square one (5k x 25k x 512: 113 GFLOP/s at 1 thread where 2048^3 gave 92)."""
    a, b, o = square
    rows = d[: min(len(d), 100_000)]
    out = np.empty((len(q), len(rows)), np.float32)

    def floor(_name: str) -> float:
        best = best_time(lambda: np.matmul(a, b, out=o), calls)
        bare = best_time(lambda: np.matmul(q, rows.T, out=out), 1)
        return max(2 * a.shape[0] * a.shape[1] * b.shape[1] / best, 2 * len(q) * len(rows) * q.shape[1] / bare)

    return floor


def read_bandwidth(threads: int, nbytes: int = 1 << 30) -> float:
    """GB/s read by the probe's best simple loop over `nbytes` (see ferroclip_core::probe)."""
    data = np.ones(nbytes // 4, np.float32)
    return ferroclip._native.read_bandwidth(data, threads, 3)


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    t = _harness.median_time(lambda: np.copyto(dst, src), 5)
    return 2 * nbytes / t / 1e9


def recall_data(rng, ni: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit image rows, 5 noisy unit captions per image, and the caption -> image map."""
    img = rng.standard_normal((ni, dim), dtype=np.float32)
    txt = np.repeat(img, 5, axis=0) + 8.0 * rng.standard_normal((5 * ni, dim), dtype=np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return img, txt, np.repeat(np.arange(ni), 5)


def bare_product(img: np.ndarray, txt: np.ndarray):
    """The bare matrix product, ``img @ txt.T`` as one sgemm into an output allocated once:
    the product alone. (Allocating the 500 MB result on every call adds its page faults,
    0.2-1.5 s here, which would flatter anything compared with it.)"""
    out = np.empty((img.shape[0], txt.shape[0]), np.float32)
    return lambda: np.matmul(img, txt.T, out=out)


def recall_section(args, rng, peak, torch) -> tuple[list[str], dict[int, float]]:
    """The Recall@K table (5 captions per image), as report lines, and ferroclip's time /
    bare product per thread count."""
    ni = args.recall_images
    img, txt, t2i = recall_data(rng, ni, args.dim)
    ks = (1, 5, 10)
    keys = [f"{d}_R@{k}" for d in ("i2t", "t2i") for k in ks]
    recall_peers = {
        "ferroclip": lambda th: ferroclip.recall_at_k(img, txt, t2i, ks, num_threads=th),
        "numpy vectorised": lambda th: numpy_recall(img, txt, t2i, ks),
    }
    if torch is not None:
        ti, tt, tidx = torch.from_numpy(img), torch.from_numpy(txt), torch.from_numpy(t2i)
        recall_peers["CLIP_benchmark (torch)"] = lambda th: clip_benchmark_recall(torch, ti, tt, tidx, ks)
    bare = bare_product(img, txt)
    recall_peers[BARE] = lambda th: bare()
    results = {}
    for name, fn in recall_peers.items():
        if name == BARE:
            continue
        with blas_threads(max(args.threads)):
            results[name] = fn(max(args.threads))
    ref = results["numpy vectorised"]
    recall_rows = []
    ratios = {}
    for th in args.threads:
        if torch is not None:
            torch.set_num_threads(th)
        with blas_threads(th):
            slow = {name: (lambda fn=fn: fn(th)) for name, fn in recall_peers.items() if name not in ("ferroclip", BARE)}
            runs = interleaved_runs(slow, 3)
            pair = {name: (lambda fn=recall_peers[name]: fn(th)) for name in ("ferroclip", BARE)}
            runs.update(paired_runs(pair, args.recall_repeats))
        times = {name: statistics.median(runs[name]) for name in recall_peers}
        for name, t in times.items():
            # Against the bare product: ferroclip's is the median of per-round ratios (each
            # pair timed back to back, so a load change hits both), the others' of medians.
            if name == "ferroclip":
                ratio = statistics.median(a / b for a, b in zip(runs[name], runs[BARE]))
                ratios[th] = ratio
            else:
                ratio = t / times[BARE]
            flops = 2 * ni * 5 * ni * args.dim / t / 1e9
            if name in results:
                diff = max(abs(results[name][k] - ref[k]) for k in keys)
                agree = "same R@K" if diff == 0 else ("same R@K (float32 mean)" if diff <= 1e-6 else f"max diff {diff:.1e}")
            else:
                agree = "-"
            recall_rows.append([
                str(th), name, f"{t:.2f}", f"{flops:.0f} ({100 * flops / peak[th]:.0f}%)",
                f"{times['numpy vectorised'] / t:.2f}x", f"{ratio:.2f}", agree,
            ])
        print(f"recall threads={th}: " + ", ".join(f"{k} {v:.2f}s" for k, v in times.items()), flush=True)
    return [
        f"## Recall@K, {ni:,} images x {5 * ni:,} captions (5 each), D = {args.dim}, K = 1, 5, 10, both directions",
        "",
        "GFLOP/s counts one 2·I·T·D product, the work of the bare matmul row; ferroclip and the numpy",
        "implementation compute that product once for both directions, CLIP_benchmark once (then topk",
        "and one-hot per K and direction).",
        "",
        "The bare matmul is numpy's sgemm writing into an output allocated once, so it times the",
        "product alone (a fresh 500 MB result per call adds page faults that vary from run to run).",
        "",
        f"ferroclip and the bare matmul are timed in {args.recall_repeats} back-to-back pairs, alternating which",
        "goes first; their seconds are medians, and ferroclip's \"time / bare matmul\" is the median of",
        "the per-pair ratios, so a neighbour's load on a shared host hits both sides of a ratio alike.",
        "The other peers are timed interleaved (median of 3; a call over 2 s once). Every timed call",
        f"starts {SETTLE:.2f} s after the previous one, when no library's idle threads are still spinning.",
        "",
        _harness.markdown_table(
            ["threads", "implementation", "seconds", "GFLOP/s (% sgemm peak)", "speed-up vs numpy", "time / bare matmul", "agreement"],
            recall_rows,
        ),
        "",
        "Recall values (ferroclip): " + ", ".join(f"{k} {results['ferroclip'][k]:.4f}" for k in keys),
        "",
        "Agreement compares R@K with the numpy implementation's. Each side ranks its own float32",
        "scores, summed in its own order, so a caption whose positive score and a competitor's",
        "lie within float32 rounding (gaps of 1e-8 to 1e-7 in float64) can rank one place apart:",
        "one caption of 25,000 moves a t2i R@K by 4e-5 (checked on another seed: against float64",
        "ranks, ferroclip misranked 2 such captions and numpy 1).",
        "",
    ], ratios


def topk_goals(by_case: dict, args, peak: dict, read_bw: dict, paired: dict) -> list[str]:
    """The issue's top-k goals, checked on this run: each share is the median of ferroclip's
    per-round shares of the floor measured beside it (`paired_shares`); the share of the
    run's best floor (best of all its measurements, against ferroclip's median) follows it."""
    lines = []
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    for (n, nq, th, name), t in sorted(by_case.items()):
        if name not in ("ferroclip", "ferroclip f16"):
            continue
        shares = paired.get((n, nq, th, name))
        if not shares:
            continue
        share = statistics.median(shares)
        if nq >= 256:
            gf = 2 * nq * n * args.dim / t / 1e9
            lines.append(f"- top-k {nq} x {n:,}, {name}, {th} thread(s): {100 * share:.0f}% of the sgemm floor beside it "
                         f"(goal >= 90%): {met(share >= 0.9)}; {share_summary(shares)}; median {gf:.0f} GFLOP/s = "
                         f"{100 * gf / peak[th]:.0f}% of the run's best 2048^3 sgemm")
        elif nq == 1:
            peers = [by_case[(n, nq, th, p)] for p in ("numpy", "torch", "faiss") if (n, nq, th, p) in by_case]
            want = 1.2 if name == "ferroclip" else 2.0
            speedup = min(peers) / t if peers else float("nan")
            gbs = n * args.dim * (4 if name == "ferroclip" else 2) / t / 1e9
            one = by_case.get((n, nq, 1, name))
            slower = th > 1 and one is not None and t > one
            lines.append(f"- 1 query x {n:,}, {name}, {th} thread(s): {speedup:.2f}x the best peer (goal >= {want}): {met(speedup >= want)}; "
                         f"{100 * share:.0f}% of the read bandwidth on the same bytes beside it (goal >= 85%): {met(share >= 0.85)}, "
                         f"{share_summary(shares)}; median {gbs:.1f} GB/s = {100 * gbs / read_bw[th]:.0f}% of the run's best 1-GiB read"
                         + (f"; {'SLOWER' if slower else 'not slower'} than 1 thread ({one * 1e3:.1f} ms)" if th > 1 and one else ""))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000], help="database rows")
    ap.add_argument("--quick", action="store_true", help="skip the 1M-row database")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, nargs="+", default=[1, 1000])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--recall-images", type=int, default=5000, help="images in the Recall@K section (0 skips it)")
    ap.add_argument("--recall-repeats", type=int, default=12, help="ferroclip / bare matmul pairs timed in the Recall@K section")
    ap.add_argument("--out", type=Path, help="also write the report (markdown) here")
    ap.add_argument(
        "--keep-openblas-coretype",
        action="store_true",
        help="keep an OPENBLAS_CORETYPE set in the environment (default: unset it, so OpenBLAS uses its kernel for this CPU)",
    )
    args = ap.parse_args()
    sizes = [n for n in args.n if not (args.quick and n > 100_000)]

    report = ["# Retrieval benchmark", "", _harness.machine_header(["numpy", "torch", "faiss-cpu", "threadpoolctl"])]
    unset = os.environ.get("FERROCLIP_BENCH_UNSET_CORETYPE")
    coretype = os.environ.get("OPENBLAS_CORETYPE", "(unset)")
    if unset:
        coretype = f"(unset for this run; the environment had {unset}, which would hold OpenBLAS to that kernel)"
    report.append(f"OPENBLAS_CORETYPE={coretype}; command: `{' '.join(sys.argv)}`")
    report.append(f"ferroclip product backend: {ferroclip._native.gemm_backend()}")
    report.append(f"Load average (1/5/15 min) at start: {load_average()} on {os.cpu_count()} logical cores\n")
    spin = wait_out_blas_spin(max(args.threads))
    report.append(
        f"numpy's BLAS keeps a core busy {1e3 * spin:.0f} ms after a {max(args.threads)}-thread call on this host (measured), "
        f"so every timed call starts {SETTLE:.2f} s after the previous one.\n"
    )
    peak = {t: sgemm_peak(t) for t in args.threads}
    bw = copy_bandwidth()
    read_bw = {t: read_bandwidth(t) for t in args.threads}
    cpu = ferroclip._native.cpu_peak()
    if cpu is not None:
        report.append(
            f"Core: clock {cpu['clock_ghz']:.2f} GHz (dependent adds), {cpu['lanes']} f32 lanes x {cpu['fma_per_cycle']} FMA units: "
            f"theoretical {cpu['theoretical_gflops']:.0f} GFLOP/s per core, {cpu['measured_gflops']:.0f} measured by independent FMA chains\n"
        )
    floors_at = len(report)
    print("\n".join(report), flush=True)

    try:
        import faiss
    except ImportError:
        faiss = None
        print("faiss: not installed, skipped")
    try:
        import torch
    except ImportError:
        torch = None
        print("torch: not installed, skipped")

    print(f"floors at start: sgemm {peak} GFLOP/s, copy {bw:.1f} GB/s", flush=True)
    rng = np.random.default_rng(0)
    rows = []
    paired: dict[tuple, list[float]] = {}
    square = tuple(rng.standard_normal((2048, 2048), dtype=np.float32) for _ in range(3))
    for n in sizes:
        d = rng.standard_normal((n, args.dim), dtype=np.float32)
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        d16 = d.astype(np.float16)
        d16_wide = d16.astype(np.float32)
        index = None
        if faiss is not None:
            index = faiss.IndexFlatIP(args.dim)
            index.add(d)
        td = torch.from_numpy(d) if torch is not None else None
        for nq in args.queries:
            q = rng.standard_normal((nq, args.dim), dtype=np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            peers = {
                "ferroclip": (lambda th: ferroclip.topk(q, d, args.k, num_threads=th)[1], d, 4),
                "ferroclip f16": (lambda th: ferroclip.topk(q, d16, args.k, num_threads=th)[1], d16_wide, 2),
                "numpy": (lambda th: numpy_topk(q, d, args.k)[1], d, 4),
            }
            if torch is not None:
                tq = torch.from_numpy(q)
                peers["torch"] = (lambda th: torch_topk(torch, tq, td, args.k)[1].numpy(), d, 4)
            if index is not None:
                peers["faiss"] = (lambda th: index.search(q, args.k)[1], d, 4)
            status = {}
            with blas_threads(max(args.threads)):
                refs = {id(d): numpy_topk(q, d, args.k)[1], id(d16_wide): numpy_topk(q, d16_wide, args.k)[1]}
            for name, (fn, ref_db, _) in peers.items():  # correctness first, max threads
                with blas_threads(max(args.threads)):
                    if torch is not None:
                        torch.set_num_threads(max(args.threads))
                    if faiss is not None:
                        faiss.omp_set_num_threads(max(args.threads))
                    status[name] = check(fn(max(args.threads)), refs[id(ref_db)], q, ref_db)
            print(f"N={n} Q={nq}: " + ", ".join(f"{p} {s}" for p, s in status.items()), flush=True)
            for th in args.threads:
                if torch is not None:
                    torch.set_num_threads(th)
                if faiss is not None:
                    faiss.omp_set_num_threads(th)
                fns = {name: (lambda fn=fn: fn(th)) for name, (fn, _, _) in peers.items()}
                with blas_threads(th):
                    times = interleaved(fns, args.repeats if nq > 1 else 4 * args.repeats)
                for name, (_, _, elem_bytes) in peers.items():
                    rows.append((n, nq, th, name, times[name], elem_bytes, status[name]))
                print(f"  threads={th}: " + ", ".join(f"{p} {t * 1e3:.1f} ms" for p, t in times.items()), flush=True)
                # ferroclip against its floor measured beside each call (see `paired_shares`).
                ours = ("ferroclip", "ferroclip f16")
                if nq >= 256:
                    work = 2 * nq * n * args.dim
                    subjects = {name: (fns[name], work) for name in ours}
                    with blas_threads(th):
                        shares = paired_shares(subjects, sgemm_floor_beside(q, d, square), args.repeats)
                elif nq == 1:
                    # The floor reads the very bytes the call reads (the f16 rows seen as f32 words).
                    views = {"ferroclip": d.reshape(-1), "ferroclip f16": d16.reshape(-1).view(np.float32)}
                    subjects = {name: (fns[name], views[name].nbytes) for name in ours}
                    shares = paired_shares(subjects, lambda name: 1e9 * ferroclip._native.read_bandwidth(views[name], th, 1),
                                           4 * args.repeats)
                else:
                    shares = {}
                for name, got in shares.items():
                    paired[(n, nq, th, name)] = got
                    print(f"  threads={th}: {name} vs the floor beside it: {share_summary(got)}", flush=True)

        del d, d16, d16_wide, index, td

    # Floors again at the end: on a shared machine, other work can depress one measurement;
    # the higher of the two is the closer estimate of what the hardware gives.
    start = (dict(peak), bw)
    peak = {t: max(peak[t], sgemm_peak(t)) for t in args.threads}
    bw = max(bw, copy_bandwidth())
    start_read = dict(read_bw)
    read_bw = {t: max(read_bw[t], read_bandwidth(t)) for t in args.threads}
    theory = ""
    if cpu is not None:
        theory = " (theoretical " + ", ".join(f"{t * cpu['theoretical_gflops']:.0f}" for t in args.threads) + ")"
    report.insert(
        floors_at,
        "Floors (the higher of a measurement before and after the timings): numpy sgemm 2048^3 "
        + ", ".join(f"{peak[t]:.0f} GFLOP/s at {t} thread(s) (start {start[0][t]:.0f})" for t in args.threads)
        + theory
        + "; read bandwidth "
        + ", ".join(f"{read_bw[t]:.1f} GB/s at {t} thread(s) (start {start_read[t]:.1f})" for t in args.threads)
        + f"; numpy copy 1 GiB: {bw:.1f} GB/s read + write (start {start[1]:.1f})\n",
    )
    table = []
    by_case = {(n, nq, th, name): t for n, nq, th, name, t, _, _ in rows}
    for n, nq, th, name, t, eb, st in rows:
        flops = 2 * nq * n * args.dim / t / 1e9
        gbs = n * args.dim * eb / t / 1e9
        ratio = lambda p: f"{by_case[(n, nq, th, p)] / t:.2f}x" if (n, nq, th, p) in by_case else "-"  # noqa: E731
        table.append([
            f"{n:,}", str(nq), str(th), name, f"{nq / t:,.1f}", f"{t * 1e3:,.1f}",
            f"{flops:.0f} ({100 * flops / peak[th]:.0f}%)", f"{gbs:.1f} ({100 * gbs / read_bw[th]:.0f}%)",
            ratio("faiss"), ratio("numpy"), ratio("torch"), st,
        ])
    head = ["N", "Q", "threads", "peer", "queries/s", "ms/call", "GFLOP/s (% sgemm floor)", "GB/s read (% read bw)",
            "speed-up vs faiss", "vs numpy", "vs torch", "indices"]
    timing = (f"Peers are timed in turn, round after round: medians of {args.repeats} rounds ({4 * args.repeats} for one query, "
              f"each call {SETTLE:.2f} s after the previous one, so that no library's idle threads are still spinning: OpenBLAS's "
              "spin 2^28 TSC cycles after a call, measured at the top); a peer whose first call takes over 2 s is timed once, after that warm-up call.")
    report += [f"## Exact top-k, D = {args.dim}, k = {args.k}", "", timing, "", _harness.markdown_table(head, table), ""]

    goals = topk_goals(by_case, args, peak, read_bw, paired)
    if args.recall_images > 0:
        recall_lines, recall_ratio = recall_section(args, rng, peak, torch)
        report += recall_lines
        goals += [f"- Recall@K, {t} thread(s): {r:.2f}x the bare product (goal <= 1.05): {'met' if r <= 1.05 else 'NOT met'}"
                  for t, r in recall_ratio.items()]
    report += ["## Goals", "",
               "Top-k and one-query shares: the median of ferroclip's per-round shares of the floor measured right "
               "beside each call (alternating which goes first), then the share of the run's best floor.", "",
               *goals, ""]
    report.append(f"Load average at end: {load_average()}")
    text = "\n".join(report)
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
