"""One optimiser step's gradient over a contrastive batch larger than fits at once.

Accumulating by averaging per-micro-batch losses (transformers' Trainer) does not enlarge a
contrastive batch: each micro-batch only sees its own negatives. Here the loss sees all
``batch_size × gradient_accumulation_steps`` pairs, computed exactly from micro-batches
(GradCache, Gao et al. 2021):

1. every micro-batch is encoded without a graph, after saving the RNG state;
2. the loss over the concatenated features is back-propagated to the features only;
3. every micro-batch is encoded again with the graph, *its RNG state restored* (so dropout
   draws the same masks as in 1: open_clip's accumulation re-runs without restoring it,
   and its two passes differ), and back-propagated from the cached feature gradients.

The parameter gradients are those of the big batch's loss, to float rounding; memory is
one micro-batch's activations plus the features. With one micro-batch the plain
forward/backward runs instead (no second pass).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .towers import Towers

__all__ = ["MicroBatch", "contrastive_backward"]

LossFn = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


@dataclass
class MicroBatch:
    pixel_values: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.pixel_values)


def _rng_state(devices: Sequence[torch.device]) -> list[Any]:
    states: list[Any] = [torch.get_rng_state()]
    for d in devices:
        if d.type == "cuda":
            states.append(torch.cuda.get_rng_state(d))
        elif d.type == "mps":
            states.append(torch.mps.get_rng_state())
    return states


def _set_rng_state(devices: Sequence[torch.device], states: list[Any]) -> None:
    torch.set_rng_state(states[0])
    for d, s in zip(devices, states[1:]):
        if d.type == "cuda":
            torch.cuda.set_rng_state(s, d)
        elif d.type == "mps":
            torch.mps.set_rng_state(s)


def _encode(towers: Towers, mb: MicroBatch, autocast: Callable[[], Any]) -> tuple[torch.Tensor, torch.Tensor]:
    with autocast():
        img = towers.encode_image(mb.pixel_values)
        txt = towers.encode_text(mb.input_ids, mb.attention_mask)
    return img.float(), txt.float()


def contrastive_backward(
    towers: Towers,
    micro_batches: Sequence[MicroBatch],
    loss_fn: LossFn,
    *,
    autocast: Callable[[], Any] = contextlib.nullcontext,
    scale_loss: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    gather: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:
    """Accumulate into ``.grad`` the gradient of ``loss_fn`` over all micro-batches at once.

    ``loss_fn(image_features, text_features)`` gets the concatenated raw features (float32)
    and returns the loss dict; it may read learnable scales from the model (their gradient
    comes from step 2 directly). ``scale_loss`` is the fp16 GradScaler's ``scale``.
    ``gather`` (multi-process runs) turns this process's features into the global batch's,
    keeping the graph of the local rows, so the loss sees every rank's negatives.
    """
    join = gather if gather is not None else (lambda i, t: (i, t))
    if not micro_batches:
        raise ValueError("no micro-batches")
    if len(micro_batches) == 1:
        img, txt = _encode(towers, micro_batches[0], autocast)
        out = loss_fn(*join(img, txt))
        scale_loss(out["loss"]).backward()  # type: ignore[no-untyped-call]  # Tensor.backward is unannotated in torch
        return _detached(out)
    devices = sorted({mb.pixel_values.device for mb in micro_batches} - {torch.device("cpu")}, key=str)
    states, imgs, txts = [], [], []
    with torch.no_grad():
        for mb in micro_batches:
            states.append(_rng_state(devices))
            img, txt = _encode(towers, mb, autocast)
            imgs.append(img)
            txts.append(txt)
    after = _rng_state(devices)
    all_img = torch.cat(imgs).requires_grad_(True)
    all_txt = torch.cat(txts).requires_grad_(True)
    out = loss_fn(*join(all_img, all_txt))
    scale_loss(out["loss"]).backward()  # type: ignore[no-untyped-call]  # Tensor.backward is unannotated in torch
    sizes = [len(mb) for mb in micro_batches]
    assert all_img.grad is not None and all_txt.grad is not None
    g_img, g_txt = all_img.grad.split(sizes), all_txt.grad.split(sizes)  # type: ignore[no-untyped-call]  # Tensor.split is unannotated in torch
    for mb, state, gi, gt in zip(micro_batches, states, g_img, g_txt):
        _set_rng_state(devices, state)
        tensors: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        with autocast():
            # a locked tower is in eval mode and draws no random numbers: skipping it keeps
            # the other tower's dropout masks those of pass 1
            if towers.image_trainable:
                tensors.append(towers.encode_image(mb.pixel_values).float())
                grads.append(gi)
            if towers.text_trainable:
                tensors.append(towers.encode_text(mb.input_ids, mb.attention_mask).float())
                grads.append(gt)
        if tensors:
            torch.autograd.backward(tensors, grads)
    _set_rng_state(devices, after)
    return _detached(out)


def _detached(out: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
