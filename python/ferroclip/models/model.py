"""`EmbeddingModel`: one object that preprocesses, embeds, scores and classifies.

The backend (PyTorch or ONNX Runtime) only maps pixel batches and token batches to
embeddings; everything users see (batching, the preprocessing pipeline, per-item errors,
normalisation, scoring) lives here once, so both backends behave the same.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import numpy.typing as npt

from ..config import PreprocessConfig
from ..errors import ImageError, ShapeError, raise_first
from .._sources import as_list
from ..preprocess import PreprocessResult, Preprocessor
from ..retrieval import class_embeddings
from .text import TextRules

if TYPE_CHECKING:
    from ..scoring import SimilarityResult

__all__ = ["Backend", "EmbeddingModel", "EncodeResult", "ZeroShotResult"]

DEFAULT_TEMPLATES = ("a photo of a {}.",)


class Backend(Protocol):
    name: str
    device: str
    dtype: str
    dim: int
    logit_scale: float
    logit_bias: float | None

    def pixel_buffer(self, shape: tuple[int, ...]) -> np.ndarray: ...

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray: ...

    def encode_tokens(self, tokens: dict[str, np.ndarray]) -> np.ndarray: ...


@dataclass
class EncodeResult:
    """Row ``i`` of ``embeddings`` belongs to input ``i``; failed rows are zero, ``ok[i]`` False."""

    embeddings: npt.NDArray[np.float32]
    ok: npt.NDArray[np.bool_]
    errors: list[ImageError | Exception] = field(default_factory=list)
    images_per_second: float = 0.0

    def __len__(self) -> int:
        return len(self.ok)

    def raise_for_errors(self) -> None:
        """Raise the first failure (its own class), saying how many others failed."""
        raise_first(self.errors)


@dataclass
class ZeroShotResult:
    """``probs[i, j]``: probability that image ``i`` shows ``labels[j]``.

    CLIP-style models give a softmax over the labels; SigLIP gives independent sigmoids
    (each row need not sum to 1), as each family was trained.

    Rows stay aligned with the input images. An image that could not be loaded has
    ``ok[i] == False``, a row of NaN in ``probs`` (so it cannot pass for a confident
    answer in a mean or a threshold), ``predicted[i] is None`` and its error in
    ``errors``; mask with ``probs[ok]`` before aggregating.
    """

    labels: list[str]
    probs: npt.NDArray[np.float32]
    predicted: list[str | None]
    ok: npt.NDArray[np.bool_]
    errors: list[ImageError | Exception] = field(default_factory=list)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return cast("np.ndarray", x / np.maximum(norms, np.float32(1e-12)))


class EmbeddingModel:
    """A CLIP-family model ready to embed images and texts. Build one with :func:`load_model`."""

    def __init__(
        self,
        backend: Backend,
        preprocess: PreprocessConfig,
        tokenizer: Any | None,
        text_rules: TextRules | None,
        *,
        family: str,
        name: str,
        num_threads: int | None = None,
        fast: bool = False,
        exif_transpose: bool = True,
        alpha: str | None = None,
    ) -> None:
        self.backend = backend
        self.preprocess_config = preprocess
        self.tokenizer = tokenizer
        self.text_rules = text_rules
        self.family = family
        self.name = name
        if num_threads is None and backend.device == "cpu":
            # The model owns the cores on CPU: one preprocessing thread (~800 images/s at
            # 640x480) outruns any CPU forward pass, and more threads only preempt the
            # model's spinning intra-op workers.
            num_threads = 1
        self.preprocessor = Preprocessor(
            preprocess, num_threads=num_threads, fast=fast, exif_transpose=exif_transpose, alpha=alpha  # type: ignore[arg-type]
        )

    # ------------------------------------------------------------------ facts
    @property
    def dim(self) -> int:
        return self.backend.dim

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def dtype(self) -> str:
        return self.backend.dtype

    def __repr__(self) -> str:
        return (
            f"EmbeddingModel({self.name!r}, family={self.family!r}, backend={self.backend.name!r}, "
            f"device={self.device!r}, dtype={self.dtype!r}, dim={self.dim})"
        )

    # ------------------------------------------------------------------ images
    def encode_images(
        self,
        images: Iterable[Any],
        *,
        batch_size: int = 64,
        normalize: bool = True,
        progress: bool | None = None,
    ) -> EncodeResult:
        """Embed images (paths, ``http(s)`` URLs, bytes, uint8 arrays, PIL images).

        Preprocessing of the next batch runs in Rust on a worker thread (GIL released)
        while the model runs the current one, so the accelerator is not kept waiting.
        A file that cannot be read or decoded becomes an entry in ``errors``; the rest of
        the batch is embedded.

        An already preprocessed float ``(N, 3, H, W)`` batch (numpy or torch, e.g. from a
        user's own DataLoader as in seed 000) is fed to the model as it is, after checking
        that ``(H, W)`` is the model's input size.

        ``progress``: ``None`` (default) draws a bar only on a terminal and only once the
        work has taken a couple of seconds; ``True`` always, ``False`` never.
        """
        from .._progress import bar as progress_bar

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pixels = self._pixel_batch(images)
        if pixels is not None:
            return self._encode_pixel_batch(pixels, batch_size, normalize)
        items = as_list(images)
        n = len(items)
        embeddings = np.zeros((n, self.dim), dtype=np.float32)
        ok = np.zeros(n, dtype=bool)
        errors: list[ImageError | Exception] = []
        h, w = self.preprocessor.output_size
        # Two host buffers: Rust fills one while the model reads the other.
        buffers = [self.backend.pixel_buffer((min(batch_size, n), 3, h, w)) for _ in range(2 if n > batch_size else 1)]
        starts = list(range(0, n, batch_size))

        def prepare(i: int) -> PreprocessResult:
            start = starts[i]
            chunk = items[start : start + batch_size]
            out = buffers[i % len(buffers)][: len(chunk)]
            return self.preprocessor.preprocess(chunk, out=out)

        t0 = time.perf_counter()
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="ferroclip-preprocess") as pool,
            progress_bar(n, progress=progress, desc="encode images", unit="img") as bar,
        ):
            pending: Future[PreprocessResult] | None = pool.submit(prepare, 0) if n else None
            for i, start in enumerate(starts):
                assert pending is not None
                res = pending.result()
                pending = pool.submit(prepare, i + 1) if i + 1 < len(starts) else None
                for err in res.errors:
                    if getattr(err, "index", None) is not None:
                        err.index += start  # type: ignore[union-attr,operator]
                    errors.append(err)
                rows = np.flatnonzero(res.ok)
                if len(rows):
                    pixels = res.pixel_values if len(rows) == len(res.ok) else res.pixel_values[rows]
                    emb = self.backend.encode_pixels(pixels)
                    embeddings[start + rows] = emb
                    ok[start + rows] = True
                bar.update(len(res.ok))
                if not bar.disable:
                    bar.set_postfix_str(f"{bar.n / max(time.perf_counter() - t0, 1e-9):.1f} img/s", refresh=False)
        elapsed = time.perf_counter() - t0
        if normalize:
            embeddings[ok] = _l2_normalize(embeddings[ok])
        return EncodeResult(embeddings, ok, errors, images_per_second=n / elapsed if elapsed > 0 else 0.0)

    def embed(self, image: Any, normalize: bool = True) -> npt.NDArray[np.float32]:
        """One image to one ``(dim,)`` float32 vector, raising instead of reporting.

        Seed 004's ``ClipEmbedder.embed`` contract: a missing file raises
        :class:`~ferroclip.ImageNotFoundError` (a ``FileNotFoundError``), an undecodable one
        :class:`~ferroclip.ImageDecodeError` (an ``OSError``, like PIL's
        ``UnidentifiedImageError``), a failed model run :class:`~ferroclip.ModelError` (a
        ``RuntimeError``). ``normalize=False`` gives the raw model output.

            >>> vec = model.embed("photo.jpg")   # doctest: +SKIP
        """
        res = self.encode_images([image], batch_size=1, progress=False, normalize=normalize)
        res.raise_for_errors()
        return cast("npt.NDArray[np.float32]", res.embeddings[0])

    def _pixel_batch(self, images: Any) -> np.ndarray | None:
        """The input as a float32 ``(N, 3, H, W)`` array when it is a preprocessed batch."""
        kind = type(images).__module__.split(".", 1)[0]
        if kind == "torch" and hasattr(images, "detach") and getattr(images, "is_floating_point", lambda: False)():
            arr = images.detach().to("cpu").float().numpy()
        elif isinstance(images, np.ndarray) and images.dtype.kind == "f":
            arr = images
        else:
            return None
        h, w = self.preprocessor.output_size
        if arr.ndim != 4 or arr.shape[1] != 3 or tuple(arr.shape[2:]) != (h, w):
            raise ShapeError(
                f"a float pixel batch must be (N, 3, {h}, {w}) for {self.name} (already preprocessed), "
                f"got shape {tuple(arr.shape)}; pass uint8 (H, W, 3) arrays, files or PIL images to have "
                "ferroclip preprocess them"
            )
        if not np.isfinite(arr).all():
            raise ShapeError("the pixel batch holds NaN or Inf")
        return np.ascontiguousarray(arr, dtype=np.float32)

    def _encode_pixel_batch(self, pixels: np.ndarray, batch_size: int, normalize: bool) -> EncodeResult:
        t0 = time.perf_counter()
        n = len(pixels)
        embeddings = np.zeros((n, self.dim), dtype=np.float32)
        for start in range(0, n, batch_size):
            embeddings[start : start + batch_size] = self.backend.encode_pixels(pixels[start : start + batch_size])
        if normalize and n:
            embeddings = _l2_normalize(embeddings)
        elapsed = time.perf_counter() - t0
        return EncodeResult(embeddings, np.ones(n, dtype=bool), [], images_per_second=n / elapsed if elapsed > 0 else 0.0)

    # ------------------------------------------------------------------ texts
    def encode_texts(
        self,
        texts: str | Sequence[str],
        *,
        batch_size: int = 256,
        normalize: bool = True,
        progress: bool | None = False,
    ) -> npt.NDArray[np.float32]:
        """Embed texts with the checkpoint's tokenizer and its family's padding rules.

        ``progress``: ``False`` (default) draws no bar, ``None`` one on a terminal for long
        work, ``True`` always."""
        from .._progress import bar as progress_bar

        if self.tokenizer is None or self.text_rules is None:
            raise ShapeError(f"{self.name} has no text encoder (image-only model)")
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with progress_bar(len(texts), progress=progress, desc="encode texts", unit="text") as bar:
            for start in range(0, len(texts), batch_size):
                chunk = texts[start : start + batch_size]
                tokens = self.text_rules.tokenize(self.tokenizer, chunk)
                out[start : start + len(chunk)] = self.backend.encode_tokens(tokens)
                bar.update(len(chunk))
        return _l2_normalize(out) if normalize else out

    # ------------------------------------------------------------------ scoring
    def score(self, query: str, image: Any) -> float:
        """Cosine similarity of one text and one image (path, URL, bytes, array, PIL).

        Raises the image's error if it cannot be loaded.
        """
        res = self.encode_images([image], progress=False)
        res.raise_for_errors()
        txt = self.encode_texts([query])
        return float(res.embeddings[0] @ txt[0])

    def score_batch(
        self,
        inputs: Iterable[Any],
        *,
        col_name: str = "clip_score",
        batch_size: int = 64,
        progress: bool | None = None,
    ) -> list[SimilarityResult]:
        """Score (query, image) records: :class:`~ferroclip.SimilarityInput`, dicts or
        objects with ``query`` and ``image_url`` (or ``image``), optionally ``query_id`` /
        ``image_id``.

        Returns one :class:`~ferroclip.SimilarityResult` per input, in order, with the
        input's ids and field names, the cosine similarity as ``score`` (and under
        ``col_name`` in ``result[col_name]`` / ``to_dict()``), and ``error`` (``None`` or the
        reason). A bad record (no query, no image, unreadable image) fails alone. Each
        distinct image and query is embedded once.
        """
        from ..scoring import score_records

        return score_records(self, inputs, col_name=col_name, batch_size=batch_size, progress=progress)

    def zero_shot(
        self,
        images: Iterable[Any],
        labels: Sequence[str],
        *,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        batch_size: int = 64,
        progress: bool | None = None,
    ) -> ZeroShotResult:
        """Classify images among ``labels`` by prompt ensembling over ``templates``.

        Each label's text embedding is the normalised mean of its prompts' embeddings
        (CLIP's recipe); the probabilities use the model's own learned temperature (and bias
        for SigLIP).
        """
        labels = list(labels)
        if not labels:
            raise ValueError("labels is empty")
        if not templates or any("{}" not in t for t in templates):
            raise ValueError("templates must be non-empty and each must contain '{}'")
        prompts = [t.format(label) for label in labels for t in templates]
        txt = class_embeddings(self.encode_texts(prompts), len(templates))
        img = self.encode_images(images, batch_size=batch_size, progress=progress)
        logits = self.backend.logit_scale * (img.embeddings @ txt.T)
        if self.backend.logit_bias is not None:
            probs = 1.0 / (1.0 + np.exp(-(logits + self.backend.logit_bias)))
        else:
            shifted = logits - logits.max(axis=1, keepdims=True)
            e = np.exp(shifted)
            probs = e / e.sum(axis=1, keepdims=True)
        probs = probs.astype(np.float32)
        probs[~img.ok] = math.nan
        best = probs.argmax(axis=1) if len(labels) else np.zeros(0, dtype=np.int64)
        predicted = [labels[b] if o else None for b, o in zip(best, img.ok)]
        return ZeroShotResult(labels, probs, predicted, img.ok, img.errors)

