"""`finetune`: the whole-model contrastive fine-tuning run, from a config to a model directory.

One loop serves CLIP and SigLIP, locked or LoRA towers, any accumulation: every step is
:func:`~ferroclip.finetune.step.contrastive_backward` over the global batch, then clipping,
AdamW and the warmup + cosine schedule. What a step depends on (weights, optimiser state,
RNG, the batch of (seed, epoch, index)) is exactly what a checkpoint holds, so a run
stopped at step k and resumed equals the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from .._atomic import atomic_write
from .._optim import adamw
from ..config import PreprocessConfig
from ..data import CaptionDataset, load_pairs
from ..errors import ConfigError, DataError
from ..train.trainer import _lr_lambda  # the heads' warmup + cosine: one schedule for both loops
from ..losses import (
    CLIPContrastiveLoss,
    DomainSpecificLoss,
    HardNegativeMiningLoss,
    MultiScaleLoss,
    SigLIPLoss,
    TemperatureScheduler,
)
from .distributed import from_env
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import FinetuneConfig
from .evaluate import EvalSet, evaluate_retrieval, interpolate_weights
from .loader import PairLoader, split_micro
from .resolution import resize_image_processor, resize_position_table, resized_preprocess
from .step import contrastive_backward
from .towers import Towers

__all__ = ["FinetuneResult", "StepInfo", "finetune"]

log = logging.getLogger("ferroclip.finetune")


@dataclass
class FinetuneResult:
    """Where the run wrote its model, and what it measured."""

    output_dir: Path
    best_checkpoint: Path | None
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    steps: int
    bad_rows: int = 0
    failed_images: list[str] = field(default_factory=list)


@dataclass
class StepInfo:
    """Handed to callbacks after every optimiser step (and after its checkpoint, if any)."""

    step: int
    epoch: int
    loss: float
    checkpoint: Path | None


# --------------------------------------------------------------------------- setup helpers
def _device(cfg: FinetuneConfig) -> torch.device:
    from ..models.device import resolve_device

    name = cfg.device
    if name == "auto" and not cfg.use_mps and not torch.cuda.is_available():
        name = "cpu"
    return torch.device(resolve_device(name))


def _precision(cfg: FinetuneConfig, device: torch.device) -> str:
    asked = cfg.precision
    if device.type == "cuda":
        if asked == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return asked
    if device.type == "mps":
        return "fp32"  # seed 000/001: autocast on MPS is slower and less stable than fp32
    return "bf16" if asked == "bf16" else "fp32"


def _autocast(device: torch.device, precision: str) -> Callable[[], Any]:
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def build_loss(cfg: FinetuneConfig, family: str) -> torch.nn.Module:
    t = cfg.resolved_loss(family)
    common = {"learnable_temp": cfg.learnable_temp}
    if t == "contrastive":
        return CLIPContrastiveLoss(cfg.temperature, **common)
    if t == "sigmoid":
        return SigLIPLoss()
    if t == "hard_negative":
        return HardNegativeMiningLoss(cfg.temperature, cfg.hard_negative_ratio, cfg.hard_negative_mining_strategy,
                                      cfg.hard_negative_weight, **common)
    if t == "domain_specific":
        return DomainSpecificLoss(cfg.domain, cfg.temperature, cfg.domain_weight, **common)
    return MultiScaleLoss(cfg.multi_scale_scales, cfg.temperature, cfg.multi_scale_weights, True, **common)


def _loss_closure(cfg: FinetuneConfig, family: str, loss_fn: torch.nn.Module, towers: Towers) -> Callable[..., Any]:
    """How the loss gets its scale: the checkpoint's own learnable ``logit_scale`` (and
    SigLIP's ``logit_bias``) when those are trained, else the loss's own temperature."""
    if isinstance(loss_fn, SigLIPLoss):
        if towers.logit_bias is not None:
            return lambda i, t: loss_fn(i, t, logit_scale=towers.logit_scale.exp(), logit_bias=towers.logit_bias)
        return lambda i, t: loss_fn(i, t)
    if cfg.learnable_temp:
        return lambda i, t: loss_fn(i, t, logit_scale=towers.logit_scale.exp())
    towers.logit_scale.requires_grad_(False)
    return lambda i, t: loss_fn(i, t)


def _param_groups(towers: Towers, loss_fn: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay on norms, biases, embeddings of rank < 2 and the logit scale/bias."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in list(towers.named_parameters()) + [(f"loss.{n}", p) for n, p in loss_fn.named_parameters()]:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_" in name or name.startswith("loss.") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _default_batch_size(device: torch.device) -> int:
    # seed 001's defaults; CUDA probes the largest power of two that fits (see _probe)
    return {"mps": 16, "cpu": 8}.get(device.type, 16)


def _probe_batch_size(towers: Towers, loss_of: Callable[..., Any], image_hw: tuple[int, int], seq: int,
                      device: torch.device, autocast: Callable[[], Any]) -> int:
    """Largest power of two (≤ 512) whose forward + backward fits in CUDA memory."""
    from .step import MicroBatch

    best = 0
    b = 8
    while b <= 512:
        try:
            mb = MicroBatch(torch.zeros(b, 3, *image_hw, device=device), torch.zeros(b, seq, dtype=torch.long, device=device),
                            torch.ones(b, seq, dtype=torch.long, device=device))
            contrastive_backward(towers, [mb], loss_of, autocast=autocast)
            best = b
            b *= 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            towers.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    if best == 0:
        raise ConfigError("not even a batch of 8 fits in GPU memory; enable gradient_checkpointing or lora")
    return best


def _eval_set(part: CaptionDataset, pre: Any, tokenize: Callable[[list[str]], dict[str, np.ndarray]],
              templates: Sequence[str] = (), classes: Sequence[str] = ()) -> tuple[EvalSet, list[str]]:
    """The split's first image per image id, preprocessed once, all its captions' tokens,
    and, when ``classes`` is given (labelled data), each image's class and the class prompts."""
    groups = part.by_image()
    firsts = [part.pairs[idx[0]].image for idx in groups.values()]
    res = pre.preprocess(firsts)
    ok = np.asarray(res.ok, dtype=bool)
    failed = [str(e) for e in res.errors]
    keep = np.flatnonzero(ok)
    new_index = {int(old): new for new, old in enumerate(keep)}
    captions, mapping = [], []
    for img, idx in enumerate(groups.values()):
        if img in new_index:
            for i in idx:
                captions.append(part.pairs[i].caption)
                mapping.append(new_index[img])
    tokens = tokenize(captions) if captions else {"input_ids": np.zeros((0, 1), np.int64)}
    ev = EvalSet(np.ascontiguousarray(res.pixel_values[keep], dtype=np.float32), tokens, np.asarray(mapping, np.int64))
    if classes:
        of = {c: i for i, c in enumerate(classes)}
        names = [part.pairs[idx[0]].label for img, idx in enumerate(groups.values()) if img in new_index]
        ev.labels = np.array([of.get(n, -1) if n is not None else -1 for n in names], np.int64)
        ev.class_tokens = tokenize([t.format(c) for c in classes for t in templates])
        ev.num_templates = len(templates)
    return ev, failed


