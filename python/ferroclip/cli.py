"""The ``ferroclip`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from . import __version__, _cli_distributed, _cli_models, _cli_score
from ._rows import write_rows
from .config import PreprocessConfig
from .errors import FerroclipError
from .preprocess import Preprocessor

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".hif"}


def _config(spec: str) -> PreprocessConfig:
    """``clip-224``, ``siglip-384``, ``mobileclip`` or a checkpoint dir / preprocessor_config.json."""
    family, _, size = spec.partition("-")
    presets = {"clip": PreprocessConfig.clip, "siglip": PreprocessConfig.siglip, "mobileclip": PreprocessConfig.mobileclip}
    if family in presets and (not size or size.isdigit()):
        return presets[family](int(size)) if size else presets[family]()
    return PreprocessConfig.from_pretrained(spec)


def _expand(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()))
        else:
            out.append(p)
    return out


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    files = _expand(args.inputs)
    if not files:
        print("no images found", file=sys.stderr)
        return 2
    pre = Preprocessor(_config(args.config), num_threads=args.threads, fast=args.fast, dtype=args.dtype)
    h, w = pre.output_size
    pixels = np.zeros((len(files), 3, h, w), dtype=args.dtype)
    errors: dict[str, str] = {}
    with tqdm(total=len(files), unit="img", disable=args.quiet) as bar:
        for start in range(0, len(files), args.batch_size):
            chunk = [str(f) for f in files[start : start + args.batch_size]]
            res = pre.preprocess(chunk, out=pixels[start : start + len(chunk)])
            for err in res.errors:
                at = getattr(err, "index", None)
                errors[chunk[at] if at is not None else str(getattr(err, "path", "?"))] = str(getattr(err, "reason", err))
                tqdm.write(f"error: {err}", file=sys.stderr)
            bar.update(len(chunk))
    write_rows(Path(args.out), pixels, [str(f) for f in files], errors, key="pixels")
    failures = len(errors)
    print(f"wrote {args.out}: {pixels.shape} {pixels.dtype}, {failures} failed (zeros, ok=false)", file=sys.stderr)
    return 1 if failures and args.strict else 0


# `ferroclip finetune`'s module tree imports torch (~2-3 s): its parser is built only when
# that command is asked for, and `ferroclip --help` lists it through this line.
_FINETUNE_HELP = "fine-tune a whole CLIP/SigLIP model on image-caption data"


def _command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the top-level parser has no options taking a value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; with ``argv``, the parsers of commands it does not name may be
    placeholders (help line only) so that start-up imports nothing heavy."""
    parser = argparse.ArgumentParser(prog="ferroclip", description="CLIP-family image-text toolkit with a Rust core.")
    parser.add_argument("--version", action="version", version=f"ferroclip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "preprocess",
        help="turn images into a model-ready .npy batch",
        description="Decode, resize, crop and normalise images exactly as the model's reference processor, "
        "in parallel; bad files are reported and left as zero rows.",
    )
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--config", default="clip-224", help="clip-224, siglip-384, mobileclip, or a checkpoint dir")
    p.add_argument(
        "--out",
        required=True,
        help="output .npy (+ .paths.json with paths and the ok mask) or .npz (pixels, paths, ok, errors); "
        "one row per input, a failed one is zeros with ok=false; written atomically",
    )
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--fast", action="store_true", help="DCT-domain JPEG downscaling (not bit-exact)")
    p.add_argument("--strict", action="store_true", help="exit 1 if any image failed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_preprocess)
    _cli_models.register(sub)
    _cli_score.register(sub)
    _cli_distributed.register(sub)
    from .train.cli import register as register_train

    register_train(sub)
    if argv is None or _command(argv) == "finetune":
        from .finetune.cli import register as register_finetune

        register_finetune(sub)
    else:
        sub.add_parser("finetune", help=_FINETUNE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args))
    except (FerroclipError, FileNotFoundError, NotADirectoryError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (finished work is kept; re-run to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
