"""``ferroclip probe`` and ``ferroclip heads split|train|eval|tune``.

Registered into the main parser by ``register(subparsers)``. Errors the user can fix
(``FerroclipError``: bad files, bad configs) are reported by the main CLI as one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .._rows import read_sidecar, sidecar_path
from ..errors import DataError

__all__ = ["register"]


# ---------------------------------------------------------------------------- probe


#: One feature set as `_features` reads it: name, path, rows, stored labels/paths, ok mask.
FeatureSet = tuple[str, Path, np.ndarray, dict[str, np.ndarray], np.ndarray | None]


def _features(spec: str, key: str | None) -> FeatureSet:
    """``name=path`` or ``path``: the features, any ``labels``/``paths`` stored beside them,
    and the ``ok`` mask of the embedding run (None: every row is an image that decoded).
    Nothing is dropped here: rows are dropped together across feature sets (`_cmd_probe`)."""
    from .data import load_array

    name, sep, path = spec.partition("=")
    p = Path(path if sep else spec)
    name = name if sep else p.stem
    extra: dict[str, np.ndarray] = {}
    ok: np.ndarray | None = None
    if p.suffix.lower() == ".npz" and p.is_file():
        try:
            with np.load(p, allow_pickle=False) as z:
                files = set(z.files)
                if key is None and "features" in files:
                    key = "features"
                for k in ("labels", "paths"):
                    if k in files:
                        extra[k] = z[k]
                if "ok" in files:
                    ok = np.asarray(z["ok"], dtype=bool)
        except ValueError as e:
            raise DataError(f"{p}: cannot be read safely: {e}", str(p)) from e
    sidecar = sidecar_path(p)
    if p.suffix.lower() == ".npy" and sidecar.is_file():
        # `ferroclip embed --out x.npy` writes its rows' paths and ok mask here: without
        # them, rows cannot be matched to labels listed per file.
        rows = read_sidecar(sidecar)
        extra["paths"] = np.array(rows.paths)
        ok = rows.ok
    features = load_array(p, key)
    if "paths" in extra and len(extra["paths"]) != len(features):
        raise DataError(f"{p}: {len(features)} rows but {len(extra['paths'])} paths stored beside them", str(p))
    if ok is not None and len(ok) != len(features):
        raise DataError(f"{p}: {len(features)} rows but an ok mask of {len(ok)}", str(p))
    if "labels" in extra and len(extra["labels"]) != len(features):
        raise DataError(f"{p}: {len(features)} rows but {len(extra['labels'])} labels stored beside them", str(p))
    return name, p, features, extra, ok


def _labels(args: argparse.Namespace, keep: np.ndarray, cache: dict[str, np.ndarray], where: Path) -> list[str]:
    """The label of every kept row (``keep``: rows whose image decoded in every feature set)."""
    from .data import labels_from_folder, load_labels_csv

    paths: list[str] | None
    labels: list[str]
    if args.labels_dir:
        paths, labels = labels_from_folder(args.labels_dir)
    elif args.labels_csv:
        paths, labels = load_labels_csv(args.labels_csv)
    elif "labels" in cache:
        return [str(v) for v, k in zip(cache["labels"], keep) if k]
    else:
        raise DataError(f"{where}: no labels: pass --labels-dir or --labels-csv, or store 'labels' in the .npz")
    src = args.labels_dir or args.labels_csv
    if paths is not None and "paths" in cache:
        # Paths are compared resolved, so `ferroclip embed photos --out f.npz` (absolute paths)
        # matches `--labels-dir photos` given relative to the current directory.
        by_path = dict(zip((_canonical(p) for p in paths), labels))
        wanted = [_canonical(q) for q, k in zip(cache["paths"], keep) if k]
        missing = [q for q in wanted if q not in by_path]
        if missing:
            raise DataError(f"{src}: no label for {len(missing)} rows of {where}, e.g. {missing[0]}", str(src))
        return [by_path[q] for q in wanted]
    n, kept = len(keep), int(keep.sum())
    if len(labels) == n:  # one label per row, failed rows included: drop those with their rows
        return [label for label, k in zip(labels, keep) if k]
    if len(labels) == kept:  # one label per image that decoded
        return labels
    hint = (
        f" (no paths stored with {where.name}: write it with `ferroclip embed --out x.npz`, which keeps "
        "each row's path, so rows can be matched to labels)"
        if paths is not None
        else ""
    )
    counts = f"{n} rows" if kept == n else f"{n} rows ({kept} of images that decoded)"
    raise DataError(f"{src}: {len(labels)} labels but {where} has {counts}{hint}", str(src))


def _same_rows(loaded: list[FeatureSet]) -> np.ndarray:
    """Check that the feature sets hold the same images in the same order (by row count, and
    by path where they store paths); the rows to keep: those whose image decoded in all."""
    _, first, x0, _, _ = loaded[0]
    for _, p, x, _, _ in loaded[1:]:
        if len(x) != len(x0):
            raise DataError(f"{p}: {len(x)} rows but {first} has {len(x0)}: the feature sets must hold the same images "
                            "in the same order", str(p))
    with_paths = [(p, [str(q) for q in e["paths"]]) for _, p, _, e, _ in loaded if "paths" in e]
    ref_p, ref = with_paths[0] if with_paths else (first, [])
    for p, other in with_paths[1:]:
        i = next((i for i, (a, b) in enumerate(zip(ref, other)) if a != b and _canonical(a) != _canonical(b)), None)
        if i is not None:
            raise DataError(f"{p}: row {i} is {other[i]} but row {i} of {ref_p} is {ref[i]}: the feature sets must "
                            "hold the same images in the same order", str(p))
    keep = np.ones(len(x0), dtype=bool)
    for _, _, _, _, ok in loaded:
        if ok is not None:
            keep &= ok
    if not keep.all():
        # Failed images keep a zero row (`embed --out`'s rule): they are not data, in any set.
        print(f"note: {int((~keep).sum())} rows of images that failed (ok=false in a feature set) left out of every "
              "feature set", file=sys.stderr)
    return keep


def _canonical(path: object) -> str:
    return os.path.realpath(str(path))


def _cmd_probe(args: argparse.Namespace) -> int:
    from .probe import compare_probes, comparison_table, write_comparison

    loaded = [_features(s, args.key) for s in args.features]
    names = [n for n, *_ in loaded]
    if len(set(names)) != len(names):
        raise DataError(f"feature sets need distinct names, got {names}; use name=path")
    keep = _same_rows(loaded)
    # Labels from a file are matched by path where any feature set stores paths (else by
    # position); without a file, they are the first stored with a feature set.
    wanted = "paths" if args.labels_dir or args.labels_csv else "labels"
    _, where, _, cache, _ = next((f for f in loaded if wanted in f[3]), loaded[0])
    labels = _labels(args, keep, cache, where)
    results = compare_probes(
        {n: x[keep] for n, _, x, _, _ in loaded}, labels, args.model, args.folds,
        inner_folds=args.inner_folds, seed=args.seed, n_jobs=args.jobs,
    )
    files = write_comparison(results, args.out, plot=not args.no_plots)
    print(comparison_table(results))
    print(f"wrote {args.out} ({', '.join(Path(f).name for f in files.values())} and per-model files)", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- heads


def _load(cfg: Any) -> Any:
    from .data import load_paired

    d = cfg.data
    missing = [k for k in ("image_embeddings", "text_embeddings", "metadata") if getattr(d, k) is None]
    if missing:
        from ..errors import ConfigError

        raise ConfigError(f"config: data.{missing[0]} is required (image_embeddings, text_embeddings, metadata)")
    return load_paired(d.image_embeddings, d.text_embeddings, d.metadata, image_key=d.image_key, text_key=d.text_key)


def _split_path(cfg: Any) -> Path:
    return Path(cfg.data.split) if cfg.data.split else Path(cfg.output_dir) / "split.json"


def _cmd_split(args: argparse.Namespace) -> int:
    from .config import HeadsConfig
    from .split import split_images

    cfg = HeadsConfig.from_yaml(args.config)
    path = _split_path(cfg)
    if path.exists() and not args.force:
        raise DataError(f"{path}: split exists and is reused; pass --force to replace it", str(path))
    data = _load(cfg)
    d = cfg.data
    split = split_images(data, val=d.val_fraction, test=d.test_fraction, tuning=d.tuning_fraction, seed=d.split_seed)
    split.save(path)
    print(f"wrote {path}: {len(split.train)} train ({len(split.tuning)} for tuning), {len(split.val)} val, "
          f"{len(split.test)} test images", file=sys.stderr)
    return 0


def _data_and_split(cfg: Any) -> tuple[Any, Any]:
    from .split import Split

    data = _load(cfg)
    return data, Split.load(_split_path(cfg))


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import HeadsConfig
    from .trainer import train_heads

    cfg = HeadsConfig.from_yaml(args.config)
    if args.out:
        cfg.output_dir = args.out
    if args.quiet:
        cfg.training.progress = False
    data, split = _data_and_split(cfg)
    out = Path(cfg.output_dir)
    cfg.to_yaml(out / "config.yaml")
    res = train_heads(cfg, split.part(data, "train"), split.part(data, "val"), out_dir=out, resume=args.resume)
    best = res.best_metrics
    print(json.dumps({"best_epoch": res.best_epoch, "val_loss": best.get("val_loss"), "val_r1": best.get("val_r1"),
                      "samples_per_second": round(res.samples_per_second, 1), "stopped_early": res.stopped_early}))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .config import HeadsConfig
    from .evaluate import evaluate_heads
    from .trainer import load_checkpoint

    cfg = HeadsConfig.from_yaml(args.config)
    ckpt = Path(args.checkpoint or cfg.output_dir)
    model = load_checkpoint(ckpt)
    data, split = _data_and_split(cfg)
    test = split.part(data, args.part)
    if (test.image_dim, test.text_dim) != (model.image_dim, model.text_dim):
        raise DataError(f"{ckpt}: model expects {model.image_dim}/{model.text_dim}-d image/text embeddings, "
                        f"data has {test.image_dim}/{test.text_dim}", str(ckpt))
    out = Path(args.out) if args.out else ckpt / "evaluation"
    metrics = evaluate_heads(model, test, out, plots=not args.no_plots)
    print(json.dumps(metrics, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from .config import TuneConfig
    from .tune import tune_heads

    cfg = TuneConfig.from_yaml(args.config)
    data, split = _data_and_split(cfg.base)
    res = tune_heads(cfg, data, split, n_trials=args.n_trials)
    states: dict[str, int] = {}
    for t in res.study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    print(json.dumps({"study": cfg.study_name, "states": states, "best_value": res.best_value, **res.files}, indent=1))
    return 0 if res.best_config is not None else 1


def register(subparsers: Any) -> None:
    """Add ``probe`` and ``heads`` to the main ``ferroclip`` parser's subcommands."""
    p = subparsers.add_parser(
        "probe",
        help="linear probe (ridge/logistic, k-fold CV) on frozen embeddings",
        description="Stratified k-fold linear probe on L2-normalised features; regularisation chosen by inner CV. "
        "Several feature files (same samples, same order) give a comparison table.",
    )
    p.add_argument("features", nargs="+", help="[name=]path: .npy, .npz (key 'features', optional 'labels'/'paths'), .pt, .safetensors")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels-dir", help="ImageFolder root: class = first sub-folder; row order = sorted recursive walk")
    g.add_argument("--labels-csv", help="CSV with a 'label' column (and optionally 'path' to match a cache's paths)")
    p.add_argument("--key", default=None, help="array name inside .npz/.pt/.safetensors files")
    p.add_argument("--model", choices=["ridge", "logistic"], default="ridge")
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--inner-folds", type=int, default=None, help="inner CV folds (default: ridge exact LOO, logistic 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=None, help="outer folds in parallel")
    p.add_argument("--out", required=True, help="output folder for JSON, CSV and confusion-matrix PNGs")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=_cmd_probe)

    h = subparsers.add_parser("heads", help="projection heads: split, train, eval, tune",
                              description="Align image and text embeddings with trained projection heads.")
    hs = h.add_subparsers(dest="heads_command", required=True)
    s = hs.add_parser("split", help="image-level train/val/test split plus tuning subset (saved, then reused)")
    s.add_argument("config", help="training YAML (data section)")
    s.add_argument("--force", action="store_true", help="replace an existing split")
    s.set_defaults(func=_cmd_split)
    t = hs.add_parser("train", help="train heads; best checkpoint, history JSON and curves PNG")
    t.add_argument("config", help="training YAML (data, model, training sections); see docs/training.md")
    t.add_argument("--out", help="override output_dir")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last complete epoch (same config and data)")
    t.set_defaults(func=_cmd_train)
    e = hs.add_parser("eval", help="Recall@1/5/10 and median rank on the test split; PCA and t-SNE PNGs")
    e.add_argument("config", help="the training YAML the heads were trained with (its output_dir holds them)")
    e.add_argument("--checkpoint", help="checkpoint folder (default: the config's output_dir)")
    e.add_argument("--part", choices=["test", "val"], default="test")
    e.add_argument("--out", help="output folder (default: <checkpoint>/evaluation)")
    e.add_argument("--no-plots", action="store_true")
    e.set_defaults(func=_cmd_eval)
    u = hs.add_parser("tune", help="Optuna search from a YAML space; resumes from its SQLite storage")
    u.add_argument("config", help="tuning YAML (base, study, search_space)")
    u.add_argument("--n-trials", type=int, default=None, help="total trials for the study (overrides the YAML)")
    u.set_defaults(func=_cmd_tune)