def _save_model_dir(model: torch.nn.Module, out: Path, tokenizer: Any, source: str, local_only: bool,
                    resolution: int | None = None) -> None:
    """A Hugging Face model directory that ``ferroclip.load_model`` and ``from_pretrained`` read
    (``resolution``: trained at that size, so the saved image processor resizes to it)."""
    from transformers import AutoImageProcessor, PreTrainedModel

    out.mkdir(parents=True, exist_ok=True)
    cast("PreTrainedModel", model).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    processor = AutoImageProcessor.from_pretrained(source, local_files_only=local_only)  # type: ignore[no-untyped-call]  # unannotated in transformers
    if resolution is not None:
        processor = resize_image_processor(processor, resolution)
    processor.save_pretrained(out)


# --------------------------------------------------------------------------- the run
def finetune(
    config: FinetuneConfig,
    resume: bool = False,
    *,
    data: CaptionDataset | None = None,
    progress: bool | None = None,
    callbacks: Sequence[Callable[[StepInfo], None]] = (),
    local_files_only: bool = False,
) -> FinetuneResult:
    """Fine-tune ``config.model_name`` on ``config.data_path`` (or ``data``); see the module doc.

    ``callbacks`` run after every step (a callback may raise to stop the run, e.g. on a
    signal; the last checkpoint stays usable for ``resume=True``).
    """
    from transformers import AutoTokenizer

    from ..models.loader import _family
    from ..models.registry import get_preset
    from ..models.text import rules_for
    from ..models.torch_backend import load_hf_model
    from ..preprocess import Preprocessor

    cfg = config
    cfg.validate()
    out = Path(cfg.output_dir or "outputs/finetune")
    if not resume and latest_checkpoint(out) is not None:
        raise ConfigError(f"{out} already holds a run's checkpoints: resume it (--resume) or pick another output_dir")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    device = _device(cfg)
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    ctx = from_env(device)
    main = ctx is None or ctx.main
    world = 1 if ctx is None else ctx.world
    precision = _precision(cfg, device)
    autocast = _autocast(device, precision)

    # data, split by image; the split is saved and a resumed run must see the same one
    ds = data if data is not None else load_pairs(cfg.data_path, image_column=cfg.image_column if cfg.image_column != "image_path" else None,
                                                   caption_column=cfg.caption_column if cfg.caption_column != "caption" else None,
                                                   sep=cfg.csv_separator if cfg.csv_separator != "," else None,
                                                   label_column=cfg.label_column)
    if ds.num_images < 2:
        raise DataError(f"{ds.source or 'the data'}: {ds.num_images} usable images; fine-tuning needs a contrastive batch")
    parts = ds.split(val=cfg.val_split, test=cfg.test_split, seed=cfg.seed)
    split_body = {k: list(v.image_ids) for k, v in parts.items()}
    split_path = out / "split.json"
    if resume and split_path.is_file():
        if json.loads(split_path.read_text(encoding="utf-8")) != split_body:
            raise DataError(f"{split_path}: the data or split settings changed since this run started; resume needs the same data")
    if main:
        with atomic_write(split_path) as fh:
            fh.write(json.dumps(split_body).encode("utf-8"))
    _info(main, "data: %s; train %d / val %d / test %d images", ds.summary(), parts["train"].num_images,
             parts["val"].num_images, parts["test"].num_images)

    # model
    preset = get_preset(cfg.model_name)
    source = preset.source if preset is not None else cfg.model_name
    model = load_hf_model(source, dtype="float32", local_files_only=local_files_only)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
    family = _family(model.config.model_type, tokenizer)
    rules = rules_for(family, getattr(model.config.text_config, "max_position_embeddings", None))
    rules = type(rules)(rules.padding, min(rules.max_length, cfg.max_sequence_length))
    pre_cfg = PreprocessConfig.from_pretrained(source, local_files_only=local_files_only)
    resolution: int | None = None  # set when training at another size than the checkpoint's
    r = cfg.image_resolution
    if r is not None and (tuple(pre_cfg.output_size) != (r, r) or model.config.vision_config.image_size != r):
        resize_position_table(model, r)
        pre_cfg = resized_preprocess(pre_cfg, r)
        resolution = r
        _info(main, "image_resolution: %d (position table interpolated from the checkpoint's grid)", r)
    image_hw = pre_cfg.output_size
    sizes = _training_sizes(cfg, model)
    if sizes:
        _info(main, "multi_resolution: each batch at one of %s px (evaluation at %dx%d)", sizes, *image_hw)
    towers = Towers(model)
    towers.lock(image=cfg.lock_image, text=cfg.lock_text, image_unlocked_layers=cfg.lock_image_unlocked_layers,
                text_unlocked_layers=cfg.lock_text_unlocked_layers)
    if cfg.lora is not None:
        towers.apply_lora(cfg.lora)
    if cfg.gradient_checkpointing:
        towers.enable_gradient_checkpointing()
    towers.to(device)
    loss_fn = build_loss(cfg, family).to(device)
    loss_of = _loss_closure(cfg, family, loss_fn, towers)

    tokenize = lambda texts: rules.tokenize(tokenizer, texts)  # noqa: E731
    threads = max(1, cfg.num_workers) if cfg.num_workers else 1
    exact = Preprocessor(pre_cfg, num_threads=threads)
    micro = cfg.batch_size
    if micro is None:
        probe_hw = (max(sizes), max(sizes)) if sizes else image_hw  # the largest batch must fit
        micro = (_probe_batch_size(towers, loss_of, probe_hw, rules.max_length, device, autocast)
                 if device.type == "cuda" else _default_batch_size(device))
        _info(main, "batch_size: %d (%s)", micro, "largest that fits" if device.type == "cuda" else f"{device.type} default")
    global_batch = micro * cfg.gradient_accumulation_steps * world  # the contrastive batch of one step
    prepare = _train_prepare(cfg, pre_cfg, exact, threads)
    loader = PairLoader(parts["train"], prepare=prepare, tokenize=tokenize, batch_size=global_batch, image_hw=image_hw,
                        image_sizes=sizes, seed=cfg.seed, shuffle=cfg.shuffle, augment_text=cfg.augment_text,
                        pin_memory=device.type == "cuda", prefetch=cfg.num_workers > 0,
                        rank=0 if ctx is None else ctx.rank, world=world)
    steps_per_epoch = len(loader)
    total = cfg.num_epochs * steps_per_epoch
    if cfg.max_steps is not None:  # as in transformers' Trainer: max_steps overrides num_epochs
        total = cfg.max_steps
    params = [p for g in _param_groups(towers, loss_fn, cfg.weight_decay) for p in g["params"]]
    loss_params = [p for n, p in towers.named_parameters() if p.requires_grad and "logit_" in n]
    loss_params += [p for p in loss_fn.parameters() if p.requires_grad]
    tower_params = [p for p in params if all(p is not q for q in loss_params)]
    optimizer = adamw(_param_groups(towers, loss_fn, cfg.weight_decay), lr=cfg.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, cfg.warmup_steps))
    scaler = torch.amp.grad_scaler.GradScaler(device.type) if precision == "fp16" else None
    temp_sched = None
    if cfg.temperature_scheduling and not cfg.learnable_temp and hasattr(loss_fn, "log_scale") and not isinstance(loss_fn, SigLIPLoss):
        temp_sched = TemperatureScheduler(cfg.temperature, min(cfg.min_temp, cfg.temperature), max(cfg.max_temp, cfg.temperature),
                                          cfg.warmup_steps, total, cfg.temperature_schedule_type)

    # validation data and the base model's numbers, before any step
    val_set: EvalSet | None
    failed_val: list[str]
    val_set, failed_val = (None, [])
    # Zero-shot classes: every label of the data (all splits), sorted, so the candidate set
    # does not depend on which images the split put in validation.
    classes = sorted({p.label for p in ds.pairs if p.label is not None}) if cfg.label_column else []
    if cfg.label_column and len(classes) < 2:
        raise DataError(f"{ds.source or 'the data'}: label_column {cfg.label_column!r} holds {len(classes)} class(es); zero-shot needs 2 or more")
    if parts["val"].num_images:
        val_set, failed_val = _eval_set(parts["val"], exact, tokenize, cfg.zero_shot_templates, classes)
    history: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {"device": str(device), "precision": precision, "family": family,
                               "loss_type": cfg.resolved_loss(family), "batch_size": micro,
                               "gradient_accumulation_steps": cfg.gradient_accumulation_steps, "world_size": world,
                               "contrastive_batch": global_batch, "steps_per_epoch": steps_per_epoch, "total_steps": total}
    # The base weights for WiSE-FT, kept only when it will run (a model-sized copy in memory).
    base_state = ({k: v.detach().to("cpu").clone() for k, v in towers.merged_model().state_dict().items()}
                  if parts["val"].num_images and wise_alphas(cfg) else {})
    def evaluate(t: Towers = towers, sharded: bool = True) -> dict[str, float]:
        """Validation metrics; during training every rank embeds its share (all ranks must call)."""
        assert val_set is not None
        return evaluate_retrieval(t, val_set, device=device, batch_size=cfg.eval_batch_size, autocast=autocast,
                                  dist=ctx if sharded else None)

    has_val = val_set is not None and len(val_set) > 0
    step = 0
    run_loss, run_n = 0.0, 0
    best: dict[str, Any] = {"val_r1": -1.0, "step": None}
    stale = 0
    if resume:
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            log.warning("--resume: no checkpoint in %s; starting from step 0", out)
        else:
            st = load_checkpoint(ckpt, model=towers.model, loss_fn=loss_fn, optimizer=optimizer)
            step = st.step
            scheduler.load_state_dict(st.meta["scheduler"])
            if scaler is not None and st.meta.get("scaler"):
                scaler.load_state_dict(st.meta["scaler"])
            if temp_sched is not None and st.meta.get("temperature_scheduler"):
                temp_sched.load_state_dict(st.meta["temperature_scheduler"])
                loss_fn.temperature = temp_sched.current  # type: ignore[assignment]  # a float attribute of our loss modules
            history, best, stale = st.meta["history"], st.meta["best"], int(st.meta.get("stale", 0))
            metrics["base"] = st.meta.get("base_metrics")
            run_loss, run_n = st.meta.get("running_loss", [0.0, 0])  # the log window spans the cut
            _info(main, "resumed from %s (step %d)", ckpt, step)
    if has_val and "base" not in metrics:
        metrics["base"] = evaluate()
        _info(main, "base model on val: %s", _fmt(metrics["base"]))

    # the loop
    from tqdm.auto import tqdm

    show = progress if progress is not None else None
    bar = tqdm(total=total, initial=step, unit="step", desc="finetune", disable=(show is False) or not main, dynamic_ncols=True)
    towers.train()
    t0, pairs = time.perf_counter(), 0
    failed_train: list[str] = []
    stop = False
    try:
        while step < total and not stop:
            epoch, index = divmod(step, steps_per_epoch)
            for batch in loader.batches(epoch, index):
                failed_train += [str(e) for e in batch.failures]
                if ctx is None and len(batch) < 2:
                    log.warning("step %d: fewer than 2 decodable images in the batch; skipped", step)
                    step += 1
                    continue
                optimizer.zero_grad(set_to_none=True)
                mbs = split_micro(batch, micro, device, non_blocking=device.type == "cuda")
                out_d = contrastive_backward(towers, mbs, loss_of, autocast=autocast,
                                             scale_loss=scaler.scale if scaler is not None else (lambda x: x),
                                             gather=None if ctx is None else ctx.gather)
                if ctx is not None:
                    ctx.reduce_gradients(tower_params, loss_params)
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                step += 1
                loss_val = float(out_d["loss"])
                if temp_sched is not None:
                    loss_fn.temperature = temp_sched.step(step, loss=loss_val)  # type: ignore[assignment]  # a float attribute of our loss modules
                run_loss, run_n, pairs = run_loss + loss_val, run_n + 1, pairs + len(batch)
                bar.update(1)
                rate = pairs / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{loss_val:.4f}", pairs_s=f"{rate:.1f}")
                if step % cfg.logging_steps == 0 or step == total:
                    entry: dict[str, Any] = {"step": step, "epoch": epoch, "loss": run_loss / run_n, "lr": scheduler.get_last_lr()[0],
                             "temperature": float(out_d["temperature"]), "pairs_per_s": rate,
                             "elapsed_s": time.perf_counter() - t0}
                    for k in ("hard_negative_ratio_actual", "scale_losses"):
                        if k in out_d:
                            v = out_d[k]
                            entry[k] = v.tolist() if v.ndim else float(v)
                    history.append(entry)
                    _info(main, "step %d/%d epoch %d loss %.4f lr %.3g %.1f pairs/s", step, total, epoch, entry["loss"], entry["lr"], rate)
                    run_loss, run_n = 0.0, 0
                if has_val and (step % cfg.eval_steps == 0 or step == total):
                    m = evaluate()
                    history.append({"step": step, "epoch": epoch, **{f"val_{k}" if not k.startswith("val_") else k: v for k, v in m.items()}})
                    _info(main, "step %d val: %s", step, _fmt(m))
                    if m["val_r1"] > best["val_r1"]:
                        best, stale = {"val_r1": m["val_r1"], "step": step, "metrics": m}, 0
                        if main:
                            _save_model_dir(towers.merged_model(), out / "best", tokenizer, source, local_files_only, resolution)
                    else:
                        stale += 1
                        if cfg.early_stopping_patience is not None and stale >= cfg.early_stopping_patience:
                            _info(main, "early stopping: %d evaluations without a better val R@1", stale)
                            stop = True
                ckpt_path = None
                if step % cfg.save_steps == 0 or step == total or stop:
                    meta = {"epoch": epoch, "scheduler": scheduler.state_dict(), "history": history, "best": best,
                            "stale": stale, "base_metrics": metrics.get("base"), "running_loss": [run_loss, run_n],
                            "scaler": scaler.state_dict() if scaler is not None else None,
                            "temperature_scheduler": temp_sched.state_dict() if temp_sched is not None else None,
                            "config": cfg.to_dict()}
                    if main:
                        ckpt_path = save_checkpoint(out, step, model=towers.model, loss_fn=loss_fn, optimizer=optimizer, meta=meta)
                    if ctx is not None:
                        ctx.barrier()  # no rank runs ahead of a checkpoint it could be resumed from
                for cb in callbacks:
                    cb(StepInfo(step=step, epoch=epoch, loss=loss_val, checkpoint=ckpt_path))
                if step >= total or stop:
                    break
    finally:
        bar.close()

    if not main:  # rank 0 writes the model, evaluates WiSE-FT and the test split
        assert ctx is not None
        ctx.barrier()
        return FinetuneResult(output_dir=out, best_checkpoint=None, history=history, metrics=metrics, steps=step)
    # the final model at the top level: the best by val R@1 when there was validation
    final = towers.merged_model()
    best_dir = out / "best" if (out / "best").is_dir() and best.get("step") is not None else None
    if best_dir is not None:
        from safetensors.torch import load_file

        final.load_state_dict(load_file(str(best_dir / "model.safetensors")))
    _save_model_dir(final, out, tokenizer, source, local_files_only, resolution)
    metrics["final_step"] = step
    metrics["best"] = best
    if has_val and wise_alphas(cfg):
        # rank 0 alone from here on: no collectives
        metrics["wise_ft"] = _wise_ft(cfg, final, base_state, lambda t: evaluate(t, sharded=False), out, tokenizer, source,
                                      local_files_only, resolution)
    if parts["test"].num_images:
        test_set, _ = _eval_set(parts["test"], exact, tokenize, cfg.zero_shot_templates, classes)
        if len(test_set):
            metrics["test"] = evaluate_retrieval(Towers(final).to(device), test_set, device=device,
                                                 batch_size=cfg.eval_batch_size, autocast=autocast)
    metrics["bad_rows"] = [str(b) for b in ds.bad_rows]
    metrics["failed_images"] = sorted(set(failed_val + failed_train))
    _write_json(out / "history.json", history)
    _write_json(out / "metrics.json", metrics)
    cfg.to_yaml(out / "finetune_config.yaml")
    _plot_curves(history, out / "training_curves.png")
    if ctx is not None:
        ctx.barrier()
    return FinetuneResult(output_dir=out, best_checkpoint=best_dir, history=history, metrics=metrics, steps=step,
                          bad_rows=len(ds.bad_rows), failed_images=metrics["failed_images"])


