"""Recall@K against the bare matrix product, timed in back-to-back pairs (ABBA order).

A focused check of one ratio from `bench_retrieval.py`: ferroclip's `recall_at_k` (both
directions from one product) over numpy's `img @ txt.T` alone, 5k images x 25k captions,
D = 512, on 1 and 2 threads, in a fresh process with nothing else timed in it. Each pair
runs the two back to back, alternating which goes first, so a neighbour's load on a
shared host hits both sides of a ratio alike.

    python benches/bench_recall_pairs.py [rounds]
"""

import statistics
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

import ferroclip


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    rng = np.random.default_rng(0)
    ni, dim = 5000, 512
    img = rng.standard_normal((ni, dim), dtype=np.float32)
    txt = np.repeat(img, 5, axis=0) + 8.0 * rng.standard_normal((5 * ni, dim), dtype=np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    t2i = np.repeat(np.arange(ni), 5)
    for th in (1, 2):
        pair = {
            "ferroclip": lambda: ferroclip.recall_at_k(img, txt, t2i, (1, 5, 10), num_threads=th),
            "bare matmul": lambda: img @ txt.T,
        }
        times: dict[str, list[float]] = {name: [] for name in pair}
        with threadpool_limits(th):
            for fn in pair.values():
                fn()  # warm-up
            order = list(pair.items())
            for i in range(rounds):
                for name, fn in order if i % 2 == 0 else order[::-1]:
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
        ratios = sorted(a / b for a, b in zip(times["ferroclip"], times["bare matmul"]))
        print(
            f"threads={th}, {rounds} pairs: ferroclip median {statistics.median(times['ferroclip']):.3f} s, "
            f"bare matmul median {statistics.median(times['bare matmul']):.3f} s; ferroclip / matmul: "
            f"median {statistics.median(ratios):.3f}, quartiles {ratios[len(ratios) // 4]:.3f}-{ratios[3 * len(ratios) // 4]:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
