"""End-to-end embedding throughput on CPU: JPEG files in, embeddings out, in one run.

Model: a ViT-B/32-sized CLIP (transformers' default ``CLIPConfig``: 12 x 768 vision, 12 x
512 text, 512-d projection) with random weights, saved as a local checkpoint: the compute
is that of openai/clip-vit-base-patch32, no download needed. The tokenizer is CLIP's real
BPE vocabulary (``bpe_simple_vocab_16e6.txt.gz`` from the open_clip wheel).

Rows (images/s from 640x480 JPEG files, median of repeats, batch 32):
  * ferroclip torch / onnx - ``load_model(...).encode_images(paths)``: Rust preprocessing of
    batch i+1 on a worker thread while the model runs batch i.
  * transformers           - PIL open + CLIPImageProcessor (PIL backend) + get_image_features.
  * open_clip              - PIL open + its eval transform + encode_image (same architecture).
  * model only (torch/ORT) - the forward pass on a ready tensor: the ceiling for any pipeline.
  * preprocessing only     - ferroclip's Preprocessor vs transformers' processor.
Text rows: 256 captions through each tokenizer + text tower.

Each thread count is measured in its own fresh process: thread pools spun up for one
setting (torch's OpenMP, ONNX Runtime's) otherwise linger and distort the next.

It also exports the ViT-B/32 to ONNX and reports ferroclip's export check (max abs diff of
unnormalised embeddings vs PyTorch on fresh inputs).

Run: python benches/bench_models.py [--quick] [--threads 1 2] [--out benches/results/models-x86_64.md]
"""

from __future__ import annotations

import argparse
import multiprocessing
import gzip
import json
import sys
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_header, markdown_table, median_time  # noqa: E402
from bench_preprocess import photo  # noqa: E402

import ferroclip  # noqa: E402

BATCH = 32
CAPTIONS = [
    f"a photo of {a} {b} {c}"
    for a in ("a", "two", "several", "one small")
    for b in ("red", "black and white", "blurry", "bright", "old", "tiny", "large", "wet")
    for c in ("cat", "dog on a beach at sunset", "car parked in the street", "bird", "tree", "city skyline", "bowl of fruit", "person riding a bicycle")
]


