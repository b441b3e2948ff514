"""Training loop for projection heads: AdamW, warmup + cosine, early stopping, checkpoints.

Embeddings are small and already computed, so the whole train split sits on the device as
two tensors and a batch is one index gather; there is no DataLoader and no per-sample
Python. Each epoch visits every train image once with one of its captions drawn at random,
so a batch never holds two captions of the same image (no false negatives) and all
captions are seen over the epochs.

Checkpoints are ``model.safetensors`` (weights) plus ``checkpoint.json`` (config, input
dims, epoch, metrics), both written atomically, JSON last. Nothing is pickled. With an
``out_dir`` every epoch also leaves a resume checkpoint (:mod:`.resume`), and
``resume=True`` continues from the last complete epoch to the same result as a run that
was never interrupted.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._atomic import atomic_write
from .._optim import adamw
from .._torch_state import optimizer_tensors, restore_optimizer, restore_rng, rng_tensors
from ..errors import ConfigError, DataError, ShapeError
from .config import HeadsConfig
from .data import PairedEmbeddings
from .evaluate import retrieval_metrics
from .heads import ProjectionModel, build_model
from .losses import Objective

__all__ = ["TrainResult", "load_checkpoint", "resolve_device", "save_checkpoint", "train_heads"]

log = logging.getLogger(__name__)

_FORMAT = "ferroclip.train.heads"
WEIGHTS = "model.safetensors"
META = "checkpoint.json"


@dataclass
class TrainResult:
    """The best model (weights restored), per-epoch history and where it was written."""

    model: ProjectionModel
    history: list[dict[str, float]]
    best_epoch: int
    best_metrics: dict[str, float]
    samples_per_second: float
    stopped_early: bool
    out_dir: Path | None = None
    files: dict[str, str] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA if available, else MPS, else CPU; an unavailable explicit device is a
    :class:`~ferroclip.errors.ConfigError` (the same rule as :func:`ferroclip.load_model`)."""
    from ..models.device import resolve_device as resolve

    return torch.device(resolve(name))


