"""Classify every file of ../shared/peer-images/pillow/: ferroclip against the reference
(PIL + ``CLIPImageProcessorPil`` defaults after ``ImageOps.exif_transpose``, 16-bit gray
scaled as tests/test_preprocess_parity.py documents).

Prints one line per non-exact file and the counts: exact / differ / refused-by-us /
refused-by-PIL / both-refuse.  Usage: python tools/pillow_corpus_classify.py [--json OUT]
"""

from __future__ import annotations

import io
import json
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from transformers import CLIPImageProcessorPil

from ferroclip import PreprocessConfig, Preprocessor

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "peer-images" / "pillow"
TOL = 1e-6


def reference_image(data: bytes) -> Image.Image:
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if img.mode.startswith("I;16"):
        # The high byte, keeping a tRNS grey transparent (a new image would drop it).
        arr = np.asarray(img, dtype=np.uint32)
        gray = Image.fromarray((arr >> 8).astype(np.uint8), "L")
        trns = img.info.get("transparency")
        if isinstance(trns, int):
            gray.putalpha(Image.fromarray(np.where(arr == trns, 0, 255).astype(np.uint8), "L"))
        img = gray
    return img


def classify(pre: Preprocessor, proc: CLIPImageProcessorPil) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for path in sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name != "README.md"):
        name = str(path.relative_to(CORPUS))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = proc(images=reference_image(path.read_bytes()), return_tensors="np")["pixel_values"][0]
            ref_err = None
        except Exception as exc:  # noqa: BLE001 - a refusal is what is being classified
            ref, ref_err = None, f"{type(exc).__name__}: {exc}"
        res = pre.preprocess([str(path)])
        our_err = None if res.ok[0] else f"{type(res.errors[0]).__name__}: {res.errors[0]}"
        if ref_err and our_err:
            out[name] = ("both", f"PIL {ref_err[:80]} | us {our_err[:120]}")
        elif ref_err:
            out[name] = ("pil-refuses", ref_err[:120])
        elif our_err:
            out[name] = ("we-refuse", our_err[:160])
        else:
            diff = float(np.abs(res.pixel_values[0] - ref).max())
            out[name] = ("exact", "") if diff <= TOL else ("differ", f"max abs diff {diff:.4f}")
    return out


def main() -> None:
    pre = Preprocessor(PreprocessConfig.clip(224), num_threads=2)
    result = classify(pre, CLIPImageProcessorPil())
    for name, (kind, why) in result.items():
        if kind != "exact":
            print(f"{kind:12} {name}  {why}")
    counts = Counter(kind for kind, _ in result.values())
    import PIL

    print(f"Pillow {PIL.__version__}:", dict(sorted(counts.items())), "total", len(result))
    if "--json" in sys.argv:
        Path(sys.argv[sys.argv.index("--json") + 1]).write_text(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
