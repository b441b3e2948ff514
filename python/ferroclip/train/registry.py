"""Where a user's own projection head, loss and metric are registered (seed 002's
"Adding New Models/Metrics"), so a YAML config can name them like the built-in ones.

Seed 002 adds a head by editing ``create_model()`` and a loss by editing
``compute_loss()``; here the library is not edited. Register from your own module, and
have the config import it with a top-level ``plugins:`` list (module names, or ``.py``
files relative to the config):

.. code-block:: python

    # my_heads.py
    from torch import nn
    from ferroclip.train.registry import register_head, register_loss, register_metric

    @register_head("transformer")
    def transformer_head(cfg, in_dim):            # cfg: ModelConfig, in_dim: input width
        layer = nn.TransformerEncoderLayer(in_dim, cfg.num_heads, batch_first=True)
        return nn.Sequential(nn.Unflatten(1, (1, in_dim)), nn.TransformerEncoder(layer, cfg.num_layers),
                             nn.Flatten(1), nn.Linear(in_dim, cfg.output_dim))

    @register_loss("custom")
    def custom_loss(image_proj, text_proj, scale):  # unit rows; scale = 1 / temperature
        ...

    @register_metric("map@10")
    def map_at_10(images, texts, text_to_image):   # projected unit rows -> float
        ...

.. code-block:: yaml

    plugins: [my_heads]
    model: {type: transformer, output_dim: 512, num_layers: 3, num_heads: 8}
    loss: {type: custom}

Heads get their output L2-normalised by the model, as the built-in ones do; the metric
appears in ``evaluate_heads``'s results under its name.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigError

__all__ = [
    "HeadFactory",
    "LossFn",
    "MetricFn",
    "head_factory",
    "import_plugins",
    "loss_fn",
    "metrics",
    "register_head",
    "register_loss",
    "register_metric",
]

HeadFactory = Callable[[Any, int], Any]  # (ModelConfig, input dim) -> torch.nn.Module
LossFn = Callable[[Any, Any, Any], Any]  # (image rows, text rows, scale) -> scalar tensor
MetricFn = Callable[[Any, Any, Any], float]  # (images, texts, text_to_image) -> value

_HEADS: dict[str, HeadFactory] = {}
_LOSSES: dict[str, LossFn] = {}
_METRICS: dict[str, MetricFn] = {}
F = TypeVar("F", bound=Callable[..., Any])


def _register(table: dict[str, Any], kind: str, builtin: tuple[str, ...], name: str, fn: Any) -> Any:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a {kind} needs a non-empty string name, got {name!r}")
    if name in builtin:
        raise ConfigError(f"{kind} {name!r} is built in; register yours under another name")
    if not callable(fn):
        raise ConfigError(f"{kind} {name!r}: expected a callable, got {type(fn).__name__}")
    table[name] = fn
    return fn


def register_head(name: str, factory: HeadFactory | None = None) -> Any:
    """Register ``factory(model_config, in_dim) -> nn.Module`` as ``model.type: name``
    (also usable as a decorator)."""
    from .config import HEAD_TYPES

    if factory is None:
        return lambda f: _register(_HEADS, "head", HEAD_TYPES, name, f)
    return _register(_HEADS, "head", HEAD_TYPES, name, factory)


def register_loss(name: str, fn: LossFn | None = None) -> Any:
    """Register ``fn(image_proj, text_proj, scale) -> loss`` as ``loss.type: name``."""
    from .config import LOSS_ALIASES, LOSS_TYPES

    builtin = (*LOSS_TYPES, *LOSS_ALIASES)
    if fn is None:
        return lambda f: _register(_LOSSES, "loss", builtin, name, f)
    return _register(_LOSSES, "loss", builtin, name, fn)


def register_metric(name: str, fn: MetricFn | None = None) -> Any:
    """Register ``fn(images, texts, text_to_image) -> float``, reported by ``evaluate_heads``."""
    if fn is None:
        return lambda f: _register(_METRICS, "metric", (), name, f)
    return _register(_METRICS, "metric", (), name, fn)


def head_factory(name: str) -> HeadFactory | None:
    return _HEADS.get(name)


def loss_fn(name: str) -> LossFn | None:
    return _LOSSES.get(name)


def metrics() -> dict[str, MetricFn]:
    return dict(_METRICS)


def head_names() -> tuple[str, ...]:
    return tuple(_HEADS)


def loss_names() -> tuple[str, ...]:
    return tuple(_LOSSES)


def import_plugins(plugins: Any, base: Path | None, where: str) -> None:
    """Import a config's ``plugins`` (module names or ``.py`` paths) so they register."""
    if plugins is None:
        return
    if isinstance(plugins, str):
        plugins = [plugins]
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(f"{where}: plugins: expected a list of module names or .py files")
    for spec in plugins:
        try:
            if spec.endswith(".py"):
                path = Path(spec) if Path(spec).is_absolute() or base is None else base / spec
                name = f"ferroclip_plugin_{path.stem}"
                if name in sys.modules:
                    continue
                module_spec = importlib.util.spec_from_file_location(name, path)
                if module_spec is None or module_spec.loader is None or not path.is_file():
                    raise ConfigError(f"{where}: plugins: no such file {path}")
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[name] = module
                module_spec.loader.exec_module(module)
            else:
                importlib.import_module(spec)
        except ConfigError:
            raise
        except Exception as exc:  # the plugin's own error, named with where it came from
            raise ConfigError(f"{where}: plugins: cannot import {spec!r}: {type(exc).__name__}: {exc}") from exc