class _Captions:
    """Caption rows grouped by image, to draw one caption per image quickly."""

    def __init__(self, text_to_image: np.ndarray, n_images: int, device: torch.device) -> None:
        order = np.argsort(text_to_image, kind="stable")
        counts = np.bincount(text_to_image, minlength=n_images)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.order = torch.from_numpy(order).to(device)
        self.counts = torch.from_numpy(counts).to(device)
        self.starts = torch.from_numpy(starts).to(device)
        self.with_captions = torch.from_numpy(np.flatnonzero(counts > 0)).to(device)

    def draw(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        r = torch.rand(len(images), generator=gen, device=gen.device).to(self.counts.device)
        k = (r * self.counts[images]).long()
        return self.order[self.starts[images] + torch.minimum(k, self.counts[images] - 1)]


def _lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _check_dims(config: HeadsConfig, train: PairedEmbeddings, val: PairedEmbeddings) -> None:
    if (val.image_dim, val.text_dim) != (train.image_dim, train.text_dim):
        raise ShapeError(
            f"validation embeddings are {val.image_dim}/{val.text_dim}-d (image/text) but training ones "
            f"are {train.image_dim}/{train.text_dim}-d"
        )
    if len(train.images) < 2:
        raise DataError("training needs at least 2 images with captions")


def _val_pairs(val: PairedEmbeddings, seed: int) -> np.ndarray:
    """One fixed caption per val image (for a val loss that is comparable across epochs)."""
    rng = np.random.default_rng(seed)
    caps = _Captions(val.text_to_image, len(val.images), torch.device("cpu"))
    imgs = caps.with_captions.numpy()
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    return np.stack([imgs, caps.draw(torch.from_numpy(imgs), gen).numpy()], axis=1)


@torch.no_grad()
def validate(model: ProjectionModel, objective: Objective, val: PairedEmbeddings, pairs: np.ndarray,
             batch_size: int, device: torch.device) -> dict[str, float]:
    """Mean in-batch loss over fixed val pairs and retrieval over all val captions."""
    model.eval()
    vi = torch.from_numpy(val.images).to(device)
    vt = torch.from_numpy(val.texts).to(device)
    losses, weights = [], []
    perm = pairs
    for s in range(0, len(perm), batch_size):
        chunk = perm[s : s + batch_size]
        if len(chunk) < 2:
            continue
        losses.append(float(objective.eval_loss(model, vi[chunk[:, 0]], vt[chunk[:, 1]])))
        weights.append(len(chunk))
    val_loss = float(np.average(losses, weights=weights)) if losses else float("nan")
    img = model.project_images(val.images)
    txt = model.project_texts(val.texts)
    m = retrieval_metrics(img, txt, val.text_to_image)
    model.train()
    return {"val_loss": val_loss, "val_r1": m["r1_mean"], "val_i2t_R@1": m["i2t_R@1"], "val_t2i_R@1": m["t2i_R@1"]}


def train_heads(
    config: HeadsConfig,
    train: PairedEmbeddings,
    val: PairedEmbeddings,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    plots: bool = True,
    resume: bool = False,
) -> TrainResult:
    """Train ``config``'s heads on ``train``, stop early on ``val``, return the best model.

    With ``out_dir``: writes the best checkpoint, ``loss_history.json``, (``plots``)
    ``training_curves.png`` and after every epoch a resume checkpoint under ``resume/``.
    ``resume=True`` continues from the newest complete one (a finished run just returns
    its result); the config (bar ``progress``, ``num_threads`` and ``output_dir``) and the
    data must be the ones it was saved with, else :class:`~ferroclip.errors.ConfigError`.
    Without ``resume`` a previous run's resume checkpoints in ``out_dir`` are discarded.
    ``on_epoch(epoch, metrics)`` is called after each validation, once that epoch's resume
    checkpoint is written (Optuna uses it to report and prune; it may raise to stop
    training, and a resumed run continues with the next epoch).
    """
    if resume and out_dir is None:
        raise ConfigError("resume=True needs the out_dir the interrupted run wrote its checkpoints to")
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    # dropout draws from the global RNG: seed it, and leave the caller's alone
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(config.training.seed)
        return _train(config, train, val, out_dir, on_epoch, plots, resume)


def _train(config: HeadsConfig, train: PairedEmbeddings, val: PairedEmbeddings, out_dir: Any,
           on_epoch: Callable[[int, dict[str, float]], None] | None, plots: bool, resume: bool) -> TrainResult:
    from . import resume as ckpt

    t_cfg = config.training
    _check_dims(config, train, val)
    device = resolve_device(t_cfg.device)
    if t_cfg.num_threads is not None:
        torch.set_num_threads(t_cfg.num_threads)
    model = build_model(config, train.image_dim, train.text_dim).to(device)
    objective = Objective(config.loss_type, config.loss.queue_size, config.loss.alpha)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    opt = adamw(
        [{"params": decay, "weight_decay": t_cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=t_cfg.learning_rate,
    )
    caps = _Captions(train.text_to_image, len(train.images), device)
    n_img = len(caps.with_captions)
    bs = min(t_cfg.batch_size, n_img)
    steps_per_epoch = max(1, n_img // bs)
    total = steps_per_epoch * t_cfg.num_epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, max(1, int(t_cfg.warmup_ratio * total))))
    ti = torch.from_numpy(train.images).to(device)
    tt = torch.from_numpy(train.texts).to(device)
    gen = torch.Generator(device="cpu").manual_seed(t_cfg.seed)
    pairs = _val_pairs(val, t_cfg.seed)
    maximize = t_cfg.monitor == "val_r1"
    best_value, best_epoch, best_state, best_metrics = -math.inf if maximize else math.inf, 0, None, {}
    history: list[dict[str, float]] = []
    out = Path(out_dir) if out_dir is not None else None
    bad_epochs, stopped, seen, train_time = 0, False, 0, 0.0
    start, finished = 1, False
    data_fp = ckpt.data_fingerprint(train, val) if out is not None else ""
    if out is not None and not resume:
        ckpt.clear_states(out)
    state = ckpt.latest_state(out) if resume and out is not None else None
    if resume and state is None:
        log.warning("resume: no epoch checkpoint in %s; training from epoch 1", out)
    if state is not None:
        ckpt.check_compatible(state, config, data_fp)
        tensors, meta = state.tensors, state.meta
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        restore_optimizer(opt, {k: v.to(device) for k, v in tensors.items() if k.startswith("optim.")}, meta["optimizer"])
        sched.load_state_dict(meta["scheduler"])
        queue = objective.queue
        if queue is not None and "queue.img" in tensors:
            queue.img, queue.txt, queue.ids = (tensors[f"queue.{k}"].to(device) for k in ("img", "txt", "ids"))
            queue.ptr, queue.count = int(meta["queue"]["ptr"]), int(meta["queue"]["count"])
        best = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")}
        best_state = best or None
        history, best_metrics = meta["history"], meta["best_metrics"]
        best_value, best_epoch, bad_epochs = float(meta["best_value"]), int(meta["best_epoch"]), int(meta["bad_epochs"])
        seen, train_time, stopped = int(meta["seen"]), float(meta["train_time"]), bool(meta["stopped"])
        gen.set_state(tensors["gen"])
        restore_rng(tensors)  # last: nothing after it may draw before the loop does
        start, finished = state.epoch + 1, bool(meta["finished"])
        log.info("resumed %s from epoch %d", out, state.epoch)

    from tqdm import tqdm

    epochs = range(start, t_cfg.num_epochs + 1) if not finished else range(0)
    bar = tqdm(epochs, desc="train heads", unit="epoch", disable=not t_cfg.progress,
               initial=start - 1, total=t_cfg.num_epochs)
    for epoch in bar:
        model.train()
        t0 = time.perf_counter()
        order = caps.with_captions[torch.randperm(n_img, generator=gen).to(device)]
        total_loss = 0.0
        for s in range(steps_per_epoch):
            img_idx = order[s * bs : (s + 1) * bs]
            txt_idx = caps.draw(img_idx, gen)
            loss = objective(model, ti[img_idx], tt[txt_idx], img_idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t_cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t_cfg.grad_clip)
            opt.step()
            sched.step()
            model.momentum_update()
            total_loss += float(loss.detach())
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_time += time.perf_counter() - t0
        seen += steps_per_epoch * bs
        if not math.isfinite(total_loss):
            raise FloatingPointError(f"training loss became {total_loss} at epoch {epoch}; lower the learning rate")
        metrics = validate(model, objective, val, pairs, bs, device)
        row = {"epoch": float(epoch), "train_loss": total_loss / steps_per_epoch, **metrics,
               "lr": float(sched.get_last_lr()[0]), "temperature": float(1.0 / model.scale().detach())}
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_r1=f"{row['val_r1']:.3f}")
        value = row[t_cfg.monitor]
        improved = value > best_value + t_cfg.min_delta if maximize else value < best_value - t_cfg.min_delta
        if improved:
            best_value, best_epoch, best_metrics, bad_epochs = value, epoch, dict(row), 0
            best_state = copy.deepcopy(model.state_dict())
            if out is not None:
                save_checkpoint(model, out, epoch=epoch, metrics=row)
        else:
            bad_epochs += 1
        stopped = bad_epochs >= t_cfg.patience
        if out is not None:
            q = objective.queue
            tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()},
                       **{f"best.{k}": v for k, v in (best_state or {}).items()},
                       "gen": gen.get_state(), **rng_tensors()}
            opt_tensors, opt_meta = optimizer_tensors(opt)
            tensors.update(opt_tensors)
            if q is not None and q.img is not None and q.txt is not None and q.ids is not None:
                tensors.update({"queue.img": q.img, "queue.txt": q.txt, "queue.ids": q.ids})
            ckpt.save_state(out, epoch, tensors, {
                "config": ckpt.config_fingerprint(config), "data": data_fp, "optimizer": opt_meta,
                "scheduler": sched.state_dict(), "queue": {"ptr": q.ptr, "count": q.count} if q is not None else None,
                "history": history, "best_metrics": best_metrics, "best_value": best_value, "best_epoch": best_epoch,
                "bad_epochs": bad_epochs, "seen": seen, "train_time": train_time, "stopped": stopped,
                "finished": stopped or epoch == t_cfg.num_epochs,
            })
        if on_epoch is not None:
            on_epoch(epoch, row)
        if stopped:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    files: dict[str, str] = {}
    if out is not None:
        with atomic_write(out / "loss_history.json") as fh:
            fh.write(json.dumps(history, indent=1).encode("utf-8"))
        files = {"checkpoint": str(out / META), "weights": str(out / WEIGHTS), "history": str(out / "loss_history.json")}
        if plots:
            from .plots import plot_training_curves

            plot_training_curves(history, out / "training_curves.png")
            files["curves"] = str(out / "training_curves.png")
    return TrainResult(model, history, best_epoch, best_metrics, seen / train_time if train_time else 0.0,
                       stopped, out, files)


