"""Optuna tuning resumes from SQLite and survives failing trials; the ``heads`` CLI end to end."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("optuna")

import ferroclip.train.tune as tune_mod  # noqa: E402
from ferroclip.errors import ConfigError, DataError  # noqa: E402
from ferroclip.train import HeadsConfig, Split, TuneConfig, load_checkpoint, tune_heads  # noqa: E402
from ferroclip.train.cli import register  # noqa: E402

from ._train_data import planted  # noqa: E402

TRAIN_YAML = """\
data:
  image_embeddings: emb/images.npy
  text_embeddings: emb/texts.npy
  metadata: emb/metadata.json
  val_fraction: 0.2
  test_fraction: 0.2
  tuning_fraction: 0.5
model:
  type: mlp
  output_dim: 16
  hidden_dim: 32
loss:
  type: infonce
  temperature: 0.07
training:
  batch_size: 32
  learning_rate: 3e-3
  num_epochs: {epochs}
  patience: 10
  device: cpu
  num_threads: 1
  progress: false
output_dir: run
"""

TUNE_YAML = """\
base: train.yaml
study:
  name: t
  storage: sqlite:///tuning/study.db
  n_trials: {n_trials}
  n_jobs: {n_jobs}
  sampler_seed: 0
  metric: val_r1
search_space:
  training.learning_rate: {{type: float, low: 1e-3, high: 1e-2, log: true}}
  model.type: {{type: categorical, choices: [mlp, siglip]}}
output_dir: tuning
"""


def _cli(*argv):
    parser = argparse.ArgumentParser(prog="ferroclip")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.fixture
def project(tmp_path):
    """Paired-layout embedding files (seed 002's layout: one image row per caption) and configs."""
    d = planted(n_images=100, noise=0.8, seed=2)
    (tmp_path / "emb").mkdir()
    np.save(tmp_path / "emb" / "images.npy", d.images[d.text_to_image])
    np.save(tmp_path / "emb" / "texts.npy", d.texts)
    ids = [d.image_ids[i] for i in d.text_to_image]
    (tmp_path / "emb" / "metadata.json").write_text(json.dumps({"image_ids": ids}))
    (tmp_path / "train.yaml").write_text(TRAIN_YAML.format(epochs=4))
    assert _cli("heads", "split", str(tmp_path / "train.yaml")) == 0
    return tmp_path


def _tune_cfg(root, n_trials, n_jobs=1):
    (root / "tune.yaml").write_text(TUNE_YAML.format(n_trials=n_trials, n_jobs=n_jobs))
    return TuneConfig.from_yaml(root / "tune.yaml")


def _data_split(root):
    from ferroclip.train import load_paired

    emb = root / "emb"
    return load_paired(emb / "images.npy", emb / "texts.npy", emb / "metadata.json"), Split.load(root / "run" / "split.json")


def test_tuning_records_failures_and_resumes_after_interruption(project, monkeypatch):
    data, split = _data_split(project)
    real = tune_mod.train_heads
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user presses Ctrl-C during trial 2
        return real(*args, **kwargs)

    monkeypatch.setattr(tune_mod, "train_heads", flaky)
    with pytest.raises(KeyboardInterrupt):
        tune_heads(_tune_cfg(project, n_trials=4), data, split)
    monkeypatch.setattr(tune_mod, "train_heads", real)

    res = tune_heads(_tune_cfg(project, n_trials=4), data, split)  # same command again: resumes
    trials = res.study.trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL", "COMPLETE"]
    assert "simulated" in trials[1].user_attrs["error"]
    first_params = trials[0].params

    res = tune_heads(_tune_cfg(project, n_trials=6, n_jobs=2), data, split)  # a bigger budget, parallel trials
    trials = res.study.trials
    assert len(trials) == 6 and trials[0].params == first_params
    assert sum(t.state.name == "COMPLETE" for t in trials) == 4
    assert res.best_value == max(t.value for t in trials if t.state.name == "COMPLETE")

    best = HeadsConfig.from_yaml(res.files["best_config"])  # a valid training config
    assert best.training.learning_rate == pytest.approx(res.study.best_params["training.learning_rate"])
    assert best.model.type == res.study.best_params["model.type"]
    saved = json.loads((project / "tuning" / "trials.json").read_text())
    assert [t["state"] for t in saved] == [t.state.name for t in trials]

    other = _tune_cfg(project, n_trials=6)
    other.search_space = {"training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}
    with pytest.raises(ConfigError, match="different search space"):
        tune_heads(other, data, split)


def test_cli_heads_split_train_eval_tune(project, capsys):
    root = project
    with pytest.raises(DataError, match="split exists"):
        _cli("heads", "split", str(root / "train.yaml"))
    capsys.readouterr()
    (root / "train.yaml").write_text(TRAIN_YAML.format(epochs=40))
    assert _cli("heads", "train", str(root / "train.yaml")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["best_epoch"] >= 1
    for f in ("model.safetensors", "checkpoint.json", "loss_history.json", "training_curves.png", "config.yaml"):
        assert (root / "run" / f).is_file(), f
    assert _cli("heads", "eval", str(root / "train.yaml"), "--no-plots") == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["images"] == 20 and metrics["captions"] == 100
    assert metrics["i2t_R@1"] > 0.3  # 20 held-out images: chance is 0.05
    model = load_checkpoint(root / "run")
    assert (model.image_dim, model.text_dim) == (32, 48)
    _tune_cfg(root, n_trials=2)
    assert _cli("heads", "tune", str(root / "tune.yaml")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["states"] == {"COMPLETE": 2}
    assert (root / "tuning" / "best_config.yaml").is_file()
