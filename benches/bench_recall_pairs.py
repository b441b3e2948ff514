"""Recall@K against the bare matrix product, timed in back-to-back pairs (ABBA order).

A focused check of one ratio from `bench_retrieval.py`, with its data and its pairing:
ferroclip's `recall_at_k` (both directions from one product) over numpy's `img @ txt.T`
alone (one sgemm into a preallocated output, `bench_retrieval.bare_product`), 5k images x
25k captions, D = 512, on 1 and 2 threads, in a fresh process with nothing else timed in it.

    python benches/bench_recall_pairs.py [pairs]
"""

import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench_retrieval  # noqa: E402
from bench_retrieval import bare_product, blas_threads, paired_runs, recall_data  # noqa: E402

import ferroclip  # noqa: E402


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    spin = bench_retrieval.wait_out_blas_spin(2)
    print(f"numpy's BLAS spins {1e3 * spin:.0f} ms after a 2-thread call here; calls start {bench_retrieval.SETTLE:.2f} s apart", flush=True)
    img, txt, t2i = recall_data(np.random.default_rng(0), 5000, 512)
    bare = bare_product(img, txt)
    for th in (1, 2):
        pair = {
            "ferroclip": lambda: ferroclip.recall_at_k(img, txt, t2i, (1, 5, 10), num_threads=th),
            "bare matmul": bare,
        }
        with blas_threads(th):
            times = paired_runs(pair, rounds)
        ratios = sorted(a / b for a, b in zip(times["ferroclip"], times["bare matmul"]))
        print(
            f"threads={th}, {rounds} pairs: ferroclip median {statistics.median(times['ferroclip']):.3f} s, "
            f"bare matmul median {statistics.median(times['bare matmul']):.3f} s; ferroclip / matmul: "
            f"median {statistics.median(ratios):.3f}, quartiles {ratios[len(ratios) // 4]:.3f}-{ratios[3 * len(ratios) // 4]:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
