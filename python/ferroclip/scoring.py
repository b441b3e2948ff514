"""Query-image similarity scoring, configured the way seed 003's local CLIP adapter is.

Seed 003 (imsearch-benchmaker's ``local_clip`` adapter) reads a ``[similarity_config]``
table from ``config.toml`` and scores ``(query, image_url)`` records into a column. This
module gives the same configuration (same keys, same defaults: ``torch_dtype`` float32,
``col_name`` ``"clip_score"``) a typed form, and the scorer typed results: one
:class:`SimilarityResult` per input, in order, that carries the input's own ids and field
names, and an error text instead of an exception for every record that cannot be scored,
so one bad row never costs the rest of a benchmark run.

    >>> scorer = SimilarityScorer.from_toml("config.toml")          # doctest: +SKIP
    >>> scorer.score("a red car on a highway", "car.jpg")          # doctest: +SKIP
    >>> results = scorer.score_batch([SimilarityInput("a red car", "car.jpg", "q1", "i1")])  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError

__all__ = [
    "DEFAULT_SCORER_MODEL",
    "SimilarityConfig",
    "SimilarityInput",
    "SimilarityResult",
    "SimilarityScorer",
    "score_records",
]

#: Seed 003's default model.
DEFAULT_SCORER_MODEL = "openai/clip-vit-base-patch32"
_ADAPTERS = ("local_clip", "ferroclip")
_IMAGE_FIELDS = ("image_url", "image")


@dataclass(frozen=True)
class SimilarityConfig:
    """Seed 003's ``[similarity_config]`` table, with its defaults.

    ``adapter``, ``model``, ``device``, ``torch_dtype``, ``use_safetensors`` and
    ``col_name`` are the seed's keys; ``backend`` and ``batch_size`` are ferroclip's
    additions. ``use_safetensors=False`` allows pickle (``.bin``) weights, it does not
    forbid safetensors.
    """

    adapter: str = "local_clip"
    model: str = DEFAULT_SCORER_MODEL
    device: str = "auto"
    torch_dtype: str = "float32"
    use_safetensors: bool = True
    col_name: str = "clip_score"
    backend: str = "auto"
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.adapter not in _ADAPTERS:
            raise ConfigError(f"similarity_config.adapter={self.adapter!r}: ferroclip scores as {' or '.join(_ADAPTERS)}")
        for name in ("model", "device", "torch_dtype", "col_name", "backend"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"similarity_config.{name} must be a non-empty string, got {value!r}")
        if not isinstance(self.use_safetensors, bool):
            raise ConfigError(f"similarity_config.use_safetensors must be true or false, got {self.use_safetensors!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"similarity_config.batch_size must be a positive integer, got {self.batch_size!r}")
        if self.col_name in ("query", "query_id", "image_id", "error", *_IMAGE_FIELDS):
            raise ConfigError(f"similarity_config.col_name={self.col_name!r} would overwrite an input field")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SimilarityConfig:
        """From the table's keys, or from a whole config holding a ``similarity_config`` table.

        A key given as ``None`` takes its default (``torch_dtype`` float32); an unknown key
        is an error naming the closest known one, so a typo never silently falls back.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"similarity config must be a mapping, got {type(d).__name__}")
        if "similarity_config" in d:
            d = d["similarity_config"]
            if not isinstance(d, Mapping):
                raise ConfigError("similarity_config must be a table")
        known = [f.name for f in fields(cls)]
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key == "dtype":  # ferroclip's own name for the same thing
                key = "torch_dtype"
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"similarity_config: unknown key {key!r}{hint}; known: {', '.join(known)}")
            if value is not None:
                kwargs[key] = str(value).removeprefix("torch.") if key == "torch_dtype" else value
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], table: str = "similarity_config") -> SimilarityConfig:
        """From the ``[similarity_config]`` table (or ``table``) of a TOML file."""
        data = _read_toml(Path(path))
        if table not in data:
            raise ConfigError(f"{path}: no [{table}] table")
        try:
            return cls.from_dict(data[table])
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef,import-not-found]
        except ImportError:
            raise ConfigError("reading TOML on Python 3.10 needs tomli: pip install tomli") from None
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable TOML file: {exc}") from None


@dataclass(frozen=True)
class SimilarityInput:
    """One record to score (seed 003's ``SimilarityInput``): a text and an image path or URL."""

    query: str
    image_url: Any
    query_id: str | None = None
    image_id: str | None = None


@dataclass(frozen=True)
class SimilarityResult:
    """The score of one input record, or why there is none.

    ``score`` is the cosine similarity (``None`` when ``error`` says why not). ``to_dict()``
    and ``result[key]`` give the record as the input spelled it: the image under the
    input's own field name (``image_url`` or ``image``), the score under ``col_name``, and
    any other fields of an input dict kept as they were.
    """

    index: int
    query: Any
    image: Any
    query_id: Any = None
    image_id: Any = None
    score: float | None = None
    error: str | None = None
    col_name: str = "clip_score"
    image_field: str = "image_url"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.update(
            {
                "query_id": self.query_id,
                "image_id": self.image_id,
                "query": self.query,
                self.image_field: self.image,
                self.col_name: self.score,
                "error": self.error,
            }
        )
        return out

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]


@dataclass
class _Record:
    index: int
    query: Any
    image: Any
    query_id: Any
    image_id: Any
    image_field: str
    extra: dict[str, Any]
    error: str | None


