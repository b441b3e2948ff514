"""Linear probes on frozen embeddings: how linearly separable are the classes? (seed 000)

Protocol: L2-normalise the features (CLIP/SigLIP embeddings are compared by angle), then
stratified k-fold cross-validation. In each outer fold the regularisation strength is
chosen on the training part only, by inner cross-validation, so the reported accuracy
never saw its own test fold:

- ``ridge``: a ridge classifier (+1/-1 targets per class) over ``alphas``. With
  ``inner_folds=None`` alpha is chosen by ridge's exact closed-form leave-one-out CV: the
  same model and criterion as scikit-learn's ``RidgeClassifierCV(cv=None)``, computed from
  one eigendecomposition for all alphas (see :func:`_ridge_loo`; several times faster at
  CLIP widths). An integer uses ``RidgeClassifierCV`` with stratified inner folds.
- ``logistic``: ``LogisticRegressionCV`` (L2, lbfgs) over ``Cs`` with stratified inner folds
  (``inner_folds``, default 5), scored by accuracy.

Reported: per-fold and mean ± std (sample std, ddof=1) accuracy and balanced accuracy, the
strength picked per fold, and the confusion matrix of the out-of-fold predictions (every
sample is predicted exactly once, by the model that did not train on it).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .._atomic import atomic_write
from ..errors import DataError, ShapeError

__all__ = ["ProbeResult", "compare_probes", "comparison_table", "linear_probe", "write_comparison"]

DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-3, 4, 15))
DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-2, 4, 7))


@dataclass
class ProbeResult:
    """Cross-validated probe scores; ``confusion[i, j]`` counts true ``classes[i]`` predicted ``classes[j]``."""

    model: str
    classes: list[str]
    fold_accuracy: list[float]
    fold_balanced_accuracy: list[float]
    fold_regularisation: list[float]
    confusion: npt.NDArray[np.int64]
    predictions: npt.NDArray[np.int64]
    n_samples: int
    n_features: int
    seconds: float
    name: str = "features"
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> tuple[float, float]:
        """(mean, sample std) over folds."""
        return _mean_std(self.fold_accuracy)

    @property
    def balanced_accuracy(self) -> tuple[float, float]:
        return _mean_std(self.fold_balanced_accuracy)

    def to_dict(self) -> dict[str, Any]:
        acc, bal = self.accuracy, self.balanced_accuracy
        return {
            "name": self.name,
            "model": self.model,
            "n_samples": self.n_samples,
            "n_features": self.n_features,
            "classes": self.classes,
            "accuracy_mean": acc[0],
            "accuracy_std": acc[1],
            "balanced_accuracy_mean": bal[0],
            "balanced_accuracy_std": bal[1],
            "fold_accuracy": self.fold_accuracy,
            "fold_balanced_accuracy": self.fold_balanced_accuracy,
            "fold_regularisation": self.fold_regularisation,
            "confusion_matrix": self.confusion.tolist(),
            "seconds": self.seconds,
            "settings": self.settings,
        }

    def save(self, out_dir: str | os.PathLike[str], *, plot: bool = True) -> dict[str, Path]:
        """Write ``<name>_probe.json``, ``<name>_folds.csv`` and ``<name>_confusion.png``."""
        out = Path(out_dir)
        stem = _safe(self.name)
        files = {"json": out / f"{stem}_probe.json", "csv": out / f"{stem}_folds.csv"}
        with atomic_write(files["json"]) as fh:
            fh.write(json.dumps(self.to_dict(), indent=1).encode("utf-8"))
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["fold", "accuracy", "balanced_accuracy", "regularisation"])
        for i, row in enumerate(zip(self.fold_accuracy, self.fold_balanced_accuracy, self.fold_regularisation)):
            w.writerow([i, *row])
        (am, asd), (bm, bsd) = self.accuracy, self.balanced_accuracy
        w.writerow(["mean", am, bm, ""])
        w.writerow(["std", asd, bsd, ""])
        with atomic_write(files["csv"]) as fh:
            fh.write(buf.getvalue().encode("utf-8"))
        if plot:
            from .plots import plot_confusion_matrix

            files["confusion"] = out / f"{stem}_confusion.png"
            title = f"{self.name} {self.model}: acc {am:.3f} ± {asd:.3f}"
            plot_confusion_matrix(self.confusion, self.classes, files["confusion"], title)
        return files


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "features"


def _mean_std(v: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(v, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    out: np.ndarray = x / np.maximum(n, np.finfo(x.dtype).tiny)
    return out


def _prepare(features: Any, labels: Sequence[Any] | np.ndarray, folds: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    x = np.asarray(features)
    if x.ndim != 2:
        raise ShapeError(f"features must be 2-d (samples, dim), got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise ShapeError(f"features must be numeric, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32 if x.dtype != np.float64 else np.float64)
    if not np.isfinite(x).all():
        raise DataError(f"features hold NaN or Inf (first in row {int(np.argwhere(~np.isfinite(x))[0][0])})")
    y_raw = np.asarray(labels)
    if y_raw.ndim != 1 or len(y_raw) != len(x):
        raise DataError(f"{len(y_raw) if y_raw.ndim == 1 else y_raw.shape} labels for {len(x)} feature rows")
    classes, y = np.unique(y_raw, return_inverse=True)
    classes, y = _numeric_order(classes, y)
    if len(classes) < 2:
        raise DataError("a probe needs at least two classes")
    counts = np.bincount(y)
    if counts.min() < folds:
        small = str(classes[int(counts.argmin())])
        raise DataError(
            f"class {small!r} has {int(counts.min())} samples, fewer than folds={folds}; "
            "lower folds or drop the class"
        )
    return x, y.astype(np.int64), [str(c) for c in classes]


_INT = re.compile(r"[+-]?\d+")


def _numeric_order(classes: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classes named by integers (ages ``1, 2, 10`` in seed 000) in numeric order, as the
    seed's label encoder sorts them, not as strings (``1, 10, 2``); others stay sorted."""
    names = [str(c).strip() for c in classes]
    if not all(_INT.fullmatch(n) for n in names):
        return classes, y
    order = sorted(range(len(names)), key=lambda i: (int(names[i]), names[i]))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return classes[order], rank[y]


