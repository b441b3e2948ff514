"""Training on frozen embeddings: linear probes and projection heads (``ferroclip[train]``).

Embeddings are computed once (by ferroclip or anything else) and small models are trained
on top: :func:`linear_probe` measures how linearly separable classes are; projection heads
(:func:`train_heads`) align image embeddings with text embeddings from another model, are
tuned with Optuna (:func:`tune_heads`) and scored with ferroclip's Rust Recall@K
(:func:`evaluate_heads`). torch, scikit-learn, optuna, matplotlib and pyyaml are imported
only by the parts that need them.
"""

from __future__ import annotations

from typing import Any

from .config import DataConfig, HeadsConfig, LossConfig, ModelConfig, TrainingConfig, TuneConfig
from .data import PairedEmbeddings, labels_from_folder, load_array, load_labels_csv, load_paired
from .probe import ProbeResult, compare_probes, comparison_table, linear_probe, write_comparison
from .split import Split, split_images

__all__ = [
    "DataConfig",
    "HeadsConfig",
    "LossConfig",
    "ModelConfig",
    "PairedEmbeddings",
    "ProbeResult",
    "ProjectionModel",
    "Split",
    "TrainResult",
    "TrainingConfig",
    "TuneConfig",
    "TuneResult",
    "build_model",
    "compare_probes",
    "comparison_table",
    "evaluate_heads",
    "labels_from_folder",
    "linear_probe",
    "load_array",
    "load_checkpoint",
    "load_labels_csv",
    "load_paired",
    "save_checkpoint",
    "split_images",
    "train_heads",
    "tune_heads",
    "write_comparison",
]

# torch and optuna are heavy: the head-training names load on first use.
_LAZY = {
    "ProjectionModel": "heads",
    "build_model": "heads",
    "TrainResult": "trainer",
    "train_heads": "trainer",
    "load_checkpoint": "trainer",
    "save_checkpoint": "trainer",
    "evaluate_heads": "evaluate",
    "TuneResult": "tune",
    "tune_heads": "tune",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
