"""``ferroclip embed | search | export-onnx | models``: the model commands of the CLI."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

_MODEL_HELP = "preset name (see `ferroclip models`), Hugging Face hub id, checkpoint dir or ONNX export dir"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default="clip-vit-b-32", help=f"{_MODEL_HELP} (default: clip-vit-b-32)")
    p.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None, help="default: float16 on CUDA, else float32")
    p.add_argument("--threads", type=int, default=None, help="preprocessing threads (default: all cores)")
    p.add_argument("--offline", action="store_true", help="never contact the hub (use only local files / the hub cache)")


def _add_cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", default=None, help="cache root (default: $FERROCLIP_CACHE or ~/.cache/ferroclip/embeddings)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--force-recompute", action="store_true", help="embed every image again, replacing what the cache holds"
    )


def _check_folder(folder: str) -> None:
    """Fail on a missing folder before a model is loaded (seconds of torch import)."""
    p = Path(folder)
    if not p.exists():
        raise FileNotFoundError(f"{folder}: no such folder")
    if not p.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")


def _check_out(path: str | None) -> None:
    if path is not None and not Path(path).resolve().parent.is_dir():
        raise FileNotFoundError(f"{path}: its folder {Path(path).resolve().parent} does not exist")


def _quiet_transformers() -> None:
    """``--quiet``: no ``Loading weights`` bar from transformers either."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated in transformers


def _progress(args: argparse.Namespace) -> bool | None:
    """``--quiet``: no bars; else the API's rule (a bar on a terminal, for long work)."""
    return False if getattr(args, "quiet", False) else None


def _load(args: argparse.Namespace) -> Any:
    from .models import load_model

    if getattr(args, "quiet", False):
        _quiet_transformers()
    return load_model(
        args.model,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        num_threads=args.threads,
        local_files_only=args.offline,
    )


def _embed(args: argparse.Namespace, model: Any) -> Any:
    from .cache import embed_folder

    res = embed_folder(
        model,
        args.folder,
        args.cache,
        batch_size=args.batch_size,
        force_recompute=args.force_recompute,
        progress=_progress(args),
    )
    for path, reason in sorted(res.errors.items()):
        print(f"error: {path}: {reason}", file=sys.stderr)
    if res.skipped:
        shown = ", ".join(res.skipped[:5]) + (", ..." if len(res.skipped) > 5 else "")
        print(f"note: {len(res.skipped)} file(s) are not images by name and were not embedded: {shown}", file=sys.stderr)
    print(
        f"{len(res)} images embedded ({res.embedded} new, {res.reused} from cache, {len(res.errors)} failed) "
        f"with {model.name} [{model.backend.name}, {model.device}, {model.dtype}] -> {res.cache_dir}",
        file=sys.stderr,
    )
    return res


def _cmd_embed(args: argparse.Namespace) -> int:
    _check_folder(args.folder)
    _check_out(args.out)
    model = _load(args)
    res = _embed(args, model)
    if args.out:
        import numpy as np

        from ._rows import write_rows

        # Rows aligned with every image file found (failed ones zero, `ok` false), in the
        # folder scan's order: the same rule as `ferroclip preprocess --out`.
        rels = sorted([*res.paths, *res.errors], key=lambda r: Path(res.root, r))
        at = {r: i for i, r in enumerate(res.paths)}
        rows = np.zeros((len(rels), res.embeddings.shape[1]), dtype=np.float32)
        for i, r in enumerate(rels):
            if r in at:
                rows[i] = res.embeddings[at[r]]
        full = [str(res.root / r) for r in rels]
        errors = {str(res.root / r): why for r, why in res.errors.items()}
        ok = write_rows(Path(args.out), rows, full, errors, key="features")
        print(f"wrote {args.out} {rows.shape} ({int((~ok).sum())} failed rows are zeros, ok=false)", file=sys.stderr)
    return 1 if res.errors and args.strict else 0


