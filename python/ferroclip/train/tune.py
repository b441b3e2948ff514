"""Hyperparameter search for projection heads with Optuna, resumable from SQLite.

Trials train on the split's tuning subset and score on its validation images, so tuning
never sees the test split. ``n_trials`` is the study's total budget: running the same
config again after an interruption continues where it stopped (finished, pruned and failed
trials all count) instead of starting over. A trial that raises (a bad combination, a
diverging loss) is stored as FAIL with its error in ``user_attrs["error"]`` and the study
goes on. A trial killed outright (power loss, SIGKILL) is marked failed by the storage's
heartbeat when the study is resumed. The study remembers its search space; resuming with a
different one is an error, because Optuna cannot mix distributions in one study.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._atomic import atomic_write
from ..errors import ConfigError
from .config import HeadsConfig, TuneConfig
from .data import PairedEmbeddings
from .split import Split
from .trainer import train_heads

__all__ = ["TuneResult", "apply_params", "tune_heads"]

_FINISHED = ("COMPLETE", "PRUNED", "FAIL")


@dataclass
class TuneResult:
    """The study, its best trial's config (``None`` if no trial completed) and written files."""

    study: Any
    best_config: HeadsConfig | None
    best_value: float | None
    files: dict[str, str]


def apply_params(base: HeadsConfig, params: dict[str, Any], where: str = "trial") -> HeadsConfig:
    """A copy of ``base`` with dotted ``section.field`` values set, re-validated."""
    body = base.to_dict()
    for key, value in params.items():
        section, _, name = key.partition(".")
        body[section][name] = value
    return HeadsConfig.from_dict(body, where)


def _suggest(trial: Any, key: str, spec: dict[str, Any]) -> Any:
    t = spec["type"]
    if t == "categorical":
        return trial.suggest_categorical(key, spec["choices"])
    if t == "int":
        return trial.suggest_int(key, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)),
                                 log=bool(spec.get("log", False)))
    step = spec.get("step")
    return trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)),
                               step=None if step is None else float(step))


def _storage(url: str) -> Any:
    import optuna

    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # heartbeat is "experimental" in Optuna 4-5 but is the only stale-trial fix
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)


def tune_heads(
    config: TuneConfig,
    data: PairedEmbeddings,
    split: Split,
    *,
    n_trials: int | None = None,
) -> TuneResult:
    """Run (or resume) the study until it holds ``n_trials`` finished trials in total.

    Writes ``best_config.yaml`` (a training config for the full train split) and
    ``trials.json`` to ``config.output_dir``.
    """
    import optuna

    config.validate()
    total = config.n_trials if n_trials is None else int(n_trials)
    tune_data, val = split.part(data, "tuning"), split.part(data, "val")
    sampler = optuna.samplers.TPESampler(seed=config.sampler_seed)
    study = optuna.create_study(
        storage=_storage(config.storage),
        study_name=config.study_name,
        direction=config.direction,
        sampler=sampler,
        load_if_exists=True,
    )
    space_json = json.dumps(config.search_space, sort_keys=True)
    saved = study.user_attrs.get("search_space")
    if saved is None:
        study.set_user_attr("search_space", space_json)
        study.set_user_attr("metric", config.metric)
    elif saved != space_json or study.user_attrs.get("metric") != config.metric:
        raise ConfigError(
            f"study {config.study_name!r} in {config.storage} was made with a different search space or metric; "
            "use a new study name (or storage) for the new space"
        )

    def objective(trial: Any) -> float:
        try:
            params = {k: _suggest(trial, k, spec) for k, spec in config.search_space.items()}
            cfg = apply_params(config.base, params, f"trial {trial.number}")
            cfg.training.progress = False

            def report(epoch: int, row: dict[str, float]) -> None:
                trial.report(row[config.metric], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")

            result = train_heads(cfg, tune_data, val, on_epoch=report, plots=False)
            trial.set_user_attr("best_epoch", result.best_epoch)
            return float(result.best_metrics[config.metric])
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            raise

    done = sum(1 for t in study.trials if t.state.name in _FINISHED)
    remaining = max(0, total - done)
    if remaining:
        study.optimize(objective, n_trials=remaining, n_jobs=config.n_jobs, timeout=config.timeout,
                       catch=(Exception,), gc_after_trial=True)
    return _finish(study, config)


def _finish(study: Any, config: TuneConfig) -> TuneResult:
    out = Path(config.output_dir)
    trials = [
        {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
         "user_attrs": t.user_attrs}
        for t in study.trials
    ]
    files = {"trials": str(out / "trials.json")}
    with atomic_write(out / "trials.json") as fh:
        fh.write(json.dumps(trials, indent=1, default=str).encode("utf-8"))
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        return TuneResult(study, None, None, files)
    best = study.best_trial
    cfg = apply_params(copy.deepcopy(config.base), best.params, "best trial")
    cfg.training.progress = True
    cfg.to_yaml(out / "best_config.yaml")
    files["best_config"] = str(out / "best_config.yaml")
    return TuneResult(study, cfg, float(best.value), files)
