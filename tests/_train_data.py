"""Synthetic embeddings with planted structure for the training tests.

Each image is a random unit vector; each of its captions is the image embedding pushed
through one fixed random rotation (text space != image space, different dims) plus noise.
A head pair that learns the rotation retrieves held-out images far above chance.
"""

from __future__ import annotations

import numpy as np

from ferroclip.train.data import PairedEmbeddings


def planted(n_images: int = 240, image_dim: int = 32, text_dim: int = 48, captions: int = 5,
            noise: float = 0.3, seed: int = 0) -> PairedEmbeddings:
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((n_images, image_dim)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    q, _ = np.linalg.qr(rng.standard_normal((text_dim, text_dim)))
    rot = q[:, :image_dim].T  # (image_dim, text_dim), orthonormal rows
    t2i = np.repeat(np.arange(n_images), captions)
    txt = img[t2i] @ rot + noise * rng.standard_normal((len(t2i), text_dim)) / np.sqrt(text_dim)
    txt = txt.astype(np.float32)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return PairedEmbeddings(img, txt, tuple(f"img{i:05d}" for i in range(n_images)), t2i.astype(np.int64))