def clip_tokenizer_files(out: Path) -> None:
    """CLIP's vocab.json/merges.txt from open_clip's BPE file (what openai/clip-* ship)."""
    import open_clip
    from transformers import CLIPTokenizer

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges).save_pretrained(out)


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_checkpoint(root: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    path = root / "clip-vit-b-32-random"
    torch.manual_seed(0)
    CLIPModel(CLIPConfig()).eval().save_pretrained(path)
    CLIPImageProcessor().save_pretrained(path)  # 224 shortest edge, 224 crop, bicubic, CLIP mean/std
    clip_tokenizer_files(path)
    return path


def measure(t: int, ckpt: Path, onnx_dir: Path, paths: list[str], repeats: int) -> tuple[list, list]:
    """All rows for one thread count, in a fresh process (see main): thread pools of one
    setting must not linger into the next."""
    import onnxruntime as ort
    import open_clip
    import torch
    from transformers import AutoModel, AutoTokenizer, CLIPImageProcessorPil

    n_images = len(paths)
    hf_model = AutoModel.from_pretrained(ckpt, attn_implementation="sdpa").eval()
    hf_proc = CLIPImageProcessorPil.from_pretrained(ckpt)
    hf_tok = AutoTokenizer.from_pretrained(ckpt)
    oc_model, _, oc_transform = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    oc_model.eval()
    oc_tok = open_clip.get_tokenizer("ViT-B-32")

    img_rows, txt_rows = [], []
    torch.set_num_threads(t)
    fc_torch = ferroclip.load_model(ckpt, device="cpu")  # preprocessing: 1 thread on CPU (the default)
    fc_onnx = ferroclip.load_model(onnx_dir)
    for sess_tower in (fc_onnx.backend.vision, fc_onnx.backend.text):  # same intra-op threads as the peers
        sess_tower.session = ort.InferenceSession(str(sess_tower.path), _ort_options(t), providers=["CPUExecutionProvider"])
    x = torch.from_numpy(fc_torch.preprocessor.preprocess(paths[:BATCH]).pixel_values)
    sess = ort.InferenceSession(str(onnx_dir / "vision.onnx"), _ort_options(t), providers=["CPUExecutionProvider"])

    def hf_e2e() -> None:
        for s in range(0, n_images, BATCH):
            imgs = [Image.open(p) for p in paths[s : s + BATCH]]
            with torch.inference_mode():
                hf_model.get_image_features(**hf_proc(images=imgs, return_tensors="pt"))

    def oc_e2e() -> None:
        for s in range(0, n_images, BATCH):
            batch = torch.stack([oc_transform(Image.open(p)) for p in paths[s : s + BATCH]])
            with torch.inference_mode():
                oc_model.encode_image(batch)

    def torch_only() -> None:
        with torch.inference_mode():
            hf_model.get_image_features(pixel_values=x)

    def ort_only() -> None:
        sess.run(None, {"pixel_values": x.numpy()})

    pre = ferroclip.Preprocessor(fc_torch.preprocess_config, num_threads=t)
    cases = {
        "ferroclip torch": (lambda: fc_torch.encode_images(paths, batch_size=BATCH, progress=False), n_images),
        "ferroclip onnx": (lambda: fc_onnx.encode_images(paths, batch_size=BATCH, progress=False), n_images),
        "transformers (PIL processor + model)": (hf_e2e, n_images),
        "open_clip (transform + model)": (oc_e2e, n_images),
        "model only: torch forward": (torch_only, BATCH),
        "model only: onnxruntime": (ort_only, BATCH),
        "preprocessing only: ferroclip": (lambda: pre.preprocess(paths), n_images),
        "preprocessing only: transformers PIL": (lambda: hf_proc(images=[Image.open(p) for p in paths], return_tensors="np"), n_images),
    }
    for name, (fn, count) in cases.items():
        sec = median_time(fn, repeats)
        img_rows.append([name, str(t), f"{count / sec:.1f}"])
        print(f"{t} thr  {name:40s} {count / sec:8.1f} img/s", file=sys.stderr)

    texts = CAPTIONS[:256]

    def hf_text() -> None:
        for s in range(0, len(texts), 64):
            with torch.inference_mode():
                hf_model.get_text_features(**hf_tok(texts[s : s + 64], padding=True, truncation=True, return_tensors="pt"))

    def oc_text() -> None:
        for s in range(0, len(texts), 64):
            with torch.inference_mode():
                oc_model.encode_text(oc_tok(texts[s : s + 64]))

    for name, fn in {
        "ferroclip torch": lambda: fc_torch.encode_texts(texts, batch_size=64),
        "ferroclip onnx": lambda: fc_onnx.encode_texts(texts, batch_size=64),
        "transformers (tokenizer + model, longest padding)": hf_text,
        "open_clip (tokenizer + model, 77 tokens)": oc_text,
    }.items():
        sec = median_time(fn, repeats)
        txt_rows.append([name, str(t), f"{len(texts) / sec:.1f}"])
        print(f"{t} thr  {name:50s} {len(texts) / sec:8.1f} texts/s", file=sys.stderr)
    return img_rows, txt_rows


def _ort_options(threads: int):
    from ferroclip.models.onnx_backend import session_options

    return session_options(threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer images and repeats, 1 thread only")
    ap.add_argument("--threads", type=int, nargs="+", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    threads = args.threads or ([1] if args.quick else [1, 2])
    n_images = 64 if args.quick else 128
    repeats = 1 if args.quick else 3

    tmp = Path(tempfile.mkdtemp(prefix="ferroclip-bench-models-"))
    try:  # the checkpoint, its ONNX export and the JPEGs are ~1.2 GB: never leave them behind
        print(f"building a random-weight ViT-B/32 checkpoint and {n_images} JPEGs in {tmp}", file=sys.stderr)
        ckpt = build_checkpoint(tmp)
        rng = np.random.default_rng(0)
        paths = []
        for i in range(n_images):
            p = tmp / f"img{i:04d}.jpg"
            Image.fromarray(photo(rng, 640, 480)).save(p, quality=90)
            paths.append(str(p))

        t0 = time.perf_counter()
        onnx_dir = ferroclip.export_onnx(ferroclip.load_model(ckpt, device="cpu"), tmp / "onnx")
        export_s = time.perf_counter() - t0
        check = json.loads((onnx_dir / "ferroclip_onnx.json").read_text())["check"]

        ctx = multiprocessing.get_context("spawn")
        img_rows, txt_rows = [], []
        for t in threads:
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                rows_i, rows_t = pool.submit(measure, t, ckpt, onnx_dir, paths, repeats).result()
            img_rows += rows_i
            txt_rows += rows_t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    report = [
        "# Embedding throughput (CPU, ViT-B/32-sized CLIP, random weights)\n",
        machine_header(["torch", "transformers", "onnxruntime", "open_clip_torch", "pillow"]),
        f"{n_images} JPEG files 640x480, batch {BATCH}, median of {repeats}. `threads` = torch/ORT intra-op threads "
        "for every row; ferroclip's preprocessing runs on 1 extra thread (its CPU default) overlapping the model, "
        "while the peers preprocess serially before each forward.\n",
        "## Images\n",
        markdown_table(["pipeline", "threads", "images/s"], img_rows),
        "\n## Texts (256 captions, batches of 64)\n",
        markdown_table(["pipeline", "threads", "texts/s"], txt_rows),
        "\n## ONNX export check (ViT-B/32, random weights)\n",
        f"Export took {export_s:.1f} s. Max abs diff vs PyTorch on fresh inputs (3 images, 3 texts of different "
        f"lengths, unnormalised embeddings): vision {check['vision_max_abs_diff']:.2e}, text {check['text_max_abs_diff']:.2e}.\n",
    ]
    text = "\n".join(report)
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
