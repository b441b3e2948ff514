"""Training on frozen embeddings: ferroclip vs the plain loops people write today, one run.

    python benches/bench_train.py            # heads: 20k images x 2048/1024-d, probe: 10k Fashion-MNIST
    python benches/bench_train.py --quick    # smaller, about a minute on 2 cores

1. Projection-head training throughput (pairs/s, training steps only, validation excluded):
   ``ferroclip.train.train_heads`` against the seed's pattern, a plain PyTorch loop over a
   ``TensorDataset`` + ``DataLoader(shuffle=True)`` of (image, caption) pairs with the same
   head, loss, AdamW, batch size and thread count. Both must learn: held-out R@1 is
   reported next to the speed (a fast loop that learns nothing would show as such).
2. Linear-probe wall time: ``ferroclip.train.linear_probe`` (ridge, stratified 10-fold,
   alpha by inner leave-one-out) against ``cross_val_score(RidgeClassifierCV(alphas),
   cv=StratifiedKFold(10))`` on the same L2-normalised features. The per-fold accuracies
   must be identical; the ``correct`` column says whether they are.

Probe features are Fashion-MNIST raw pixels (784-d, /usr/share/datasets/fashion-mnist from
``apt-get install dataset-fashion-mnist``), not a model's embeddings: ferroclip's model
backends live on another branch. Without the dataset, Gaussian-blob features are used and
the table says so.
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_header, markdown_table  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def planted(n_images, image_dim, text_dim, captions=5, noise=0.8, seed=0):
    """Text = fixed random rotation of the image embedding + noise, ``captions`` per image."""
    from ferroclip.train.data import PairedEmbeddings

    rng = np.random.default_rng(seed)
    img = rng.standard_normal((n_images, image_dim)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    rot = np.linalg.qr(rng.standard_normal((text_dim, image_dim)))[0].T.astype(np.float32)
    t2i = np.repeat(np.arange(n_images), captions)
    txt = img[t2i] @ rot + noise * rng.standard_normal((len(t2i), text_dim)).astype(np.float32) / np.sqrt(text_dim)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return PairedEmbeddings(img, txt.astype(np.float32), tuple(map(str, range(n_images))), t2i.astype(np.int64))


def plain_loop(cfg, train, epochs):
    """The seed's pattern: DataLoader over (image, caption) pairs, same model and loss."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from ferroclip.train.heads import build_model
    from ferroclip.losses import infonce_loss

    torch.manual_seed(0)
    model = build_model(cfg, train.image_dim, train.text_dim)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.training.learning_rate,
                            weight_decay=cfg.training.weight_decay)
    ds = TensorDataset(torch.from_numpy(train.images[train.text_to_image]), torch.from_numpy(train.texts))
    loader = DataLoader(ds, batch_size=cfg.training.batch_size, shuffle=True, drop_last=True)
    seen, t0 = 0, time.perf_counter()
    model.train()
    for _ in range(epochs):
        for img, txt in loader:
            loss = infonce_loss(model.encode_image(img), model.encode_text(txt), model.scale())
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(img)
    return model.eval(), seen / (time.perf_counter() - t0)


def bench_heads(args, rows_out):
    import torch

    from ferroclip.train import HeadsConfig, evaluate_heads, split_images, train_heads

    torch.set_num_threads(args.threads)
    data = planted(args.images, args.image_dim, args.text_dim)
    split = split_images(data, val=0.05, test=0.05, seed=0)
    train, val, test = (split.part(data, k) for k in ("train", "val", "test"))
    rows = []
    for head in args.heads:
        cfg = HeadsConfig.from_dict({
            "model": {"type": head, "output_dim": 256, "hidden_dim": 512, "num_heads": 8, "num_layers": 1},
            "loss": {"type": "infonce", "temperature": 0.05},
            "training": {"batch_size": args.batch_size, "learning_rate": 1e-3, "num_epochs": args.epochs,
                         "patience": 100, "device": "cpu", "num_threads": args.threads, "progress": False,
                         "grad_clip": None, "warmup_ratio": 0.0},
        })
        f_sps, p_sps, f_r1, p_r1 = [], [], 0.0, 0.0
        for _ in range(args.repeats):
            # ferroclip visits each image once per epoch; the plain loop each (image, caption) pair.
            # Give ferroclip 5x the epochs so both process the same number of pairs.
            cfg.training.num_epochs = args.epochs * 5
            res = train_heads(cfg, train, val, plots=False)
            f_sps.append(res.samples_per_second)
            f_r1 = evaluate_heads(res.model, test, plots=False)["r1_mean"]
            model, sps = plain_loop(cfg, train, args.epochs)
            p_sps.append(sps)
            p_r1 = evaluate_heads(model, test, plots=False)["r1_mean"]
        fm, pm = statistics.median(f_sps), statistics.median(p_sps)
        rows.append([head, f"{args.batch_size}", f"{args.threads}", f"{fm:,.0f}", f"{pm:,.0f}", f"{fm / pm:.2f}x",
                     f"{f_r1:.3f}", f"{p_r1:.3f}"])
        print(f"heads {head}: ferroclip {fm:,.0f}/s plain {pm:,.0f}/s", file=sys.stderr, flush=True)
    rows_out.append((
        f"### Head training, CPU ({args.images:,} images x 5 captions, {args.image_dim}-d images, {args.text_dim}-d "
        f"text, infonce, median of {args.repeats})\n\nChance R@1 on the {len(test.images)} test images is "
        f"{1 / len(test.images):.4f}.\n",
        markdown_table(["head", "batch", "threads", "ferroclip pairs/s", "plain DataLoader loop pairs/s",
                        "ratio", "ferroclip test R@1", "plain loop test R@1"], rows),
    ))


