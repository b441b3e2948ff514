"""Retrieval metrics of a trained model on held-out images, with ferroclip's Rust recall.

I2T counts an image as found at K when ANY of its captions ranks within K (COCO style);
T2I asks for the one image a caption describes. Median ranks are 1-based.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .._atomic import atomic_write
from ..retrieval import recall_at_k
from .data import PairedEmbeddings
from .heads import ProjectionModel

__all__ = ["evaluate_heads", "retrieval_metrics"]


def retrieval_metrics(images: np.ndarray, texts: np.ndarray, text_to_image: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """I2T / T2I Recall@K and median ranks of already-projected, unit-norm embeddings."""
    m = recall_at_k(images, texts, text_to_image, ks)
    out = {f"{d}_R@{k}": float(m[f"{d}_R@{k}"]) for d in ("i2t", "t2i") for k in ks}
    out["i2t_median_rank"] = float(m["i2t_median_rank"])
    out["t2i_median_rank"] = float(m["t2i_median_rank"])
    out["r1_mean"] = 0.5 * (out["i2t_R@1"] + out["t2i_R@1"])
    out["images"] = float(len(images))
    out["captions"] = float(len(texts))
    from .registry import metrics

    for name, fn in metrics().items():  # a user's own (ferroclip.train.registry.register_metric)
        out[name] = float(fn(images, texts, text_to_image))
    return out


def evaluate_heads(
    model: ProjectionModel,
    data: PairedEmbeddings,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    ks: tuple[int, ...] = (1, 5, 10),
    plots: bool = True,
    max_plot_points: int = 1000,
) -> dict[str, float]:
    """Project ``data`` (the test split) and score retrieval; optionally write JSON and PNGs.

    Writes ``metrics.json``, ``pca.png`` and ``tsne.png`` under ``out_dir`` when given.
    """
    img = model.project_images(data.images)
    txt = model.project_texts(data.texts)
    metrics = retrieval_metrics(img, txt, data.text_to_image, ks)
    if out_dir is not None:
        out = Path(out_dir)
        with atomic_write(out / "metrics.json") as fh:
            fh.write(json.dumps(metrics, indent=1).encode("utf-8"))
        if plots:
            from .plots import plot_embedding_map

            for method in ("pca", "tsne"):
                plot_embedding_map(img, txt, out / f"{method}.png", method, text_to_image=data.text_to_image,
                                   max_points=max_plot_points)
    return metrics
