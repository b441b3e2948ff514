"""ferroclip: CLIP-family image-text work with a Rust core.

Reference-exact, parallel image preprocessing today; retrieval maths, model embedding and
training build on it.
"""

from ._native import __version__
from .config import CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD, PreprocessConfig
from .errors import (
    ConfigError,
    FerroclipError,
    ImageDecodeError,
    ImageError,
    ImageNotFoundError,
    ImageReadError,
    ImageTooLargeError,
    NotAFileError,
    ShapeError,
    UnsupportedFormatError,
)
from .preprocess import PreprocessResult, Preprocessor, decode_image
from .retrieval import near_duplicates, recall_at_k, similarity, topk, zero_shot_classify
from .index import EmbeddingIndex

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "SIGLIP_MEAN",
    "SIGLIP_STD",
    "ConfigError",
    "EmbeddingIndex",
    "FerroclipError",
    "ImageDecodeError",
    "ImageError",
    "ImageNotFoundError",
    "ImageReadError",
    "ImageTooLargeError",
    "NotAFileError",
    "PreprocessConfig",
    "PreprocessResult",
    "Preprocessor",
    "ShapeError",
    "UnsupportedFormatError",
    "__version__",
    "decode_image",
    "near_duplicates",
    "recall_at_k",
    "similarity",
    "topk",
    "zero_shot_classify",
]