def _idx(path):
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def probe_features(n):
    if (FMNIST / "train-images-idx3-ubyte.gz").is_file():
        x = _idx(FMNIST / "train-images-idx3-ubyte.gz")[:n].reshape(n, -1).astype(np.float32) / 255.0
        y = np.array(CLASSES)[_idx(FMNIST / "train-labels-idx1-ubyte.gz")[:n]]
        return x, y, f"Fashion-MNIST train[:{n}], raw pixels (784-d)"
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, n)
    x = (rng.standard_normal((10, 784))[y] + 3 * rng.standard_normal((n, 784))).astype(np.float32)
    return x, np.array(CLASSES)[y], f"Gaussian blobs ({n} x 784-d; Fashion-MNIST not installed)"


def bench_probe(args, rows_out):
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    from ferroclip.train import linear_probe
    from ferroclip.train.probe import DEFAULT_ALPHAS, l2_normalize

    x, y, what = probe_features(args.probe_samples)
    xn = l2_normalize(x)
    ref_scores = None

    def sk():
        nonlocal ref_scores
        cv = StratifiedKFold(10, shuffle=True, random_state=0)
        ref_scores = cross_val_score(RidgeClassifierCV(alphas=DEFAULT_ALPHAS), xn, y, cv=cv)

    results = {}
    timings = {}
    for name, fn in [
        ("scikit-learn cross_val_score(RidgeClassifierCV)", sk),
        ("ferroclip linear_probe (n_jobs=1)", lambda: results.__setitem__(1, linear_probe(x, y, folds=10))),
        (f"ferroclip linear_probe (n_jobs={args.threads})",
         lambda: results.__setitem__(2, linear_probe(x, y, folds=10, n_jobs=args.threads))),
    ]:
        ts = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        timings[name] = statistics.median(ts)
        print(f"probe {name}: {timings[name]:.2f}s", file=sys.stderr, flush=True)
    base = timings["scikit-learn cross_val_score(RidgeClassifierCV)"]
    rows = []
    for name, t in timings.items():
        if name.startswith("ferroclip"):
            r = results[1 if "n_jobs=1" in name else 2]
            ok = np.allclose(r.fold_accuracy, ref_scores)
            acc = f"{r.accuracy[0]:.4f} ± {r.accuracy[1]:.4f}"
        else:
            ok, acc = True, f"{np.mean(ref_scores):.4f} ± {np.std(ref_scores, ddof=1):.4f}"
        rows.append([name, f"{t:.2f}", f"{base / t:.2f}x", acc, "yes" if ok else "NO"])
    bal = results[1].balanced_accuracy
    rows_out.append((
        f"### Linear probe: {what}, ridge, 10-fold, median of {args.repeats}\n\n"
        f"ferroclip also reports balanced accuracy ({bal[0]:.4f} ± {bal[1]:.4f}), the chosen alpha per fold and "
        "the out-of-fold confusion matrix; those extras are inside its time.\n",
        markdown_table(["probe", "seconds", "speed vs scikit-learn", "accuracy (mean ± std over folds)",
                        "same folds as scikit-learn"], rows),
    ))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--heads", nargs="+", default=["mlp", "clip", "siglip"])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "train-x86_64.md"))
    args = ap.parse_args()
    q = args.quick
    args.images = 4000 if q else 20000
    args.image_dim, args.text_dim = (512, 768) if q else (1152, 4096)
    args.batch_size = 512
    args.epochs = 1 if q else 2
    args.probe_samples = 5000 if q else 20000
    args.repeats = args.repeats or (3 if q else 3)

    import torch

    sections = []
    bench_probe(args, sections)
    bench_heads(args, sections)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    head = (f"## Training benchmarks ({'--quick' if q else 'full'}, git {sha})\n\n"
            + machine_header(["numpy", "torch", "scikit-learn", "optuna"])
            + f"\ntorch threads: {args.threads} (torch.get_num_threads()={torch.get_num_threads()}); "
            "scikit-learn uses its BLAS's default threads.\n")
    text = head + "\n" + "\n\n".join(f"{title}\n{table}" for title, table in sections) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