def _record(r: Any, i: int) -> _Record:
    get: Callable[[str, Any], Any]
    if isinstance(r, Mapping):
        keys = list(r.keys())
        get = r.get
        present = [f for f in _IMAGE_FIELDS if f in r]
    else:
        keys = []

        def get(k: str, d: Any = None) -> Any:
            return getattr(r, k, d)

        present = [f for f in _IMAGE_FIELDS if hasattr(r, f)]
    given = [f for f in present if get(f, None) is not None]
    image_field = (given or present or ["image_url"])[0]
    query, image = get("query", None), get(image_field, None)
    standard = {"query", "query_id", "image_id", *_IMAGE_FIELDS}
    extra = {k: r[k] for k in keys if k not in standard} if isinstance(r, Mapping) else {}
    error = None
    if not isinstance(query, str) or not query.strip():
        error = f"inputs[{i}]: 'query' must be a non-empty string, got {query!r}"
    elif image is None or (isinstance(image, str) and not image.strip()):
        error = f"inputs[{i}]: no image: give 'image_url' (or 'image')"
    return _Record(i, query, image, get("query_id", None), get("image_id", None), image_field, extra, error)


def _key(image: Any) -> Any:
    """Identical paths/URLs/bytes are embedded once; arrays and PIL images by identity."""
    if isinstance(image, os.PathLike):
        return os.fspath(image)
    return image if isinstance(image, (str, bytes)) else ("id", id(image))


def score_records(
    model: Any,
    inputs: Iterable[Any],
    *,
    col_name: str = "clip_score",
    batch_size: int = 64,
    progress: bool | None = None,
) -> list[SimilarityResult]:
    """Score ``(query, image)`` records with ``model``: one result per input, in order.

    Records are :class:`SimilarityInput`, dicts or objects with ``query`` and
    ``image_url`` (or ``image``), optionally ``query_id`` / ``image_id``. Each distinct
    image and query is embedded once. A record without a usable query or image, or whose
    image cannot be read, gets an ``error`` text and no score; the others are scored.
    """
    records = [_record(r, i) for i, r in enumerate(inputs)]
    img_row: dict[Any, int] = {}
    images: list[Any] = []
    for r in records:
        if r.error is None:
            key = _key(r.image)
            if key not in img_row:
                img_row[key] = len(images)
                images.append(os.fspath(r.image) if isinstance(r.image, os.PathLike) else r.image)
    queries = list(dict.fromkeys(r.query for r in records if r.error is None))
    img = model.encode_images(images, batch_size=batch_size, progress=progress)
    txt = model.encode_texts(queries) if queries else np.zeros((0, model.dim), np.float32)
    txt_row = {q: i for i, q in enumerate(queries)}
    err_by_row = {e.index: e for e in img.errors if getattr(e, "index", None) is not None}
    out = []
    for r in records:
        score, error = None, r.error
        if error is None:
            row = img_row[_key(r.image)]
            if img.ok[row]:
                score = float(img.embeddings[row] @ txt[txt_row[r.query]])
            else:
                err = err_by_row.get(row)
                error = str(err) if err is not None else "image failed"
        out.append(
            SimilarityResult(
                r.index, r.query, r.image, r.query_id, r.image_id, score, error, col_name, r.image_field, r.extra
            )
        )
    return out


class SimilarityScorer:
    """Seed 003's ``CLIP`` adapter on ferroclip: a model plus the column it scores into.

    Build it from the seed's ``config.toml`` (:meth:`from_toml`), from a dict
    (:meth:`from_dict`), from a :class:`SimilarityConfig`, or from keywords
    (``SimilarityScorer(model="openai/clip-vit-base-patch32", torch_dtype="float16")``);
    ``model=`` may also be an already loaded :class:`~ferroclip.EmbeddingModel`.
    """

    def __init__(self, config: SimilarityConfig | None = None, *, model: Any = None, **overrides: Any) -> None:
        from .models import EmbeddingModel, load_model

        loaded = model if isinstance(model, EmbeddingModel) else None
        if model is not None and loaded is None:
            overrides["model"] = model
        base = {f.name: getattr(config, f.name) for f in fields(SimilarityConfig)} if config is not None else {}
        base.update({k: v for k, v in overrides.items() if v is not None})
        self.config = SimilarityConfig.from_dict(base)
        if loaded is None:
            loaded = load_model(
                self.config.model,
                backend=self.config.backend,  # type: ignore[arg-type]
                device=self.config.device,
                torch_dtype=self.config.torch_dtype,
                use_safetensors=self.config.use_safetensors,
            )
        self.model = loaded

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], **overrides: Any) -> SimilarityScorer:
        return cls(SimilarityConfig.from_toml(path), **overrides)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> SimilarityScorer:
        return cls(SimilarityConfig.from_dict(d), **overrides)

    @property
    def col_name(self) -> str:
        return self.config.col_name

    def score(self, query: str, image_url: Any) -> float:
        """Cosine similarity of one text and one image; raises the image's error."""
        return self.model.score(query, image_url)

    def score_batch(self, inputs: Iterable[Any], *, progress: bool | None = None) -> list[SimilarityResult]:
        """One :class:`SimilarityResult` per input, in order (see :func:`score_records`)."""
        return score_records(
            self.model, inputs, col_name=self.config.col_name, batch_size=self.config.batch_size, progress=progress
        )

    def __repr__(self) -> str:
        return f"SimilarityScorer({self.model!r}, col_name={self.col_name!r})"
