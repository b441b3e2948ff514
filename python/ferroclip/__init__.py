"""ferroclip: CLIP-family image-text work with a Rust core.

Reference-exact, parallel image preprocessing in Rust; exact retrieval maths (similarity,
top-k, Recall@K); CLIP, SigLIP and SigLIP2 embedding on PyTorch or ONNX Runtime.
"""

from ._native import __version__
from .config import CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD, PreprocessConfig
from .errors import (
    ConfigError,
    DataError,
    FerroclipError,
    ImageDecodeError,
    ImageError,
    ImageFetchError,
    ImageNotFoundError,
    ImageReadError,
    ImageTooLargeError,
    ModelError,
    ModelNotFoundError,
    NotAFileError,
    ShapeError,
    UnsupportedFormatError,
)
from .preprocess import PreprocessResult, Preprocessor, decode_image
from .augment import AugmentParams, TrainAugment
from .retrieval import near_duplicates, recall_at_k, similarity, topk, zero_shot_classify
from .index import EmbeddingIndex
from .cache import FolderEmbeddings, embed_folder
from .fetch import fetch_url
from .scoring import SimilarityConfig, SimilarityInput, SimilarityResult, SimilarityScorer
from .models import (
    EmbeddingModel,
    EncodeResult,
    ExportCheckError,
    ModelInfo,
    ZeroShotResult,
    export_onnx,
    list_models,
    load_model,
)

__all__ = [
    "AugmentParams",
    "CLIP_MEAN",
    "CLIP_STD",
    "ConfigError",
    "DataError",
    "EmbeddingIndex",
    "EmbeddingModel",
    "EncodeResult",
    "ExportCheckError",
    "FerroclipError",
    "FolderEmbeddings",
    "ImageDecodeError",
    "ImageError",
    "ImageFetchError",
    "ImageNotFoundError",
    "ImageReadError",
    "ImageTooLargeError",
    "ModelError",
    "ModelInfo",
    "ModelNotFoundError",
    "NotAFileError",
    "PreprocessConfig",
    "PreprocessResult",
    "Preprocessor",
    "SIGLIP_MEAN",
    "SIGLIP_STD",
    "ShapeError",
    "SimilarityConfig",
    "SimilarityInput",
    "SimilarityResult",
    "SimilarityScorer",
    "TrainAugment",
    "UnsupportedFormatError",
    "ZeroShotResult",
    "__version__",
    "decode_image",
    "embed_folder",
    "export_onnx",
    "fetch_url",
    "list_models",
    "load_model",
    "near_duplicates",
    "recall_at_k",
    "similarity",
    "topk",
    "zero_shot_classify",
]
