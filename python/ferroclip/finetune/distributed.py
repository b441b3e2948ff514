"""Multi-process fine-tuning under torch.distributed (torchrun): what each rank must agree on.

Semantics are open_clip's: every rank encodes its own slice of the global batch, the
features are all-gathered so the loss sees the **global** batch as negatives, and each rank
back-propagates only into its own slice. The gradient of the global loss is then the *sum*
over ranks of those partial gradients, so tower gradients are all-reduced with SUM (not
DDP's mean, which would silently divide the step by the number of ranks), while the
parameters used only by the loss (logit scale/bias, a loss's own temperature) already got
the full gradient on every rank and are averaged. N ranks with per-rank batch b therefore
take the same step as one process with batch N·b, to float rounding (tested with gloo).

gloo is used on CPU and NCCL on CUDA, chosen from the device. Dropout draws per-rank random
numbers, so with dropout on the masks differ from a single-process run (CLIP and SigLIP
checkpoints train with dropout 0).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "from_env"]


@dataclass(frozen=True)
class DistContext:
    rank: int
    world: int
    local_rank: int
    backend: str

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, img: torch.Tensor, txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All ranks' features in rank order; this rank's rows keep their autograd graph.

        Ranks may hold different row counts (an image that failed to decode drops out of
        its rank's slice), so rows are padded to the largest count for the collective.
        """
        n = torch.tensor([len(img)], device=img.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(sizes, n)
        counts = [int(s.item()) for s in sizes]
        top = max(counts)

        def one(x: torch.Tensor) -> torch.Tensor:
            pad = torch.zeros((top - len(x), *x.shape[1:]), dtype=x.dtype, device=x.device)
            buf = torch.cat([x.detach(), pad])
            parts = [torch.empty_like(buf) for _ in range(self.world)]
            dist.all_gather(parts, buf)
            rows = [p[:c] for p, c in zip(parts, counts)]
            rows[self.rank] = x  # the local rows carry the gradient
            return torch.cat(rows)

        return one(img), one(txt)

    def share(self, n: int) -> slice:
        """This rank's contiguous part of ``n`` rows; in rank order the parts tile ``0..n``."""
        return slice(n * self.rank // self.world, n * (self.rank + 1) // self.world)

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's ``(rows, dim)`` float block, concatenated in rank order (no gradient).

        Row counts may differ (padded to the largest for the collective, trimmed after),
        and a rank with no rows at all may pass a ``(0, 0)`` block: the width comes from
        the others."""
        shape = torch.tensor([x.shape[0], x.shape[1]], device=x.device)
        shapes = [torch.zeros_like(shape) for _ in range(self.world)]
        dist.all_gather(shapes, shape)
        counts = [int(s[0].item()) for s in shapes]
        dim = max(int(s[1].item()) for s in shapes)
        buf = torch.zeros((max(counts), dim), dtype=torch.float32, device=x.device)
        buf[: len(x)] = x.detach().float()
        parts = [torch.empty_like(buf) for _ in range(self.world)]
        dist.all_gather(parts, buf)
        return torch.cat([p[:c] for p, c in zip(parts, counts)])

    def reduce_gradients(self, towers: Iterable[torch.nn.Parameter], loss_only: Iterable[torch.nn.Parameter]) -> None:
        """Tower gradients summed over ranks; loss-only parameters' (already full) averaged."""
        # torch._utils is unannotated; these are its signatures.
        flatten: Callable[[Sequence[torch.Tensor]], torch.Tensor] = torch._utils._flatten_dense_tensors
        unflatten: Callable[[torch.Tensor, Sequence[torch.Tensor]], tuple[torch.Tensor, ...]] = (
            torch._utils._unflatten_dense_tensors
        )
        for params, average in ((list(towers), False), (list(loss_only), True)):
            grads = [p.grad for p in params if p.grad is not None]
            if not grads:
                continue
            flat = flatten(grads)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            if average:
                flat /= self.world
            for g, r in zip(grads, unflatten(flat, grads)):
                g.copy_(r)

    def barrier(self) -> None:
        dist.barrier()

    def broadcast_flag(self, flag: bool, device: torch.device) -> bool:
        t = torch.tensor([1 if flag else 0], device=device)
        dist.broadcast(t, 0)
        return bool(t.item())


def from_env(device: torch.device) -> DistContext | None:
    """The process group torchrun describes (``WORLD_SIZE`` > 1), initialised once; else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")), backend=backend)