def save_checkpoint(model: ProjectionModel, out_dir: str | os.PathLike[str], *, epoch: int = 0,
                    metrics: dict[str, float] | None = None) -> Path:
    """Write ``model.safetensors`` then ``checkpoint.json`` (which names the weights' hash)."""
    from safetensors.torch import save

    out = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save(state, metadata={"format": _FORMAT})
    with atomic_write(out / WEIGHTS) as fh:
        fh.write(blob)
    meta = {
        "format": _FORMAT,
        "version": 1,
        "weights": WEIGHTS,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "image_dim": model.image_dim,
        "text_dim": model.text_dim,
        "epoch": epoch,
        "metrics": metrics or {},
        "config": model.config.to_dict(),
    }
    with atomic_write(out / META) as fh:
        fh.write(json.dumps(meta, indent=1).encode("utf-8"))
    return out / META


def load_checkpoint(path: str | os.PathLike[str], device: str = "cpu") -> ProjectionModel:
    """Rebuild a model from a checkpoint folder (or its ``checkpoint.json``), weights checked."""
    from safetensors.torch import load

    p = Path(path)
    meta_path = p / META if p.is_dir() else p
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"{meta_path}: no checkpoint here; train first", str(meta_path)) from e
    except (OSError, ValueError) as e:
        raise DataError(f"{meta_path}: unreadable checkpoint metadata: {e}", str(meta_path)) from e
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise DataError(f"{meta_path}: not a ferroclip heads checkpoint", str(meta_path))
    wpath = meta_path.parent / str(meta.get("weights", WEIGHTS))
    try:
        blob = wpath.read_bytes()
    except OSError as e:
        raise DataError(f"{wpath}: cannot read checkpoint weights: {e}", str(wpath)) from e
    if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
        raise DataError(f"{wpath}: weights do not match {meta_path.name} (partial or foreign file)", str(wpath))
    config = HeadsConfig.from_dict(meta["config"], str(meta_path))
    model = ProjectionModel(config, int(meta["image_dim"]), int(meta["text_dim"]))
    try:
        model.load_state_dict(load(blob), strict=True)
    except RuntimeError as e:
        raise DataError(f"{wpath}: weights do not fit the config in {meta_path.name}: {e}", str(wpath)) from e
    return model.to(torch.device(device)).eval()