def _ridge_loo(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, alphas: Sequence[float]) -> tuple[np.ndarray, float]:
    """Ridge classifier with alpha chosen by exact leave-one-out, for all alphas from one eigh.

    Same model and criterion as scikit-learn's ``RidgeClassifierCV(cv=None)`` (targets
    +1/-1 per class, unpenalised intercept, alpha minimising the mean squared LOO error,
    first alpha on ties), computed differently: with ``Q = Xc V`` from the eigenvectors of
    ``Xc^T Xc = V diag(l) V^T``, the hat matrix is ``1/n + Q diag(1/(l+a)) Q^T`` for every
    alpha ``a``, so each alpha costs O(n*d*classes) instead of another pass of O(n*d^2).
    """
    x = x_tr.astype(np.float64)
    n = len(x)
    classes = np.unique(y_tr)
    targets = np.where(y_tr[:, None] == classes[None, :], 1.0, -1.0)
    if len(classes) == 2:
        targets = targets[:, 1:]
    x_mean, t_mean = x.mean(axis=0), targets.mean(axis=0)
    xc, tc = x - x_mean, targets - t_mean
    lam, v = np.linalg.eigh(xc.T @ xc)
    lam = np.maximum(lam, 0.0)
    q = xc @ v
    qt = q.T @ tc
    q2 = q * q
    best: tuple[float, float] | None = None
    for a in alphas:
        w = 1.0 / (lam + a)
        fitted = q @ (qt * w[:, None])
        hat = 1.0 / n + q2 @ w
        err = float(np.mean(((tc - fitted) / (1.0 - hat)[:, None]) ** 2))
        if best is None or err < best[0]:
            best = (err, float(a))
    assert best is not None
    alpha = best[1]
    coef = v @ (qt / (lam + alpha)[:, None])
    scores = (x_te.astype(np.float64) - x_mean) @ coef + t_mean
    pred = (scores[:, 0] > 0).astype(np.int64) if len(classes) == 2 else scores.argmax(axis=1)
    return classes[pred], alpha


def _fit_fold(
    model: str,
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_te: np.ndarray,
    alphas: Sequence[float],
    cs: Sequence[float],
    inner_folds: int | None,
    seed: int | None,
) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegressionCV, RidgeClassifierCV
    from sklearn.model_selection import StratifiedKFold

    inner = None if inner_folds is None else StratifiedKFold(inner_folds, shuffle=True, random_state=seed)
    if model == "ridge" and inner is None:
        return _ridge_loo(x_tr, y_tr, x_te, alphas)
    if model == "ridge":
        clf = RidgeClassifierCV(alphas=alphas, cv=inner)
        clf.fit(x_tr, y_tr)
        reg = float(clf.alpha_)
    else:
        clf = LogisticRegressionCV(
            Cs=list(cs), cv=inner or StratifiedKFold(5, shuffle=True, random_state=seed), l1_ratios=(0.0,),
            scoring="accuracy", max_iter=2000, use_legacy_attributes=False, random_state=seed,
        )
        clf.fit(x_tr, y_tr)
        reg = float(clf.C_)
    return clf.predict(x_te), reg