def _cmd_search(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.image is None):
        print("error: give a text query or --image FILE (one of them)", file=sys.stderr)
        return 2
    from ._cli_distributed import is_dataset_output, search_dataset_output

    _check_folder(args.folder)
    if args.image is not None and "://" not in args.image:
        image = Path(args.image)
        if not image.exists():
            raise FileNotFoundError(f"{args.image}: no such query image")
        if not image.is_file():
            raise FileNotFoundError(f"{args.image}: the query image is not a file")
    if args.k < 1:
        print(f"error: -k must be >= 1, got {args.k}", file=sys.stderr)
        return 2
    if is_dataset_output(args.folder):
        return search_dataset_output(args, _load)
    model = _load(args)
    res = _embed(args, model)
    if args.image is not None:
        q = model.encode_images([args.image], progress=False)
        q.raise_for_errors()
        query = q.embeddings[0]
    else:
        query = model.encode_texts([args.text])[0]
    hits = res.search(query, k=args.k)
    if args.json:
        # float32 cosines: 6 decimals is all they hold (1.0000001192092896 is noise).
        print(json.dumps([{"path": str(res.root / p), "score": round(float(s), 6)} for p, s in hits], indent=2))
    else:
        for rank, (path, score) in enumerate(hits, 1):
            print(f"{rank:3d}  {score:+.4f}  {res.root / path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not args.overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        print(f"error: {out_dir} exists and is not empty: pass --overwrite to replace it", file=sys.stderr)
        return 2
    from .models import export_onnx, load_model

    if args.quiet:
        _quiet_transformers()
    model = load_model(args.model, backend="torch", device="cpu", dtype="float32", local_files_only=args.offline)
    out = export_onnx(model, args.out_dir, opset=args.opset, atol=args.atol, overwrite=args.overwrite)
    meta = json.loads((out / "ferroclip_onnx.json").read_text())
    check = meta["check"]
    print(
        f"exported {model.name} to {out} (vision max abs diff {check['vision_max_abs_diff']:.2e}, "
        f"text {check['text_max_abs_diff']:.2e} vs PyTorch)",
        file=sys.stderr,
    )
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models

    rows = list_models()
    if args.json:
        from dataclasses import asdict

        print(json.dumps([asdict(m) for m in rows], indent=2))
        return 0
    print(f"{'name':24} {'dim':>5} {'px':>4} {'backend':8} source")
    for m in rows:
        print(f"{m.name:24} {m.dim:5d} {m.image_size:4d} {m.backend:8} {m.source}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "embed",
        help="embed every image in a folder (cached: re-runs embed only new or changed files)",
        description="Embed every image under FOLDER with a CLIP-family model. Embeddings are cached per model "
        "and keyed by file content, so a re-run embeds only new or changed files and an interrupted run "
        "resumes where it stopped. Unreadable images are reported and skipped.",
    )
    p.add_argument("folder", help="folder of images (searched recursively)")
    _add_model_args(p)
    _add_cache_args(p)
    p.add_argument(
        "--out",
        default=None,
        help="also write the embeddings, one row per image file found (a failed one is zeros with ok=false): "
        ".npz (features, paths, ok, errors: what `ferroclip probe` reads) or .npy (+ .paths.json with paths and ok)",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 if any image failed")
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser(
        "search",
        help="search a folder of images by text or by example image",
        description='Find the images under FOLDER closest to a text ("a dog on a beach") or to an example '
        "image (--image q.jpg). The folder is embedded first (cached, see `ferroclip embed`).",
    )
    p.add_argument("folder", help="folder of images to search (searched recursively; embedded and cached first), "
                   "or an `embed-dataset` output directory")
    p.add_argument("text", nargs="?", default=None, help="text query")
    p.add_argument("--image", default=None, help="query image file or URL instead of text")
    p.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    _add_model_args(p)
    _add_cache_args(p)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser(
        "export-onnx",
        help="export a model's image and text towers to ONNX (checked against PyTorch)",
        description="Export the vision and text towers to OUT_DIR with a dynamic batch size, then run both "
        "through ONNX Runtime and compare with PyTorch; fails (writing nothing) if they diverge. "
        "Load the result with `--model OUT_DIR`.",
    )
    p.add_argument("model", help=_MODEL_HELP)
    p.add_argument("out_dir", help="folder to write (must be empty or absent, unless --overwrite)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version (default 18)")
    p.add_argument("--atol", type=float, default=1e-4, help="max abs difference allowed vs PyTorch (default 1e-4)")
    p.add_argument("--overwrite", action="store_true", help="replace what OUT_DIR holds")
    p.add_argument("--offline", action="store_true", help="never contact the hub (use only local files / the hub cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("models", help="list the model presets", description="List the preset model names and what they produce.")
    p.add_argument("--json", action="store_true", help="print the presets as JSON")
    p.set_defaults(func=_cmd_models)
