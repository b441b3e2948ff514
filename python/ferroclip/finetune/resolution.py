"""Training at another image resolution than the checkpoint's (seed 001's ``image_resolution``).

A ViT's position table has one row per patch of the resolution it was trained at. The
table is resized once, before training, with the model's own
``interpolate_pos_encoding`` (bicubic, as transformers does when it runs a CLIP or SigLIP
at a new size), and the config, the preprocessing and the saved image processor are set to
the new size. So the fine-tuned output is an ordinary checkpoint at that resolution: it
loads and embeds with ``load_model`` and transformers alike, with no flag at inference, and
before any step it computes exactly what the original model computes at that size with
``interpolate_pos_encoding=True``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..config import PreprocessConfig
from ..errors import ConfigError

__all__ = ["resize_image_processor", "resize_position_table", "resized_preprocess"]


def resize_position_table(model: Any, size: int) -> None:
    """Give ``model``'s vision tower a position table for ``size`` x ``size`` inputs."""
    emb = model.vision_model.embeddings
    patch = int(emb.patch_size)
    if size % patch:
        raise ConfigError(f"image_resolution={size} must be a multiple of the model's patch size {patch}")
    has_cls = hasattr(emb, "class_embedding")
    grid = size // patch
    n = grid * grid + (1 if has_cls else 0)
    weight = emb.position_embedding.weight
    with torch.no_grad():
        dummy = weight.new_zeros(1, n, weight.shape[1])
        table = emb.interpolate_pos_encoding(dummy, size, size)[0]
    new = torch.nn.Embedding(n, weight.shape[1], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(table)
    new.weight.requires_grad_(weight.requires_grad)
    emb.position_embedding = new
    emb.image_size = size
    emb.num_patches = grid * grid
    emb.num_positions = n
    emb.register_buffer("position_ids", torch.arange(n, device=weight.device).expand((1, -1)), persistent=False)
    model.config.vision_config.image_size = size


def resized_preprocess(config: PreprocessConfig, size: int) -> PreprocessConfig:
    """The same preprocessing (filter, rescale, mean/std, crop rule) ending at ``size``."""
    crop = None if config.crop_size is None else (size, size)
    return dataclasses.replace(config, size=(size, size), crop_size=crop)


def resize_image_processor(processor: Any, size: int) -> Any:
    """A transformers image processor with its size fields (``shortest_edge``, ``height``,
    ``width`` of ``size`` and ``crop_size``; a dict, or transformers 5's ``SizeDict``) set to
    ``size``, for saving beside the resized model."""
    for attr in ("size", "crop_size"):
        value = getattr(processor, attr, None)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):  # transformers 5's SizeDict
            value = {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
        if isinstance(value, dict) and value:
            setattr(processor, attr, {k: size if k in _SIZE_KEYS else v for k, v in value.items()})
    return processor


_SIZE_KEYS = ("height", "width", "shortest_edge")
