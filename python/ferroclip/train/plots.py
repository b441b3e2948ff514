"""PNG figures: confusion matrix, training curves, 2-d maps of the learned space.

matplotlib is imported here, lazily, with the Agg backend: the library must work on
servers without a display and without matplotlib for users who never plot.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._atomic import atomic_write

__all__ = ["plot_confusion_matrix", "plot_embedding_map", "plot_training_curves"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> None:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    with atomic_write(path) as fh:
        fh.write(buf.getvalue())


def plot_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: str | os.PathLike[str], title: str = "") -> None:
    """Row-normalised confusion matrix (true class per row), counts written in the cells."""
    plt = _pyplot()
    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * n + 2), max(3.5, 0.5 * n + 1.5)))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    _save(fig, path)


def plot_training_curves(history: Sequence[dict[str, float]], path: str | os.PathLike[str]) -> None:
    """Train and validation loss per epoch, and validation R@1 on a second axis."""
    plt = _pyplot()
    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(ep, [h["train_loss"] for h in history], label="train loss")
    ax.plot(ep, [h["val_loss"] for h in history], label="val loss")
    ax.set(xlabel="epoch", ylabel="loss")
    ax2 = ax.twinx()
    ax2.plot(ep, [h["val_r1"] for h in history], color="tab:green", linestyle="--", label="val R@1")
    ax2.set_ylabel("val R@1 (mean of I2T, T2I)")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="best")
    _save(fig, path)


def plot_embedding_map(
    images: np.ndarray,
    texts: np.ndarray,
    path: str | os.PathLike[str],
    method: str = "pca",
    *,
    text_to_image: np.ndarray | None = None,
    max_points: int = 1000,
    seed: int = 0,
) -> None:
    """Images and captions of the learned space in 2-d (PCA or t-SNE), lines to own image."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    plt = _pyplot()
    rng = np.random.default_rng(seed)
    n_img = min(len(images), max_points // 2)
    pick = np.sort(rng.choice(len(images), n_img, replace=False)) if n_img < len(images) else np.arange(len(images))
    t_pick = np.arange(len(texts)) if text_to_image is None else np.flatnonzero(np.isin(text_to_image, pick))
    t_pick = t_pick[: max_points - n_img]
    x = np.concatenate([images[pick], texts[t_pick]]).astype(np.float64)
    if method == "pca":
        xy = PCA(n_components=2, random_state=seed).fit_transform(x)
    elif method == "tsne":
        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    else:
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    fig, ax = plt.subplots(figsize=(6, 6))
    if text_to_image is not None and len(t_pick) <= 300:
        where = {int(k): i for i, k in enumerate(pick)}
        for j, t in enumerate(t_pick):
            a, b = xy[where[int(text_to_image[t])]], xy[n_img + j]
            ax.plot([a[0], b[0]], [a[1], b[1]], color="0.8", linewidth=0.5, zorder=0)
    ax.scatter(xy[:n_img, 0], xy[:n_img, 1], s=10, label="images")
    ax.scatter(xy[n_img:, 0], xy[n_img:, 1], s=6, marker="x", label="captions")
    ax.set_title(f"learned space ({method.upper()}, {n_img} images, {len(t_pick)} captions)")
    ax.legend(loc="best")
    _save(fig, path)