def linear_probe(
    features: Any,
    labels: Sequence[Any] | np.ndarray,
    model: Literal["ridge", "logistic"] = "ridge",
    folds: int = 10,
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    Cs: Sequence[float] = DEFAULT_CS,  # noqa: N803 (scikit-learn's name)
    inner_folds: int | None = None,
    normalize: bool = True,
    seed: int = 0,
    n_jobs: int | None = None,
    name: str = "features",
) -> ProbeResult:
    """Stratified ``folds``-fold CV of a linear classifier on (L2-normalised) features.

    ``labels`` may be strings or integers. ``n_jobs`` runs outer folds in parallel
    (joblib). Example::

        res = linear_probe(np.load("clip.npy"), labels, "ridge", folds=10)
        print(res.accuracy)  # (mean, std)
    """
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix
    from sklearn.model_selection import StratifiedKFold

    if model not in ("ridge", "logistic"):
        raise ValueError(f"model must be 'ridge' or 'logistic', got {model!r}")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
    if inner_folds is not None and inner_folds < 2:
        raise ValueError(f"inner_folds must be >= 2 or None, got {inner_folds!r}")
    t0 = time.perf_counter()
    x, y, classes = _prepare(features, labels, folds)
    if normalize:
        x = l2_normalize(x)
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y))
    jobs = [(model, x[tr], y[tr], x[te], tuple(alphas), tuple(Cs), inner_folds, seed) for tr, te in splits]
    if n_jobs is not None and n_jobs != 1:
        from joblib import Parallel, delayed

        outs = Parallel(n_jobs=n_jobs)(delayed(_fit_fold)(*j) for j in jobs)
    else:
        outs = [_fit_fold(*j) for j in jobs]
    pred = np.empty(len(y), dtype=np.int64)
    acc, bal, reg = [], [], []
    for (_, te), (p, r) in zip(splits, outs):
        pred[te] = p
        acc.append(float(np.mean(p == y[te])))
        bal.append(float(balanced_accuracy_score(y[te], p)))
        reg.append(r)
    cm = confusion_matrix(y, pred, labels=np.arange(len(classes))).astype(np.int64)
    settings = {"folds": folds, "inner_folds": inner_folds, "normalize": normalize, "seed": seed,
                "alphas" if model == "ridge" else "Cs": list(alphas if model == "ridge" else Cs)}
    return ProbeResult(model, classes, acc, bal, reg, cm, pred, len(y), x.shape[1],
                       time.perf_counter() - t0, name, settings)


def compare_probes(
    features: Mapping[str, Any],
    labels: Sequence[Any] | np.ndarray,
    model: Literal["ridge", "logistic"] = "ridge",
    folds: int = 10,
    **kwargs: Any,
) -> dict[str, ProbeResult]:
    """The same probe (same folds and seed) on several models' features for the same samples."""
    if not features:
        raise ValueError("give at least one feature set")
    return {n: linear_probe(f, labels, model, folds, name=n, **kwargs) for n, f in features.items()}


def comparison_table(results: Mapping[str, ProbeResult]) -> str:
    """Markdown table: one row per feature set, accuracy and balanced accuracy as mean ± std."""
    lines = ["| features | dim | probe | accuracy | balanced accuracy | seconds |", "|---|---|---|---|---|---|"]
    for n, r in results.items():
        (a, asd), (b, bsd) = r.accuracy, r.balanced_accuracy
        lines.append(f"| {n} | {r.n_features} | {r.model} | {a:.4f} ± {asd:.4f} | {b:.4f} ± {bsd:.4f} | {r.seconds:.2f} |")
    return "\n".join(lines)


def write_comparison(results: Mapping[str, ProbeResult], out_dir: str | os.PathLike[str], *, plot: bool = True) -> dict[str, Path]:
    """Each result's own files, plus ``comparison.csv``, ``comparison.md`` and ``comparison.json``."""
    out = Path(out_dir)
    for r in results.values():
        r.save(out, plot=plot)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["features", "dim", "probe", "accuracy_mean", "accuracy_std", "balanced_accuracy_mean",
                "balanced_accuracy_std", "seconds"])
    for n, r in results.items():
        w.writerow([n, r.n_features, r.model, *r.accuracy, *r.balanced_accuracy, r.seconds])
    files = {"csv": out / "comparison.csv", "md": out / "comparison.md", "json": out / "comparison.json"}
    with atomic_write(files["csv"]) as fh:
        fh.write(buf.getvalue().encode("utf-8"))
    with atomic_write(files["md"]) as fh:
        fh.write((comparison_table(results) + "\n").encode("utf-8"))
    with atomic_write(files["json"]) as fh:
        fh.write(json.dumps({n: r.to_dict() for n, r in results.items()}, indent=1).encode("utf-8"))
    return files
