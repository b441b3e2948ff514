"""``ferroclip finetune CONFIG``: the config is read and checked before torch is imported,
so a typo fails in a fraction of a second, not after the model has loaded."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .config import FinetuneConfig

    cfg = FinetuneConfig.from_yaml(args.config)
    if args.max_steps is not None:
        cfg.max_steps = args.max_steps
    if args.output_dir is not None:
        cfg.output_dir = args.output_dir
    cfg.validate(args.config)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch(args)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    from .loop import finetune

    res = finetune(cfg, resume=args.resume, progress=False if args.quiet else None, local_files_only=args.offline)
    m = res.metrics
    print(f"wrote {res.output_dir} ({res.steps} steps)", file=sys.stderr)
    if m.get("base") and m.get("best", {}).get("metrics"):
        b, f = m["base"], m["best"]["metrics"]
        print(f"val R@1 (I2T / T2I): base {b['i2t_R@1']:.3f} / {b['t2i_R@1']:.3f} -> fine-tuned "
              f"{f['i2t_R@1']:.3f} / {f['t2i_R@1']:.3f} (step {m['best']['step']})", file=sys.stderr)
    if "wise_ft" in m:
        print(f"WiSE-FT chosen alpha: {m['wise_ft']['chosen_alpha']} (table: {res.output_dir / 'wise_ft.md'})", file=sys.stderr)
    if res.bad_rows or res.failed_images:
        print(f"skipped {res.bad_rows} bad rows and {len(res.failed_images)} images that did not decode "
              f"(listed in {res.output_dir / 'metrics.json'})", file=sys.stderr)
    return 0


def _launch(args: argparse.Namespace) -> int:
    """``--nproc N``: the same command under torchrun, N processes on this machine."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "ferroclip", "finetune", args.config]
    for flag, value in (("--max-steps", args.max_steps), ("--output-dir", args.output_dir)):
        if value is not None:
            cmd += [flag, str(value)]
    cmd += [f for f, on in (("--resume", args.resume), ("--offline", args.offline), ("--quiet", args.quiet)) if on]
    print("launching: " + " ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a whole CLIP/SigLIP model on image-caption data",
        description="Contrastive fine-tuning of both towers from a YAML config (seed 001's CLIPFinetuningConfig "
        "keys): exact large-batch accumulation, checkpoints, resume, validation Recall@K and WiSE-FT.",
    )
    p.add_argument("config", help="YAML config; data_path and output_dir resolve against its folder")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--output-dir", default=None, help="override the config's output_dir")
    p.add_argument("--offline", action="store_true", help="use only locally cached model files")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.add_argument("--nproc", type=int, default=1,
                   help="processes on this machine (launches torchrun; gloo on CPU, NCCL on CUDA); batch_size is per process")
    p.set_defaults(func=_cmd_finetune)
