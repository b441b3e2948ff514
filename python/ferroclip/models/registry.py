"""Named presets: short names for the checkpoints people use, with what they produce.

A preset is only a pointer (hub id + facts for ``ferroclip models``); loading always reads
the checkpoint's own config, so a preset never overrides what the weights say.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModelInfo", "get_preset", "list_models"]


@dataclass(frozen=True)
class ModelInfo:
    """A preset: ``source`` is a Hugging Face hub id (or anything ``load_model`` accepts)."""

    name: str
    source: str
    family: str  # "clip", "siglip", "siglip2", "mobileclip"
    dim: int
    image_size: int
    backend: str  # the backend "auto" picks for it
    description: str = ""


_PRESETS = [
    ModelInfo("clip-vit-b-32", "openai/clip-vit-base-patch32", "clip", 512, 224, "torch", "OpenAI CLIP ViT-B/32"),
    ModelInfo("clip-vit-b-16", "openai/clip-vit-base-patch16", "clip", 512, 224, "torch", "OpenAI CLIP ViT-B/16"),
    ModelInfo("clip-vit-l-14", "openai/clip-vit-large-patch14", "clip", 768, 224, "torch", "OpenAI CLIP ViT-L/14"),
    ModelInfo(
        "clip-vit-l-14-336", "openai/clip-vit-large-patch14-336", "clip", 768, 336, "torch", "OpenAI CLIP ViT-L/14@336"
    ),
    ModelInfo(
        "siglip-so400m-14-384", "google/siglip-so400m-patch14-384", "siglip", 1152, 384, "torch", "SigLIP SO400M/14@384"
    ),
    ModelInfo(
        "siglip2-base-16-224", "google/siglip2-base-patch16-224", "siglip2", 768, 224, "torch", "SigLIP2 B/16@224"
    ),
    ModelInfo(
        "siglip2-so400m-14-384",
        "google/siglip2-so400m-patch14-384",
        "siglip2",
        1152,
        384,
        "torch",
        "SigLIP2 SO400M/14@384 (fixed resolution)",
    ),
    ModelInfo(
        "mobileclip-s2",
        "apple/MobileCLIP-S2-onnx",
        "mobileclip",
        512,
        256,
        "onnx",
        "Apple MobileCLIP-S2, ONNX image encoder (256 px squash resize, CLIP normalisation)",
    ),
]
_BY_NAME = {m.name: m for m in _PRESETS}


def list_models() -> list[ModelInfo]:
    """All presets, in a stable order."""
    return list(_PRESETS)


def get_preset(name: str) -> ModelInfo | None:
    return _BY_NAME.get(name)


def offline_miss(source: str, exc: BaseException) -> str | None:
    """The message for a hub id asked for offline that the local cache does not hold, or
    ``None`` when ``source`` is a local path or ``exc`` is about something else."""
    import os

    if os.path.exists(source) or "/" not in source or source.startswith((".", "/")):
        return None
    text = str(exc)
    markers = ("couldn't connect", "offline mode", "cannot find the requested files", "locally cached", "local_files_only")
    if not any(m in text.lower() for m in markers):
        return None
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        where = f" ({HF_HUB_CACHE})"
    except ImportError:
        where = ""
    return (
        f"{source} is not in the local Hugging Face cache{where}, and offline mode does not download: "
        f"run once without --offline (local_files_only=False) to fetch it, or `hf download {source}`, "
        "or give a local checkpoint dir"
    )
