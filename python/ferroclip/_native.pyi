# Hand-written stubs for the Rust extension. Private: use the names in `ferroclip`.
from collections.abc import Sequence
from typing import Any, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "__version__",
    "PreprocessSpec",
    "preprocess_batch",
    "decode_image",
    "resize_image",
    "resolve_num_threads",
    "AugmentSpec",
    "augment_batch",
    "gemm_backend",
    "similarity",
    "topk",
    "recall_at_k",
    "near_duplicates",
    "cpu_peak",
    "read_bandwidth",
]

__version__: str

@final
class PreprocessSpec:
    def __new__(
        cls,
        *,
        resize_mode: str,
        size: tuple[int, int],
        crop_size: tuple[int, int] | None = None,
        crop_rounding: str = "floor",
        resample: str = "bicubic",
        pil_version: str = "13",
        rescale: str = "mul",
        rescale_factor: float = ...,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        pad_value: tuple[int, int, int] = ...,  # (0, 0, 0)
        exif_transpose: bool = True,
        alpha: str = "white",
        max_pixels: int = ...,
        max_scans: int = ...,
        jpeg_draft: bool = False,
        max_file_bytes: int = ...,
        strict: bool = False,
        sixteen_bit: str = "scale",
    ) -> PreprocessSpec: ...
    def output_hw(self) -> tuple[int, int]: ...

def preprocess_batch(
    items: Sequence[Any],
    spec: PreprocessSpec,
    *,
    out: npt.NDArray[Any] | None = None,
    dtype: str = "float32",
    num_threads: int | None = None,
) -> tuple[npt.NDArray[Any], list[tuple[int, str | None, str, str]], list[tuple[int, list[str]]]]: ...
def decode_image(
    item: Any,
    *,
    exif_transpose: bool = True,
    alpha: str = "white",
    max_pixels: int = ...,
    sixteen_bit: str = "scale",
    pil_version: str = "13",
) -> npt.NDArray[np.uint8]: ...
def resize_image(
    image: npt.NDArray[np.uint8],
    width: int,
    height: int,
    *,
    resample: str = "bicubic",
    pil_version: str = "13",
    box: tuple[int, int, int, int] | None = None,
) -> npt.NDArray[np.uint8]: ...
def resolve_num_threads(num_threads: int | None = None) -> int: ...

# Training augmentation (ferroclip/augment.py validates).
@final
class AugmentSpec:
    def __new__(
        cls,
        *,
        scale: tuple[float, float] = ...,  # (0.08, 1.0)
        ratio: tuple[float, float] = ...,
        hflip: float = 0.5,
        color_jitter: tuple[float, float, float, float] | None = None,
        grayscale: float = 0.0,
        seed: int = 0,
        resample: str = "bicubic",
        pil_version: str = "13",
        rescale: str = "mul",
        rescale_factor: float = ...,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        exif_transpose: bool = True,
        alpha: str = "white",
        max_pixels: int = ...,
        max_scans: int = ...,
        max_file_bytes: int = ...,
        strict: bool = False,
        sixteen_bit: str = "scale",
    ) -> AugmentSpec: ...
    def params(
        self, width: int, height: int, epoch: int, indices: Sequence[int]
    ) -> list[tuple[tuple[int, int, int, int], bool, bool, list[tuple[str, float]]]]: ...

def augment_batch(
    items: Sequence[Any],
    spec: AugmentSpec,
    *,
    epoch: int,
    indices: Sequence[int],
    size: tuple[int, int],
    out: npt.NDArray[Any] | None = None,
    dtype: str = "float32",
    num_threads: int | None = None,
) -> tuple[npt.NDArray[Any], list[tuple[int, str | None, str, str]], list[tuple[int, list[str]]]]: ...

# Retrieval (ferroclip/retrieval.py validates; these take C-contiguous 2-d float32 arrays,
# float16 allowed where noted).
def similarity(
    a: npt.NDArray[Any], b: npt.NDArray[Any], *, num_threads: int | None = None
) -> npt.NDArray[np.float32]: ...
def topk(
    queries: npt.NDArray[np.float32],
    database: npt.NDArray[Any],
    k: int,
    *,
    num_threads: int | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def recall_at_k(
    image_emb: npt.NDArray[Any],
    text_emb: npt.NDArray[Any],
    text_to_image: npt.NDArray[np.int64],
    ks: Sequence[int],
    *,
    num_threads: int | None = None,
) -> tuple[dict[str, float], npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
def near_duplicates(
    emb: npt.NDArray[Any],
    threshold: float,
    *,
    max_pairs: int,
    num_threads: int | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
def gemm_backend() -> str: ...
def cpu_peak(rounds: int = 5) -> dict[str, float] | None: ...
def read_bandwidth(data: npt.NDArray[np.float32], threads: int = 1, rounds: int = 3) -> float: ...
