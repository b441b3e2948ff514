"""End-to-end seed-000 workflow on real labelled pixels, offline: Fashion-MNIST images as
PNG files in class folders -> ferroclip model embeddings (cached folder embedder) -> 10-fold
ridge probe, next to a probe on the raw pixels of the same images.

Fashion-MNIST comes from Debian (``apt-get install dataset-fashion-mnist``). The default
model is a ViT-B/32-sized CLIP with **random weights** (no hub access here): its features
are random non-linear projections of the pixels, so this checks the pipeline and gives a
baseline, not CLIP's accuracy. With internet, pass ``--model clip-vit-b-32`` (or
``siglip2-so400m-14-384``, ...) for real features.

Run: python benches/example_fashion_mnist_probe.py [--n 1000] [--model DIR_OR_NAME] [--out report.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import build_checkpoint  # noqa: E402
from bench_train import CLASSES, FMNIST, _idx  # noqa: E402

import ferroclip  # noqa: E402
from ferroclip.train import linear_probe  # noqa: E402
from ferroclip.train.data import labels_from_folder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="images (the first N of the training set)")
    ap.add_argument("--model", default=None, help="model for features (default: random-weight ViT-B/32, exported to ONNX)")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not (FMNIST / "train-images-idx3-ubyte.gz").is_file():
        sys.exit(f"{FMNIST} not found: apt-get install dataset-fashion-mnist")

    tmp = Path(tempfile.mkdtemp(prefix="ferroclip-fmnist-"))
    pixels = _idx(FMNIST / "train-images-idx3-ubyte.gz")[: args.n]
    labels = np.array(CLASSES)[_idx(FMNIST / "train-labels-idx1-ubyte.gz")[: args.n]]
    root = tmp / "fashion-mnist"
    for i, (img, label) in enumerate(zip(pixels, labels)):
        d = root / label.replace("/", "-")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:05d}.png")

    if args.model is None:
        ckpt = build_checkpoint(tmp)
        model_src = ferroclip.export_onnx(ferroclip.load_model(ckpt, device="cpu"), tmp / "onnx")
        model_name = "ViT-B/32-sized CLIP, random weights (ONNX Runtime)"
    else:
        model_src, model_name = args.model, args.model
    model = ferroclip.load_model(model_src)
    t0 = time.perf_counter()
    emb = ferroclip.embed_folder(model, root, tmp / "cache", batch_size=64)
    embed_s = time.perf_counter() - t0
    paths, folder_labels = labels_from_folder(root)
    by_path = dict(zip((str(Path(p).resolve()) for p in paths), folder_labels))
    y = [by_path[str(emb.root / p)] for p in emb.paths]

    order = np.array([int(Path(p).stem) for p in emb.paths])
    raw = pixels[order].reshape(len(order), -1).astype(np.float32) / 255.0
    results = [
        ("raw pixels (784-d)", linear_probe(raw, y, folds=args.folds, name="pixels")),
        (f"ferroclip embeddings ({model.dim}-d, {model_name})", linear_probe(emb.embeddings, y, folds=args.folds, name="model")),
    ]
    lines = [
        "# Fashion-MNIST linear probe, end to end\n",
        f"{len(emb)} images (first {args.n} of the training set, PNG files in class folders, {len(emb.errors)} failed); "
        f"embedding took {embed_s:.1f} s ({len(emb) / embed_s:.1f} images/s, preprocessing + model). "
        f"Ridge probe, {args.folds}-fold stratified CV, alpha by exact inner leave-one-out.\n",
        "| features | accuracy (mean ± std) | balanced accuracy | probe seconds |",
        "|---|---|---|---|",
    ]
    for name, r in results:
        (a, sa), (b, sb) = r.accuracy, r.balanced_accuracy
        lines.append(f"| {name} | {a:.4f} ± {sa:.4f} | {b:.4f} ± {sb:.4f} | {r.seconds:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