def wise_alphas(cfg: FinetuneConfig) -> list[float]:
    return sorted(set(float(a) for a in cfg.wise_ft_alphas))


def _wise_ft(cfg: FinetuneConfig, final: torch.nn.Module, base_state: dict[str, torch.Tensor],
             evaluate: Callable[[Towers], dict[str, float]], out: Path, tokenizer: Any, source: str, local_only: bool,
             resolution: int | None = None) -> dict[str, Any]:
    """Evaluate ``(1-α)·base + α·fine-tuned`` for each α; write the table, the plot and the choice."""
    tuned = {k: v.detach().to("cpu").clone() for k, v in final.state_dict().items()}
    rows = []
    probe = Towers(final)
    try:
        for a in wise_alphas(cfg):
            final.load_state_dict(interpolate_weights(base_state, tuned, a))
            rows.append({"alpha": a, **evaluate(probe)})
    finally:
        final.load_state_dict(tuned)
    best_r1 = max(r["val_r1"] for r in rows)
    chosen = min(r["alpha"] for r in rows if r["val_r1"] >= best_r1 - 1e-9)
    body = {"alphas": rows, "chosen_alpha": chosen,
            "rule": "the smallest alpha with the best val R@1 (closest to the base model among the best)"}
    _write_json(out / "wise_ft.json", body)
    lines = ["| alpha | I2T R@1 | T2I R@1 | mean R@1 |", "|---|---|---|---|"]
    lines += [f"| {r['alpha']:.2f} | {r['i2t_R@1']:.3f} | {r['t2i_R@1']:.3f} | {r['val_r1']:.3f} |" for r in rows]
    with atomic_write(out / "wise_ft.md") as fh:
        fh.write(("\n".join(lines) + f"\n\nchosen alpha: {chosen}\n").encode("utf-8"))
    if chosen != 1.0:
        final_copy = type(final)(final.config)
        final_copy.load_state_dict(interpolate_weights(base_state, tuned, chosen))
        _save_model_dir(final_copy, out / "wise_ft", tokenizer, source, local_only, resolution)
    try:
        from ..train.plots import _pyplot, _save

        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["alpha"] for r in rows], [r["i2t_R@1"] for r in rows], marker="o", label="I2T R@1")
        ax.plot([r["alpha"] for r in rows], [r["t2i_R@1"] for r in rows], marker="o", label="T2I R@1")
        ax.axvline(chosen, color="grey", linestyle="--", label=f"chosen α={chosen}")
        ax.set(xlabel="α (0 = base model, 1 = fine-tuned)", ylabel="val recall", title="WiSE-FT")
        ax.legend()
        _save(fig, out / "wise_ft.png")
    except ImportError:
        log.info("matplotlib is not installed: no wise_ft.png")
    return body


