"""YAML configs for projection-head training and tuning, as validated dataclasses.

A config file has the seed's sections (``model``, ``loss``, ``training``) plus ``data`` and
``output_dir``. Unknown keys, wrong types and out-of-range values are errors that name the
file and the key: a typo such as ``learning_rat`` must not silently train with a default.
Numbers written as ``1e-4`` (a string to YAML 1.1, and so to PyYAML) are read as floats.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, TypeVar, Union

from .._atomic import atomic_write
from ..errors import ConfigError

__all__ = [
    "DataConfig",
    "HeadsConfig",
    "LossConfig",
    "ModelConfig",
    "TrainingConfig",
    "TuneConfig",
    "HEAD_TYPES",
    "LOSS_TYPES",
]

HeadType = Literal["mlp", "attention", "cross_modal", "clip", "siglip", "align", "blip"]
LossType = Literal["infonce", "sigmoid", "queue_infonce", "momentum_distill"]
HEAD_TYPES: tuple[str, ...] = typing.get_args(HeadType)
LOSS_TYPES: tuple[str, ...] = typing.get_args(LossType)
# The seed named losses after the model they come from; those names keep working.
LOSS_ALIASES = {
    "clip": "infonce",
    "align": "infonce",
    "softmax": "infonce",
    "siglip": "sigmoid",
    "queue": "queue_infonce",
    "blip": "momentum_distill",
}
if typing.TYPE_CHECKING:
    from _typeshed import DataclassInstance

_T = TypeVar("_T", bound="DataclassInstance")

DEFAULT_LOSS = {"siglip": "sigmoid", "blip": "momentum_distill"}


@dataclass
class DataConfig:
    """Where the embeddings, metadata and split live (paths relative to the config file)."""

    image_embeddings: Optional[str] = None
    text_embeddings: Optional[str] = None
    metadata: Optional[str] = None
    image_key: Optional[str] = None
    text_key: Optional[str] = None
    split: Optional[str] = None
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    tuning_fraction: float = 0.2
    split_seed: int = 0


@dataclass
class ModelConfig:
    """The projection head architecture; ``None`` fields take the type's default."""

    type: str = "mlp"  # a HeadType, or a head registered with ferroclip.train.registry
    output_dim: int = 512
    hidden_dim: Optional[int] = None
    dropout: Optional[float] = None
    num_heads: int = 8
    num_layers: int = 2
    num_tokens: int = 4
    learnable_temp: Optional[bool] = None
    use_bn: Optional[bool] = None
    momentum: float = 0.995

    def resolved_hidden(self, input_dim: int) -> int:
        if self.hidden_dim is not None:
            return self.hidden_dim
        return {"clip": max(1, input_dim // 2), "align": 2048}.get(self.type, 1024)

    def resolved_dropout(self) -> float:
        if self.dropout is not None:
            return self.dropout
        return 0.0 if self.type == "siglip" else 0.1

    def resolved_learnable_temp(self) -> bool:
        if self.learnable_temp is not None:
            return self.learnable_temp
        return self.type in ("clip", "siglip", "align", "blip")

    def resolved_use_bn(self) -> bool:
        return self.use_bn if self.use_bn is not None else self.type == "align"


@dataclass
class LossConfig:
    """The objective. ``type=None`` picks the model type's own loss (infonce otherwise)."""

    type: Optional[str] = None
    temperature: float = 0.05
    bias_init: float = -10.0
    queue_size: int = 4096
    alpha: float = 0.4


@dataclass
class TrainingConfig:
    """Optimiser, schedule, early stopping and where to run."""

    batch_size: int = 512
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    num_epochs: int = 50
    warmup_ratio: float = 0.05
    patience: int = 5
    monitor: Literal["val_loss", "val_r1"] = "val_loss"
    min_delta: float = 0.0
    grad_clip: Optional[float] = 1.0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    seed: int = 0
    num_threads: Optional[int] = None
    progress: bool = True


@dataclass
class HeadsConfig:
    """A whole training run: what to read, what to build, how to train, where to write."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output_dir: str = "results/heads"
    #: Modules (or ``.py`` files beside the config) imported first, so heads, losses and
    #: metrics they register (:mod:`ferroclip.train.registry`) can be named here.
    plugins: Optional[list[str]] = None

    @property
    def loss_type(self) -> str:
        """The canonical loss name (aliases and the model's default resolved)."""
        t = self.loss.type or DEFAULT_LOSS.get(self.model.type, "infonce")
        return LOSS_ALIASES.get(t, t)

    @classmethod
    def from_dict(cls, body: Any, where: str = "config", base: Path | None = None) -> HeadsConfig:
        from .registry import import_plugins

        if isinstance(body, dict):
            import_plugins(body.get("plugins"), base, where)
        cfg = _build(cls, body, where)
        cfg.validate(where)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> HeadsConfig:
        """Read and validate a YAML config; relative data paths resolve against its folder.

        Without an ``output_dir`` the run writes to ``results/<config file stem>`` under the
        current directory, as seed 002's ``train.py`` does, so ``for c in configs/*.yaml``
        gives each config its own folder instead of overwriting one.
        """
        p = Path(path)
        body = _read_yaml(p)
        cfg = cls.from_dict(body, str(p), base=p.resolve().parent)
        has_out = isinstance(body, dict) and body.get("output_dir") is not None
        _resolve_paths(cfg, p.resolve().parent)
        if not has_out:
            cfg.output_dir = str(Path.cwd() / "results" / p.stem)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | os.PathLike[str]) -> None:
        import yaml

        with atomic_write(path) as fh:
            fh.write(yaml.safe_dump(self.to_dict(), sort_keys=False).encode("utf-8"))

    def validate(self, where: str = "config") -> None:
        m, lo, t, d = self.model, self.loss, self.training, self.data

        def need(ok: bool, key: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"{where}: {key}: {msg}")

        from .registry import head_names, loss_names

        heads = (*HEAD_TYPES, *head_names())
        need(
            m.type in heads,
            "model.type",
            f"{m.type!r} is not one of {list(heads)} (register your own with ferroclip.train.registry.register_head)",
        )
        loss = self.loss_type
        losses = (*LOSS_TYPES, *loss_names())
        need(loss in losses, "loss.type", f"unknown loss {lo.type!r}; use one of {losses} (or {sorted(LOSS_ALIASES)})")
        need(m.output_dim >= 1, "model.output_dim", "must be >= 1")
        need(m.hidden_dim is None or m.hidden_dim >= 1, "model.hidden_dim", "must be >= 1")
        need(m.dropout is None or 0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")
        need(m.num_heads >= 1 and m.num_layers >= 1 and m.num_tokens >= 1, "model", "num_heads, num_layers, num_tokens must be >= 1")
        if m.type in ("attention", "cross_modal"):
            hidden = m.hidden_dim if m.hidden_dim is not None else 1024
            need(hidden % m.num_heads == 0, "model.hidden_dim", f"{hidden} must be divisible by num_heads={m.num_heads}")
        need(0.0 < m.momentum < 1.0, "model.momentum", "must be in (0, 1)")
        need(lo.temperature > 0, "loss.temperature", "must be > 0")
        need(lo.queue_size >= 1, "loss.queue_size", "must be >= 1")
        need(0.0 <= lo.alpha <= 1.0, "loss.alpha", "must be in [0, 1]")
        need(t.batch_size >= 2, "training.batch_size", "must be >= 2 (contrastive losses need negatives)")
        need(t.learning_rate > 0, "training.learning_rate", "must be > 0")
        need(t.weight_decay >= 0, "training.weight_decay", "must be >= 0")
        need(t.num_epochs >= 1, "training.num_epochs", "must be >= 1")
        need(0.0 <= t.warmup_ratio < 1.0, "training.warmup_ratio", "must be in [0, 1)")
        need(t.patience >= 1, "training.patience", "must be >= 1")
        need(t.grad_clip is None or t.grad_clip > 0, "training.grad_clip", "must be > 0 or null")
        need(t.num_threads is None or t.num_threads >= 1, "training.num_threads", "must be >= 1 or null")
        for name in ("val_fraction", "test_fraction", "tuning_fraction"):
            need(0.0 <= getattr(d, name) < 1.0, f"data.{name}", "must be in [0, 1)")


@dataclass
class TuneConfig:
    """An Optuna study: its storage, budget, objective and search space over a base config.

    ``search_space`` maps dotted keys of :class:`HeadsConfig` (``training.learning_rate``)
    to ``{type: float|int, low, high, log?, step?}`` or ``{type: categorical, choices}``.
    """

    base: HeadsConfig
    search_space: dict[str, dict[str, Any]]
    study_name: str = "ferroclip-heads"
    storage: str = "sqlite:///optuna_study.db"
    n_trials: int = 20
    n_jobs: int = 1
    timeout: Optional[float] = None
    metric: Literal["val_r1", "val_loss"] = "val_r1"
    sampler_seed: Optional[int] = None
    output_dir: str = "results/tuning"

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        return "maximize" if self.metric == "val_r1" else "minimize"

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> TuneConfig:
        p = Path(path)
        body = _read_yaml(p)
        if not isinstance(body, dict):
            raise ConfigError(f"{p}: a tuning config must be a mapping")
        body = dict(body)
        base = body.pop("base", None)
        if isinstance(base, str):
            base_cfg = HeadsConfig.from_yaml((p.resolve().parent / base) if not Path(base).is_absolute() else base)
        elif isinstance(base, dict) or base is None:
            base_cfg = HeadsConfig.from_dict(base or {}, f"{p}: base")
            _resolve_paths(base_cfg, p.resolve().parent)
        else:
            raise ConfigError(f"{p}: base: must be a path to a training config or a mapping")
        study = body.pop("study", {}) or {}
        space = body.pop("search_space", None)
        out = body.pop("output_dir", None)
        if body:
            raise ConfigError(f"{p}: unknown keys {sorted(body)}; expected base, study, search_space, output_dir")
        if not isinstance(study, dict):
            raise ConfigError(f"{p}: study: must be a mapping")
        kw = {("study_name" if k == "name" else k): v for k, v in study.items()}
        cfg = _build(cls, {**kw, "base": None, "search_space": space, **({"output_dir": out} if out else {})}, str(p),
                     skip=("base", "search_space"))
        cfg.base = base_cfg
        cfg.search_space = space if isinstance(space, dict) else {}
        if out is not None and not Path(cfg.output_dir).is_absolute():
            cfg.output_dir = str(p.resolve().parent / cfg.output_dir)
        if cfg.storage.startswith("sqlite:///") and not cfg.storage.startswith("sqlite:////"):
            db = cfg.storage[len("sqlite:///"):]
            cfg.storage = "sqlite:///" + str(p.resolve().parent / db)
        cfg.validate(str(p))
        return cfg

    def validate(self, where: str = "tuning config") -> None:
        if not self.search_space:
            raise ConfigError(f"{where}: search_space: needs at least one parameter")
        if self.n_trials < 1 or self.n_jobs < 1:
            raise ConfigError(f"{where}: study: n_trials and n_jobs must be >= 1")
        for key, spec in self.search_space.items():
            _check_param(key, spec, where)


def _resolve_paths(cfg: HeadsConfig, base: Path) -> None:
    for name in ("image_embeddings", "text_embeddings", "metadata", "split"):
        v = getattr(cfg.data, name)
        if v is not None and not Path(v).is_absolute():
            setattr(cfg.data, name, str(base / v))
    if not Path(cfg.output_dir).is_absolute():
        cfg.output_dir = str(base / cfg.output_dir)


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "training": TrainingConfig}


def _check_param(key: str, spec: Any, where: str) -> None:
    section, _, name = key.partition(".")
    if section not in _SECTIONS or name not in {f.name for f in dataclasses.fields(_SECTIONS[section])}:
        raise ConfigError(f"{where}: search_space.{key}: not a config key (use section.field, e.g. training.learning_rate)")
    if not isinstance(spec, dict) or spec.get("type") not in ("float", "int", "categorical"):
        raise ConfigError(f"{where}: search_space.{key}: needs type: float, int or categorical")
    if spec["type"] == "categorical":
        if not isinstance(spec.get("choices"), list) or not spec["choices"]:
            raise ConfigError(f"{where}: search_space.{key}: categorical needs a non-empty 'choices' list")
        extra = set(spec) - {"type", "choices"}
    else:
        try:
            low, high = float(spec["low"]), float(spec["high"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}: search_space.{key}: needs numeric 'low' and 'high'") from e
        if not low <= high:
            raise ConfigError(f"{where}: search_space.{key}: low must be <= high")
        if spec.get("log") and low <= 0:
            raise ConfigError(f"{where}: search_space.{key}: log scale needs low > 0")
        extra = set(spec) - {"type", "low", "high", "log", "step"}
    if extra:
        raise ConfigError(f"{where}: search_space.{key}: unknown keys {sorted(extra)}")


def _read_yaml(p: Path) -> Any:
    import yaml

    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"{p}: no such config file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read: {e}") from e
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from e


def _build(cls: type[_T], body: Any, where: str, skip: tuple[str, ...] = ()) -> _T:
    """Instantiate dataclass ``cls`` from a mapping, checking keys and coercing types."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(body).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(body) - names)
    if unknown:
        import difflib

        hints_ = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, names, n=1)) else repr(k) for k in unknown]
        raise ConfigError(f"{where}: unknown keys {', '.join(hints_)}; allowed: {sorted(names)}")
    kwargs = {}
    for k, v in body.items():
        if k in skip:
            kwargs[k] = v
            continue
        hint = hints[k]
        if dataclasses.is_dataclass(hint):
            kwargs[k] = _build(typing.cast("type[DataclassInstance]", hint), v, f"{where}: {k}")
        else:
            kwargs[k] = _coerce(v, hint, f"{where}: {cls.__name__.removesuffix('Config').lower()}.{k}")
    return cls(**kwargs)


def _coerce(v: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if v is None:
            return None
        return _coerce(v, args[0], key)
    if origin is Literal:
        choices = typing.get_args(hint)
        if v not in choices:
            raise ConfigError(f"{key}: {v!r} is not one of {list(choices)}")
        return v
    if hint is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{key}: expected true or false, got {v!r}")
        return v
    if hint is int:
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
            raise ConfigError(f"{key}: expected an integer, got {v!r}")
        return int(v)
    if hint is float:
        if isinstance(v, bool):
            raise ConfigError(f"{key}: expected a number, got {v!r}")
        try:
            return float(v)  # "1e-4" from PyYAML is a str
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key}: expected a number, got {v!r}") from e
    if hint is str:
        if not isinstance(v, str):
            raise ConfigError(f"{key}: expected a string, got {v!r}")
        return v
    return v
