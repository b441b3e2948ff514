"""Validation during and after fine-tuning: Recall@K with the Rust metric, and WiSE-FT.

The validation images are preprocessed once, with the model's exact (reference)
preprocessing, and kept as one pixel array; every evaluation then only runs the towers.
WiSE-FT (Wortsman et al., 2022) evaluates ``(1-α)·base + α·fine-tuned`` weights: a middle
α often keeps most of the domain gain and much of the base model's zero-shot robustness.

Under torch.distributed each rank embeds a contiguous share of the validation images,
captions and class prompts, and the shares are all-gathered in rank order, so every rank
computes Recall@K on exactly the full set's embeddings (the single-process numbers, to
float rounding) and all ranks agree on the best step and on early stopping. The pixels are
still prepared on every rank, once, before training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..retrieval import class_embeddings, recall_at_k, zero_shot_classify
from .distributed import DistContext

__all__ = ["EvalSet", "evaluate_retrieval", "interpolate_weights"]


@dataclass
class EvalSet:
    """Validation pixels (one row per image), all captions' tokens, and caption → image.

    Labelled data adds ``labels`` (each image's class index, -1: none) and the tokens of
    ``num_templates`` prompts per class (class-major), for zero-shot accuracy.
    """

    pixel_values: np.ndarray
    tokens: dict[str, np.ndarray]
    text_to_image: np.ndarray
    labels: np.ndarray | None = None
    class_tokens: dict[str, np.ndarray] | None = None
    num_templates: int = 1

    def __len__(self) -> int:
        return len(self.pixel_values)


def _batched(fn: Callable[[slice], torch.Tensor], n: int, batch: int) -> np.ndarray:
    outs = [fn(slice(i, min(n, i + batch))).float().cpu().numpy() for i in range(0, n, batch)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


@torch.no_grad()
def evaluate_retrieval(
    towers: Any,
    data: EvalSet,
    *,
    device: torch.device,
    batch_size: int = 64,
    autocast: Callable[[], Any] | None = None,
    ks: Sequence[int] = (1, 5, 10),
    dist: DistContext | None = None,
) -> dict[str, float]:
    """I2T/T2I Recall@K (ferroclip's Rust metric) of ``towers`` on ``data``; ``val_r1`` is
    the mean of I2T and T2I R@1, the number the best checkpoint is chosen by. With labels,
    also ``zero_shot_acc``: the fraction of labelled images whose nearest class embedding
    (CLIP's recipe: the normalised mean of the class's prompt embeddings) is their class.

    With ``dist`` (every rank must call it) each rank embeds only its share and the
    embeddings are all-gathered; every rank returns the same, full-set metrics."""
    import contextlib

    was_training = towers.training
    towers.eval()
    ctx = autocast or contextlib.nullcontext
    try:
        with ctx():
            img = _sharded(
                lambda s: towers.encode_image(torch.from_numpy(data.pixel_values[s]).to(device)),
                len(data), batch_size, dist, device,
            )
            n_txt = len(data.text_to_image)
            txt = _encode_tokens(towers, data.tokens, n_txt, device, batch_size, dist)
            cls = None
            if data.labels is not None and data.class_tokens is not None:
                n_cls = len(data.class_tokens["input_ids"])
                cls = _encode_tokens(towers, data.class_tokens, n_cls, device, batch_size, dist)
    finally:
        towers.train(was_training)
    img /= np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
    txt /= np.maximum(np.linalg.norm(txt, axis=1, keepdims=True), 1e-12)
    ks = [k for k in ks if k <= max(len(img), 1)] or [1]
    m = recall_at_k(img, txt, data.text_to_image, ks=ks)
    assert isinstance(m, dict)
    out = {k: float(v) for k, v in m.items() if "R@" in k}
    out["val_r1"] = 0.5 * (out["i2t_R@1"] + out["t2i_R@1"])
    if cls is not None and data.labels is not None:
        labelled = data.labels >= 0
        if labelled.any():
            pred = zero_shot_classify(img[labelled], class_embeddings(cls, data.num_templates))
            assert isinstance(pred, np.ndarray)
            out["zero_shot_acc"] = float((pred == data.labels[labelled]).mean())
    return out


def _sharded(
    fn: Callable[[slice], torch.Tensor], n: int, batch: int, dist: DistContext | None, device: torch.device
) -> np.ndarray:
    """``fn`` over rows ``0..n`` in batches: all of them, or this rank's share then all-gathered."""
    if dist is None:
        return _batched(fn, n, batch)
    part = dist.share(n)
    local = _batched(lambda s: fn(slice(part.start + s.start, part.start + s.stop)), part.stop - part.start, batch)
    return dist.gather_rows(torch.from_numpy(local).to(device)).cpu().numpy()


def _encode_tokens(
    towers: Any, tokens: dict[str, np.ndarray], n: int, device: torch.device, batch_size: int, dist: DistContext | None
) -> np.ndarray:
    return _sharded(
        lambda s: towers.encode_text(
            torch.from_numpy(tokens["input_ids"][s]).to(device),
            torch.from_numpy(tokens["attention_mask"][s]).to(device) if "attention_mask" in tokens else None,
        ),
        n,
        batch_size,
        dist,
        device,
    )


def interpolate_weights(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """``(1-α)·base + α·tuned`` for every floating tensor (others, e.g. position ids, from ``tuned``)."""
    if base.keys() != tuned.keys():
        missing = sorted(set(base) ^ set(tuned))[:5]
        raise ValueError(f"base and fine-tuned weights have different keys (e.g. {missing})")
    return {
        k: torch.lerp(base[k].to(tuned[k].dtype), tuned[k], alpha) if tuned[k].is_floating_point() else tuned[k]
        for k in tuned
    }
