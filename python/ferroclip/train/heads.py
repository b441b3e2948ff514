"""Projection heads that map frozen image and text embeddings into one shared space.

Each modality gets its own head (the two input dims usually differ: seed 002 pairs SigLIP
images with E5-Mistral text). :class:`ProjectionModel` holds both heads, the temperature
(``logit_scale``, learnable or fixed), the SigLIP bias, and for momentum distillation an
exponential-moving-average copy of the heads. Outputs are L2-normalised, so dot products
are cosine similarities and ferroclip's retrieval functions apply directly.

A single embedding is one vector, and self-attention over a sequence of one token is the
identity. The attention heads therefore split the input into ``num_tokens`` learned tokens
first. The cross-modal head sends both modalities through the *same* learned latent
queries by cross-attention (Perceiver style), so the two sides are read into one space
while each side is still encoded on its own, as retrieval needs.
"""

from __future__ import annotations

import copy
import math
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import HeadsConfig, ModelConfig

__all__ = ["ProjectionModel", "build_model"]

_MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp


class MLPHead(nn.Module):
    """Linear → norm → activation → dropout → linear. ``hidden=0`` is a single linear map."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float, norm: str, act: str) -> None:
        super().__init__()
        if hidden == 0:
            self.net: nn.Module = nn.Linear(in_dim, out_dim)
            return
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden)]
        if norm == "layer":
            layers.append(nn.LayerNorm(hidden))
        elif norm == "batch":
            layers.append(nn.BatchNorm1d(hidden))
        layers += [nn.ReLU() if act == "relu" else nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast("torch.Tensor", self.net(x))


class Tokenizer(nn.Module):
    """One vector → ``num_tokens`` tokens of width ``hidden`` (learned split + positions)."""

    def __init__(self, in_dim: int, hidden: int, num_tokens: int) -> None:
        super().__init__()
        self.num_tokens, self.hidden = num_tokens, hidden
        self.proj = nn.Linear(in_dim, num_tokens * hidden)
        self.pos = nn.Parameter(torch.randn(num_tokens, hidden) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast("torch.Tensor", self.proj(x).view(-1, self.num_tokens, self.hidden) + self.pos)


class AttentionHead(nn.Module):
    """Self-attention refinement over the tokens of one embedding, then mean-pool and project."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, cfg: ModelConfig, dropout: float) -> None:
        super().__init__()
        self.tokens = Tokenizer(in_dim, hidden, cfg.num_tokens)
        layer = nn.TransformerEncoderLayer(
            hidden, cfg.num_heads, dim_feedforward=2 * hidden, dropout=dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast("torch.Tensor", self.out(self.norm(self.encoder(self.tokens(x))).mean(dim=1)))


class CrossModalCore(nn.Module):
    """Learned latent queries cross-attending to a modality's tokens; shared by both sides."""

    def __init__(self, hidden: int, out_dim: int, cfg: ModelConfig, dropout: float) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(cfg.num_tokens, hidden) * 0.02)
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(hidden), nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, cfg.num_heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * hidden, hidden))
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        q = self.latents.expand(tokens.shape[0], -1, -1)
        kv = self.norm_kv(tokens)
        h = q + self.attn(self.norm_q(q), kv, kv, need_weights=False)[0]
        h = h + self.ff(self.norm_ff(h))
        return cast("torch.Tensor", self.out(h.mean(dim=1)))


def _head(cfg: ModelConfig, in_dim: int) -> nn.Module:
    from .registry import head_factory

    user = head_factory(cfg.type)
    if user is not None:
        return cast("nn.Module", user(cfg, in_dim))
    hidden, dropout = cfg.resolved_hidden(in_dim), cfg.resolved_dropout()
    t = cfg.type
    if t == "siglip":
        return MLPHead(in_dim, 0 if cfg.hidden_dim is None else hidden, cfg.output_dim, dropout, "none", "gelu")
    if t == "clip":
        return MLPHead(in_dim, hidden, cfg.output_dim, dropout, "none", "gelu")
    if t == "align" or (t in ("mlp", "blip") and cfg.resolved_use_bn()):
        return MLPHead(in_dim, hidden, cfg.output_dim, dropout, "batch" if cfg.resolved_use_bn() else "layer", "relu")
    if t in ("mlp", "blip"):
        return MLPHead(in_dim, hidden, cfg.output_dim, dropout, "layer", "gelu")
    if t == "attention":
        return AttentionHead(in_dim, hidden, cfg.output_dim, cfg, dropout)
    if t == "cross_modal":
        return Tokenizer(in_dim, hidden, cfg.num_tokens)
    raise ValueError(f"unknown head type {t!r}")