def _plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    try:
        from ..train.plots import _pyplot, _save
    except ImportError:
        return
    train = [h for h in history if "loss" in h]
    val = [h for h in history if "val_r1" in h]
    if not train:
        return
    try:
        plt = _pyplot()
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([h["step"] for h in train], [h["loss"] for h in train], label="train loss")
    ax.set(xlabel="step", ylabel="loss")
    if val:
        ax2 = ax.twinx()
        ax2.plot([h["step"] for h in val], [h["val_r1"] for h in val], color="tab:green", linestyle="--", marker="o", label="val R@1")
        ax2.set_ylabel("val R@1 (mean of I2T, T2I)")
    ax.legend(loc="best")
    _save(fig, path)


def _info(main: bool, msg: str, *args: Any) -> None:
    if main:
        log.info(msg, *args)


def _write_json(path: Path, body: Any) -> None:
    with atomic_write(path) as fh:
        fh.write(json.dumps(body, indent=1, default=float).encode("utf-8"))


def _fmt(m: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in m.items() if k in ("i2t_R@1", "t2i_R@1", "i2t_R@5", "t2i_R@5", "zero_shot_acc"))


def _training_sizes(cfg: FinetuneConfig, model: Any) -> list[int] | None:
    """``multi_resolution``'s sizes, checked against the patch grid."""
    if not cfg.multi_resolution:
        return None
    patch = int(model.config.vision_config.patch_size)
    bad = [s for s in cfg.multi_resolution if s % patch]
    if bad:
        raise ConfigError(f"multi_resolution: {bad} not a multiple of the model's patch size {patch}")
    return sorted(set(cfg.multi_resolution))


def _train_prepare(cfg: FinetuneConfig, pre_cfg: PreprocessConfig, exact: Any, threads: int) -> Callable[..., Any]:
    """The training images' pipeline: the Rust augmentation, or the exact preprocessing."""
    if cfg.augment_images:
        from ..augment import TrainAugment

        aug = TrainAugment(pre_cfg, scale=(cfg.crop_scale[0], cfg.crop_scale[1]), ratio=(cfg.crop_ratio[0], cfg.crop_ratio[1]),
                           hflip=cfg.hflip, color_jitter=tuple(cfg.color_jitter) if cfg.color_jitter else None,  # type: ignore[arg-type]
                           grayscale=cfg.grayscale, seed=cfg.seed, num_threads=threads,
                           exif_transpose=exact.exif_transpose, alpha=exact.alpha,  # as evaluation does
                           pil_fallback=exact.pil_fallback)
        # the output size is the buffer's: the loader sizes it per batch (multi_resolution)
        return lambda images, epoch, idx, out: aug.augment(images, epoch=epoch, indices=idx, size=out.shape[2:], out=out)
    return lambda images, epoch, idx, out: exact.preprocess(images, out=out)
