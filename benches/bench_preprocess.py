"""Preprocessing throughput: ferroclip vs the tools people use today, in one run.

Peers (each skipped with a note if it does not import):
  * HF PIL   - transformers' CLIPImageProcessorPil on PIL images (the reference)
  * HF fast  - transformers' CLIPImageProcessor (torchvision backend) on torchvision.io.decode_image
  * open_clip- open_clip's eval transform on PIL images
  * PIL+numpy- hand-written PIL resize/crop + numpy normalise
  * draft + cv2 - "best hand-tuned": libjpeg-turbo DCT-scaled decode + OpenCV bicubic (not exact)
  * hf-processors-rs - a Rust re-implementation on PyPI (paths in, threads inside)
  * decode floors - PIL full decode; PIL draft (libjpeg-turbo DCT-scaled) decode

Every timed call starts from files on disk (page cache warm) and ends with a float batch.
Peers at 2 workers run in a 2-process pool that returns only a checksum (their IPC cost
is left out, to their advantage); ferroclip runs 2 threads in-process and returns the batch.

Run: python benches/bench_preprocess.py [--quick] [--out benches/results/preprocess.md]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_header, markdown_table, median_time  # noqa: E402

import ferroclip  # noqa: E402
from ferroclip import PreprocessConfig, Preprocessor  # noqa: E402

SIZE = 224


# ------------------------------------------------------------------ corpus
def photo(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Photo-like content (smooth colour field + fine noise), so JPEG sizes are realistic."""
    coarse = rng.integers(0, 256, (max(2, h // 24), max(2, w // 24), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
    noise = rng.normal(0, 6, (h, w, 3)).astype(np.int16)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def make_corpus(root: Path, quick: bool) -> dict[str, list[str]]:
    rng = np.random.default_rng(0)
    spec = {
        "640x480 JPEG": (640, 480, "JPEG", 24 if quick else 96),
        "1920x1080 JPEG": (1920, 1080, "JPEG", 8 if quick else 24),
        "4000x3000 JPEG": (4000, 3000, "JPEG", 3 if quick else 8),
        "PNG (mixed)": (0, 0, "PNG", 8 if quick else 24),
    }
    corpus: dict[str, list[str]] = {}
    for name, (w, h, fmt, n) in spec.items():
        d = root / name.replace(" ", "_").replace("(", "").replace(")", "")
        d.mkdir(parents=True, exist_ok=True)
        files = []
        for i in range(n):
            f = d / f"{i:04d}.{fmt.lower()}"
            if not f.exists():
                if fmt == "PNG":
                    ww, hh = [(640, 480), (800, 600), (500, 750), (1024, 768)][i % 4]
                    img = Image.fromarray(photo(rng, ww, hh))
                    if i % 3 == 1:
                        img = img.convert("RGBA")
                    elif i % 3 == 2:
                        img = img.convert("L")
                    img.save(f, "PNG")
                else:
                    Image.fromarray(photo(rng, w, h)).save(f, "JPEG", quality=90)
            files.append(str(f))
        corpus[name] = files
    return corpus


# ------------------------------------------------------------------ peers
def _clip_pil():
    from transformers import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil()

    def run(files):
        imgs = [ImageOps.exif_transpose(Image.open(f)) for f in files]
        return proc(images=imgs, return_tensors="np")["pixel_values"]

    return run


def _clip_fast():
    import torch
    from torchvision.io import decode_image, read_file
    from transformers import CLIPImageProcessor

    torch.set_num_threads(1)
    proc = CLIPImageProcessor()

    def run(files):
        imgs = [decode_image(read_file(f), mode=__import__("torchvision").io.ImageReadMode.RGB) for f in files]
        return proc(images=imgs, return_tensors="pt")["pixel_values"].numpy()

    return run


def _open_clip():
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2

    torch.set_num_threads(1)
    tf = image_transform_v2(PreprocessCfg(size=(SIZE, SIZE)), is_train=False)

    def run(files):
        return torch.stack([tf(Image.open(f).convert("RGB")) for f in files]).numpy()

    return run


def _pil_numpy():
    mean = np.array(ferroclip.CLIP_MEAN, np.float32)
    std = np.array(ferroclip.CLIP_STD, np.float32)

    def one(f):
        img = Image.open(f).convert("RGB")
        w, h = img.size
        s = SIZE / min(w, h)
        img = img.resize((max(SIZE, int(w * s)), max(SIZE, int(h * s))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - SIZE) // 2, (h - SIZE) // 2
        a = np.asarray(img.crop((left, top, left + SIZE, top + SIZE)), np.float32) / 255.0
        return ((a - mean) / std).transpose(2, 0, 1)

    def run(files):
        return np.stack([one(f) for f in files])

    return run


def _cv2_hand_tuned():
    """The issue's "best hand-tuned" pipeline: libjpeg-turbo DCT-scaled decode (PIL draft),
    OpenCV bicubic resize, numpy crop + normalise. Fast, not exact."""
    import cv2

    cv2.setNumThreads(1)
    mean = np.array(ferroclip.CLIP_MEAN, np.float32) * 255.0
    inv_std = 1.0 / (np.array(ferroclip.CLIP_STD, np.float32) * 255.0)

    def one(f):
        img = Image.open(f)
        if img.format == "JPEG":
            img.draft("RGB", (SIZE, SIZE))
        a = np.asarray(img.convert("RGB"))
        h, w = a.shape[:2]
        s = SIZE / min(w, h)
        a = cv2.resize(a, (max(SIZE, int(w * s)), max(SIZE, int(h * s))), interpolation=cv2.INTER_CUBIC)
        h, w = a.shape[:2]
        top, left = (h - SIZE) // 2, (w - SIZE) // 2
        a = a[top : top + SIZE, left : left + SIZE].astype(np.float32)
        return ((a - mean) * inv_std).transpose(2, 0, 1)

    def run(files):
        return np.stack([one(f) for f in files])

    return run


def _hf_processors_rs(threads: int):
    import hf_processors_rs as hpr

    proc = hpr.ImageProcessor.from_dict({}, backend="pil", processor_type="CLIPImageProcessor")

    def run(files):
        return proc(files, num_threads=threads)

    return run


def _pil_decode():
    def run(files):
        for f in files:
            Image.open(f).convert("RGB").load()

    return run


def _pil_draft():
    def run(files):
        for f in files:
            img = Image.open(f)
            if img.format == "JPEG":
                img.draft("RGB", (SIZE, SIZE))
            img.convert("RGB").load()

    return run


def _ferroclip(threads: int, fast: bool):
    pre = Preprocessor(PreprocessConfig.clip(SIZE), num_threads=threads, fast=fast)

    def run(files):
        return pre.preprocess(files).pixel_values

    return run


PEERS: dict[str, Callable[[], Callable]] = {
    "HF PIL (ref)": _clip_pil,
    "HF fast + tv decode": _clip_fast,
    "open_clip": _open_clip,
    "PIL+numpy": _pil_numpy,
    "draft + cv2 (hand-tuned)": _cv2_hand_tuned,
    "PIL decode (floor)": _pil_decode,
    "PIL draft decode (floor)": _pil_draft,
}

# ------------------------------------------------------------- process pool
_WORKER_FN: Callable | None = None


def _init_worker(name: str) -> None:
    global _WORKER_FN
    os.environ["OMP_NUM_THREADS"] = "1"
    _WORKER_FN = PEERS[name]()


def _work(files: list[str]) -> float:
    out = _WORKER_FN(files)  # type: ignore[misc]
    return float(np.asarray(out).sum()) if out is not None else 0.0


def time_peer_processes(name: str, files: list[str], repeats: int) -> float:
    ctx = mp.get_context("fork")
    with ctx.Pool(2, initializer=_init_worker, initargs=(name,)) as pool:
        halves = [files[0::2], files[1::2]]
        return median_time(lambda: pool.map(_work, halves), repeats)


# ------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small corpus, fewer repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--corpus", default=os.path.join(tempfile.gettempdir(), "ferroclip-bench-corpus"))
    ap.add_argument("--out", default=None, help="also write the markdown report here")
    args = ap.parse_args()
    repeats = args.repeats or (3 if args.quick else 5)
    corpus = make_corpus(Path(args.corpus), args.quick)

    available: dict[str, Callable[[], Callable]] = {}
    notes = []
    for name, factory in PEERS.items():
        try:
            factory()
            available[name] = factory
        except Exception as exc:  # a missing optional peer is a note, not a failure
            notes.append(f"- {name}: skipped ({type(exc).__name__}: {exc})")
    try:
        _hf_processors_rs(1)
        hpr_ok = True
    except Exception as exc:
        hpr_ok = False
        notes.append(f"- hf-processors-rs: skipped ({type(exc).__name__}: {exc})")

    # Fidelity first: every row's max abs diff against the reference on the first images.
    ref_fn = _clip_pil()
    diffs: dict[str, float] = {}
    probe = [f for files in corpus.values() for f in files[:2]]
    ref = ref_fn(probe)
    for name, fn in [
        ("ferroclip exact", _ferroclip(1, False)),
        ("ferroclip fast", _ferroclip(1, True)),
        *[(n, f()) for n, f in available.items() if "floor" not in n and "ref" not in n],
        *([("hf-processors-rs", _hf_processors_rs(1))] if hpr_ok else []),
    ]:
        diffs[name] = float(np.abs(np.asarray(fn(probe), np.float32) - ref).max())
    diffs["HF PIL (ref)"] = 0.0

    results: dict[tuple[str, str, int], float] = {}
    for cname, files in corpus.items():
        n = len(files)
        for threads in (1, 2):
            rows = [
                (f"ferroclip exact", _ferroclip(threads, False), True),
                (f"ferroclip fast", _ferroclip(threads, True), True),
            ]
            if hpr_ok:
                rows.append(("hf-processors-rs", _hf_processors_rs(threads), True))
            for name, fn, inproc in rows:
                t = median_time(lambda fn=fn: fn(files), repeats)
                results[(cname, name, threads)] = n / t
            for name, factory in available.items():
                if threads == 1:
                    fn = factory()
                    t = median_time(lambda fn=fn: fn(files), repeats)
                else:
                    t = time_peer_processes(name, files, repeats)
                results[(cname, name, threads)] = n / t
            print(f"done {cname} x{threads}", file=sys.stderr, flush=True)

    names = ["ferroclip exact", "ferroclip fast"] + (["hf-processors-rs"] if hpr_ok else []) + list(available)
    report = [
        "# Preprocessing benchmark (CLIP 224: shortest edge, centre crop, bicubic, normalise)",
        "",
        machine_header(["ferroclip", "numpy", "pillow", "transformers", "torch", "torchvision", "open_clip_torch", "hf-processors-rs"]),
        f"Images/s, median of {repeats} runs over the whole corpus directory (files on disk, page cache warm). "
        "Threads: ferroclip and hf-processors-rs use N threads in one process; Python peers at 2 use a "
        "2-process pool (returning only a checksum).",
        "",
    ]
    for threads in (1, 2):
        header = ["corpus"] + names + [
            "exact / HF PIL", "exact / HF fast", "fast / draft floor", "exact / decode floor", "fast / hand-tuned"
        ]
        rows = []
        for cname, files in corpus.items():
            r = [cname + f" ({len(files)} files)"]
            for name in names:
                v = results.get((cname, name, threads))
                r.append(f"{v:.1f}" if v else "-")

            def ratio(a, b):
                x, y = results.get((cname, a, threads)), results.get((cname, b, threads))
                return f"{x / y:.2f}x" if x and y else "-"

            r += [
                ratio("ferroclip exact", "HF PIL (ref)"),
                ratio("ferroclip exact", "HF fast + tv decode"),
                ratio("ferroclip fast", "PIL draft decode (floor)"),
                ratio("ferroclip exact", "PIL decode (floor)"),
                ratio("ferroclip fast", "draft + cv2 (hand-tuned)"),
            ]
            rows.append(r)
        report += [f"## {threads} thread{'s' if threads > 1 else ''} / worker{'s' if threads > 1 else ''}", "", markdown_table(header, rows), ""]
    report += ["## Fidelity: max abs difference to the reference (HF PIL) on 2 images per corpus", ""]
    report += [markdown_table(["pipeline", "max abs diff"], [[k, f"{v:.3g}"] for k, v in diffs.items()]), ""]
    if notes:
        report += ["Skipped peers:", *notes, ""]
    text = "\n".join(report)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