class ProjectionModel(nn.Module):
    """Image head, text head, temperature and (optionally) bias and momentum copies.

    ``encode_image`` / ``encode_text`` take torch tensors; ``project_images`` /
    ``project_texts`` take arrays and return L2-normalised float32 numpy rows.
    """

    def __init__(self, config: HeadsConfig, image_dim: int, text_dim: int) -> None:
        super().__init__()
        m = config.model
        self.config = config
        self.image_dim, self.text_dim = int(image_dim), int(text_dim)
        self.image_head = _head(m, image_dim)
        self.text_head = _head(m, text_dim)
        self.shared = CrossModalCore(m.resolved_hidden(max(image_dim, text_dim)), m.output_dim, m, m.resolved_dropout()) if m.type == "cross_modal" else None
        learnable = m.resolved_learnable_temp()
        init = math.log(1.0 / config.loss.temperature)
        self.logit_scale = nn.Parameter(torch.tensor(init), requires_grad=learnable)
        # CLIP clamps the scale at 100. A run that starts at or past it (seed 002's SigLIP
        # temperature 0.01 is exactly 100) would sit on the clamp with zero gradient and
        # never learn; its bound is raised a decade above the start instead.
        self.max_log_scale = _MAX_LOGIT_SCALE if init < _MAX_LOGIT_SCALE - 1e-6 else init + math.log(10.0)
        sigmoid = config.loss_type == "sigmoid"
        self.logit_bias = nn.Parameter(torch.tensor(float(config.loss.bias_init)), requires_grad=sigmoid)
        self.momentum = m.momentum
        self.has_momentum = config.loss_type == "momentum_distill"
        if self.has_momentum:
            self.image_head_m = copy.deepcopy(self.image_head)
            self.text_head_m = copy.deepcopy(self.text_head)
            self.shared_m = copy.deepcopy(self.shared)
            for p in self._momentum_params():
                p.requires_grad_(False)

    def _momentum_params(self) -> list[nn.Parameter]:
        mods = [self.image_head_m, self.text_head_m] + ([self.shared_m] if self.shared_m is not None else [])
        return [p for mod in mods for p in mod.parameters()]

    def _online_params(self) -> list[nn.Parameter]:
        mods = [self.image_head, self.text_head] + ([self.shared] if self.shared is not None else [])
        return [p for mod in mods for p in mod.parameters()]

    def scale(self) -> torch.Tensor:
        """The logit multiplier ``1/temperature``, clamped at 100 as CLIP does (or a decade
        above the initial value when training starts at 100 or higher)."""
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    def _encode(self, head: nn.Module, shared: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        h = head(x)
        if shared is not None:
            h = shared(h)
        return F.normalize(h, dim=-1)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode(self.image_head, self.shared, x)

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode(self.text_head, self.shared, x)

    @torch.no_grad()
    def encode_momentum(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self._encode(self.image_head_m, self.shared_m, images), self._encode(self.text_head_m, self.shared_m, texts))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """EMA step of the momentum copies towards the online heads (BLIP/ALBEF)."""
        if not self.has_momentum:
            return
        for pm, p in zip(self._momentum_params(), self._online_params()):
            pm.mul_(self.momentum).add_(p.detach(), alpha=1.0 - self.momentum)
        for bm, b in zip(self._momentum_buffers(), self._online_buffers()):
            bm.copy_(b)

    def _momentum_buffers(self) -> list[torch.Tensor]:
        mods = [self.image_head_m, self.text_head_m] + ([self.shared_m] if self.shared_m is not None else [])
        return [b for mod in mods for b in mod.buffers()]

    def _online_buffers(self) -> list[torch.Tensor]:
        mods = [self.image_head, self.text_head] + ([self.shared] if self.shared is not None else [])
        return [b for mod in mods for b in mod.buffers()]

    def train(self, mode: bool = True) -> ProjectionModel:
        super().train(mode)
        if self.has_momentum:  # the teacher never uses dropout or batch statistics
            for mod in (self.image_head_m, self.text_head_m, self.shared_m):
                if mod is not None:
                    mod.eval()
        return self

    @torch.no_grad()
    def _project(self, x: Any, which: str, batch_size: int) -> np.ndarray:
        arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        want = self.image_dim if which == "image" else self.text_dim
        if arr.ndim != 2 or arr.shape[1] != want:
            from ..errors import ShapeError

            raise ShapeError(f"{which} embeddings must have shape (rows, {want}), got {arr.shape}")
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        enc = self.encode_image if which == "image" else self.encode_text
        out = [enc(torch.from_numpy(arr[i : i + batch_size]).to(device)).cpu().numpy() for i in range(0, len(arr), batch_size)]
        self.train(was)
        return np.concatenate(out) if out else np.zeros((0, self.config.model.output_dim), np.float32)

    def project_images(self, x: Any, batch_size: int = 4096) -> np.ndarray:
        """Image embeddings (rows, image_dim) → unit rows in the shared space."""
        return self._project(x, "image", batch_size)

    def project_texts(self, x: Any, batch_size: int = 4096) -> np.ndarray:
        """Text embeddings (rows, text_dim) → unit rows in the shared space."""
        return self._project(x, "text", batch_size)


def build_model(config: HeadsConfig, image_dim: int, text_dim: int, seed: int | None = None) -> ProjectionModel:
    """A freshly initialised model; ``seed`` (default ``config.training.seed``) fixes the init."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.training.seed if seed is None else seed)
        return ProjectionModel(config, image_dim, text_dim)
