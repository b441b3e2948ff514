"""Embedding models: load a CLIP-family checkpoint and embed, score, classify.

    >>> model = ferroclip.load_model("clip-vit-b-32")            # doctest: +SKIP
    >>> res = model.encode_images(["cat.jpg", "https://.../dog.png"])  # doctest: +SKIP
    >>> txt = model.encode_texts(["a photo of a cat"])           # doctest: +SKIP
"""

from .export import ExportCheckError, export_onnx
from .loader import load_model
from .model import EmbeddingModel, EncodeResult, ZeroShotResult
from .registry import ModelInfo, list_models

__all__ = [
    "EmbeddingModel",
    "EncodeResult",
    "ExportCheckError",
    "ModelInfo",
    "ZeroShotResult",
    "export_onnx",
    "list_models",
    "load_model",
]
