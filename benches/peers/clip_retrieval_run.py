"""clip-retrieval's ``clip-retrieval inference`` timed on a JPEG folder, for bench_distributed.py.

Run with the peer venv's python (``.ci/venv.sh ferroclip_peer_venv clip-retrieval``), never
ferroclip's: clip-retrieval pins numpy<2, pyarrow<16, transformers<5, open-clip<3. This file
imports nothing from ferroclip or benches/, so it runs against the peer's packages only.

clip-retrieval loads models by hub name (``open_clip:ViT-B-32`` downloads the LAION weights);
this machine is offline. One thing is patched: ``open_clip.create_model_and_transforms``
is called with ``pretrained=None`` under ``torch.manual_seed(0)``, so open_clip builds
``ViT-B-32`` with random weights. The rest is clip-retrieval as shipped: its loader
(``all_clip.load_clip``: model wrapper, tokenizer, warm-up), ``clip_inference.main.main`` (the
function the ``clip-retrieval inference`` CLI calls through fire), its files reader (PIL plus
open_clip's preprocess in a torch DataLoader), its mapper (``encode_image``, L2 normalise,
float16), its numpy/parquet writer and its stats logger processes.

What the clock covers: one ``main.main(...)`` call per job, from listing the folder to the
written .npy/.parquet, including its DataLoader worker and logger process start-up. Not
covered: interpreter start, imports, and model construction plus clip-retrieval's warm-up,
done once beforehand through the same ``all_clip.load_clip`` call the worker makes, which is
``lru_cache``d: the jobs then hit that cache (checked below), as a long-lived worker would.

Before timing, a 4-image job's vectors are compared with the same model called directly
(open_clip's preprocess, ``encode_image``, normalise): clip-retrieval must compute what the
model computes. Writes one JSON object to --json (stdout is clip-retrieval's own chatter).

Run: <peer venv>/bin/python benches/peers/clip_retrieval_run.py --folder F --small S --json OUT [--batch-size 32]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODEL = "open_clip:ViT-B-32"


def _random_weights() -> None:
    """Make open_clip build every model with seeded random weights instead of downloading."""
    import open_clip
    import torch

    real = open_clip.create_model_and_transforms

    def create_model_and_transforms(model_name, pretrained=None, *args, **kwargs):
        torch.manual_seed(0)
        return real(model_name, None, *args, **kwargs)

    open_clip.create_model_and_transforms = create_model_and_transforms


def _load_kwargs(batch_size: int) -> dict:
    # Exactly what clip_retrieval.clip_inference.worker passes (main's use_jit default is False),
    # in the same order, so lru_cache sees the same key.
    return {"clip_model": MODEL, "use_jit": False, "warmup_batch_size": batch_size, "clip_cache_path": None}


def _job(folder: Path, out: Path, batch_size: int, workers: int) -> float:
    from clip_retrieval.clip_inference.main import main

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    main(input_dataset=str(folder), output_folder=str(out), input_format="files", batch_size=batch_size,
         num_prepro_workers=workers, clip_model=MODEL, use_jit=False, enable_wandb=False)
    return time.perf_counter() - t0


def _read(out: Path, folder: Path):
    """The job's embeddings by file name, after checking count, shape, dtype and unit norm."""
    import numpy as np
    import pandas as pd

    embs = np.concatenate([np.load(f) for f in sorted((out / "img_emb").glob("*.npy"))])
    names = [Path(p).name for f in sorted((out / "metadata").glob("*.parquet"))
             for p in pd.read_parquet(f)["image_path"]]
    files = sorted(p.name for p in folder.glob("*.jpg"))
    assert embs.shape == (len(files), 512) and embs.dtype == np.float16, (embs.shape, embs.dtype)
    assert sorted(names) == files, "clip-retrieval wrote other files than the folder holds"
    norms = np.linalg.norm(embs.astype(np.float32), axis=1)
    assert np.all(np.abs(norms - 1) < 1e-2), norms
    return dict(zip(names, embs.astype(np.float32)))


def _self_check(got: dict, folder: Path, batch_size: int) -> float:
    """Min cosine of clip-retrieval's vectors against the model called directly on the files."""
    import numpy as np
    import torch
    from all_clip import load_clip
    from PIL import Image

    model, preprocess, _ = load_clip(**_load_kwargs(batch_size))
    names = sorted(got)
    with torch.no_grad():
        x = torch.stack([preprocess(Image.open(folder / n)) for n in names])
        ref = model.encode_image(x)
        ref = (ref / ref.norm(dim=-1, keepdim=True)).numpy()
    return float(min(np.dot(got[n], r) / np.linalg.norm(got[n]) for n, r in zip(names, ref)))


def _stats(out: Path) -> dict:
    """clip-retrieval's own per-stage sums (its runner's stats file): read, inference, write."""
    stats: dict = {}
    for f in (out / "stats").glob("[0-9]*.json"):
        for k, v in json.loads(f.read_text()).items():
            stats[k] = stats.get(k, 0) + v
    return {k: stats.get(k) for k in ("sample_count", "read_duration", "inference_duration", "write_duration",
                                    "total_duration")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, required=True, help="the JPEG folder to embed")
    ap.add_argument("--small", type=Path, required=True, help="a 4-image folder: the fixed cost per job")
    ap.add_argument("--json", type=Path, required=True, help="where the result goes")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-prepro-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the mapper")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    t0 = time.perf_counter()
    import clip_retrieval.clip_inference.main  # noqa: F401  (what each of its spawned logger processes imports again)
    t_import = time.perf_counter() - t0
    import torch
    from all_clip import load_clip

    torch.set_num_threads(args.threads)
    _random_weights()
    t0 = time.perf_counter()
    load_clip(**_load_kwargs(args.batch_size))  # construction + clip-retrieval's warm-up, off the clock
    t_load = time.perf_counter() - t0

    tmp = Path(tempfile.mkdtemp(prefix="ferroclip-bench-clip-retrieval-"))
    try:
        _job(args.small, tmp / "check", args.batch_size, args.num_prepro_workers)
        min_cos = _self_check(_read(tmp / "check", args.small), args.small, args.batch_size)
        misses = load_clip.cache_info().misses
        jobs = range(args.repeats)
        t_small = [_job(args.small, tmp / "small", args.batch_size, args.num_prepro_workers) for _ in jobs]
        t_full = [_job(args.folder, tmp / "full", args.batch_size, args.num_prepro_workers) for _ in jobs]
        assert load_clip.cache_info().misses == misses, "a job constructed the model again: timing would include it"
        rows = len(_read(tmp / "full", args.folder))
        stats = _stats(tmp / "full")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    versions = {p: md.version(p) for p in ("clip-retrieval", "all-clip", "open_clip_torch", "torch", "numpy",
                                           "pyarrow", "pillow", "webdataset")}
    args.json.write_text(json.dumps({
        "images": rows, "t_full": statistics.median(t_full), "t_small": statistics.median(t_small),
        "t_load": t_load, "t_import": t_import, "min_cos_self": min_cos, "batch_size": args.batch_size,
        "num_prepro_workers": args.num_prepro_workers, "threads": args.threads, "repeats": args.repeats,
        "stats": stats, "versions": versions, "python": sys.executable,
    }), encoding="utf-8")


if __name__ == "__main__":
    main()
