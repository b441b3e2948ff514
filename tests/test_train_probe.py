"""The linear probe against scikit-learn called directly, and the ``ferroclip probe`` CLI."""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.linear_model import LogisticRegressionCV, RidgeClassifierCV  # noqa: E402
from sklearn.metrics import balanced_accuracy_score  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402

from ferroclip.errors import DataError  # noqa: E402
from ferroclip.train import compare_probes, linear_probe  # noqa: E402
from ferroclip.train.cli import register  # noqa: E402


def _blobs(n=300, dim=24, classes=4, spread=1.6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim))
    y = np.repeat(np.arange(classes), n // classes)
    x = centres[y] + spread * rng.standard_normal((len(y), dim))
    names = np.array(["coat", "dress", "shirt", "boot", "bag"][:classes])
    return x.astype(np.float32), names[y]


def _sklearn_reference(x, y, model, folds, seed, alphas, cs):
    """The seed's protocol written out with scikit-learn only."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    acc, bal, reg = [], [], []
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        if model == "ridge":
            clf = RidgeClassifierCV(alphas=alphas).fit(x[tr], y[tr])
            reg.append(clf.alpha_)
        else:
            clf = LogisticRegressionCV(Cs=cs, cv=StratifiedKFold(5, shuffle=True, random_state=seed), l1_ratios=(0.0,),
                                       scoring="accuracy", max_iter=2000, use_legacy_attributes=False,
                                       random_state=seed).fit(x[tr], y[tr])
            reg.append(clf.C_)
        p = clf.predict(x[te])
        acc.append(np.mean(p == y[te]))
        bal.append(balanced_accuracy_score(y[te], p))
    return acc, bal, reg


@pytest.mark.parametrize(("model", "classes"), [("ridge", 4), ("ridge", 2), ("logistic", 4)])
def test_probe_matches_sklearn_called_directly(model, classes):
    x, y = _blobs(classes=classes, spread=2.5)
    alphas, cs = (0.01, 0.1, 1.0, 10.0, 100.0), (0.01, 1.0, 100.0)
    res = linear_probe(x, y, model, folds=5, alphas=alphas, Cs=cs, seed=7)
    acc, bal, reg = _sklearn_reference(x, y, model, 5, 7, alphas, cs)
    np.testing.assert_allclose(res.fold_accuracy, acc)
    np.testing.assert_allclose(res.fold_balanced_accuracy, bal)
    np.testing.assert_allclose(res.fold_regularisation, reg)
    assert res.accuracy[0] == pytest.approx(np.mean(acc)) and res.accuracy[1] == pytest.approx(np.std(acc, ddof=1))
    assert res.classes == sorted(set(y))
    # out-of-fold confusion matrix: every sample once, diagonal = correct predictions
    assert res.confusion.sum() == len(y)
    assert np.trace(res.confusion) == pytest.approx(np.mean(acc) * len(y), abs=1)


def test_probe_separates_signal_from_shuffled_labels():
    x, y = _blobs(spread=1.2)
    good = linear_probe(x, y, folds=5)
    shuffled = linear_probe(x, np.random.default_rng(1).permutation(y), folds=5)
    assert good.accuracy[0] > 0.9
    assert shuffled.accuracy[0] < 0.4  # 4 classes: chance is 0.25


def test_probe_errors_are_clear():
    x, y = _blobs(n=40)
    with pytest.raises(DataError, match="fewer than folds=20"):
        linear_probe(x, y, folds=20)
    with pytest.raises(DataError, match="39 labels for 40"):
        linear_probe(x, y[:39])
    with pytest.raises(DataError, match="two classes"):
        linear_probe(x, np.zeros(40))
    with pytest.raises(ValueError, match="'ridge' or 'logistic'"):
        linear_probe(x, y, "svm")


def _probe_cli(argv):
    parser = argparse.ArgumentParser(prog="ferroclip")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["probe", *argv])
    return args.func(args)


def test_cli_probe_with_image_folder_csv_and_cache(tmp_path, capsys):
    x, y = _blobs(n=120, classes=3)
    root = tmp_path / "images"
    paths = []
    for i, label in enumerate(y):  # ImageFolder layout; file contents are never read
        f = root / label / f"{i:04d}.png"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"")
        paths.append(str(f))
    order = np.argsort(paths)  # the row order `ferroclip preprocess images/` produces
    np.save(tmp_path / "clip.npy", x[order])
    np.savez(tmp_path / "siglip.npz", features=x[order] + 0.5, paths=np.array(paths)[order])
    assert _probe_cli(["clip=" + str(tmp_path / "clip.npy"), str(tmp_path / "siglip.npz"),
                       "--labels-dir", str(root), "--folds", "3", "--out", str(tmp_path / "out")]) == 0
    table = capsys.readouterr().out
    assert "| clip | 24 | ridge |" in table and "| siglip | 24 | ridge |" in table
    with open(tmp_path / "out" / "comparison.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["features"] for r in rows] == ["clip", "siglip"]
    direct = compare_probes({"clip": x[order]}, y[order], folds=3)["clip"]
    assert float(rows[0]["accuracy_mean"]) == pytest.approx(direct.accuracy[0])
    for f in ("clip_probe.json", "clip_folds.csv", "clip_confusion.png", "siglip_confusion.png", "comparison.md"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    assert json.loads((tmp_path / "out" / "clip_probe.json").read_text())["classes"] == ["coat", "dress", "shirt"]

    # CSV labels matched by path against the cache's stored paths (cache rows shuffled)
    perm = np.random.default_rng(0).permutation(len(y))
    np.savez(tmp_path / "shuf.npz", features=x[perm], paths=np.array(paths)[perm])
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows(zip(paths, y))
    assert _probe_cli([str(tmp_path / "shuf.npz"), "--labels-csv", str(tmp_path / "labels.csv"), "--folds", "3",
                       "--out", str(tmp_path / "out2"), "--no-plots"]) == 0
    got = json.loads((tmp_path / "out2" / "shuf_probe.json").read_text())
    assert got["accuracy_mean"] == pytest.approx(linear_probe(x[perm], y[perm], folds=3).accuracy[0])

    np.save(tmp_path / "short.npy", x[:10])
    with pytest.raises(DataError, match="120 labels but .*short.npy has 10 rows"):
        _probe_cli([str(tmp_path / "short.npy"), "--labels-dir", str(root), "--out", str(tmp_path / "o3")])


def test_integer_class_names_are_ordered_numerically():
    """Seed 000's classes are ages in folders ``1, 2, 10``: its label encoder sorts them as
    ints, so the probe and its confusion matrix must too (strings would give 1, 10, 2)."""
    x, names = _blobs(classes=3, n=90)
    ages = np.array([{"coat": "1", "dress": "10", "shirt": "2"}[n] for n in names])
    res = linear_probe(x, ages, "ridge", folds=3)
    assert res.classes == ["1", "2", "10"]
    as_ints = linear_probe(x, ages.astype(int), "ridge", folds=3)
    assert as_ints.classes == ["1", "2", "10"]
    np.testing.assert_array_equal(res.confusion, as_ints.confusion)
    # Row i of the confusion matrix counts true class classes[i].
    true = {"1": 0, "2": 0, "10": 0}
    for a in ages:
        true[a] += 1
    assert res.confusion.sum(axis=1).tolist() == [true["1"], true["2"], true["10"]]
    mixed = linear_probe(x, np.where(ages == "10", "ten", ages), "ridge", folds=3)
    assert mixed.classes == ["1", "2", "ten"]


def test_cli_probe_drops_failed_rows_from_every_feature_set_and_its_label(tmp_path, capsys):
    # Two embedding runs of the same 90 images where different images failed (ok=false,
    # zero rows): the probe must keep only rows that decoded in both, each with its own
    # label, whether labels come by position (a CSV without paths) or by path.
    x, y = _blobs(n=90, classes=3)
    paths = np.array([str(tmp_path / f"img{i:03d}.png") for i in range(90)])
    ok_a, ok_b = np.ones(90, bool), np.ones(90, bool)
    ok_a[[3, 40]] = False
    ok_b[[7, 40, 88]] = False
    xa, xb = np.where(ok_a[:, None], x, 0), np.where(ok_b[:, None], x + 0.25, 0)
    np.savez(tmp_path / "a.npz", features=xa, ok=ok_a)
    np.savez(tmp_path / "b.npz", features=xb, ok=ok_b, paths=paths)
    keep = ok_a & ok_b
    with open(tmp_path / "pos.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["label"], *([v] for v in y)])
    with open(tmp_path / "bypath.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label"], *zip(paths[::-1], y[::-1])])  # any order: matched by path
    for labels in ("pos.csv", "bypath.csv"):
        out = tmp_path / f"out-{labels}"
        assert _probe_cli([str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--labels-csv", str(tmp_path / labels),
                           "--folds", "3", "--out", str(out), "--no-plots"]) == 0
        assert "4 rows of images that failed" in capsys.readouterr().err
        for name, feats in (("a", xa), ("b", xb)):
            got = json.loads((out / f"{name}_probe.json").read_text())
            want = linear_probe(feats[keep], y[keep], folds=3)
            assert got["accuracy_mean"] == pytest.approx(want.accuracy[0]), (labels, name)

    # the same images in another order are refused, naming the row
    np.savez(tmp_path / "c.npz", features=x[::-1], paths=paths[::-1])
    with pytest.raises(DataError, match=r"c\.npz: row 0 is .*img089\.png but row 0 of .*b\.npz is .*img000\.png"):
        _probe_cli([str(tmp_path / "b.npz"), str(tmp_path / "c.npz"), "--labels-csv", str(tmp_path / "bypath.csv"),
                    "--out", str(tmp_path / "o4")])
    np.save(tmp_path / "d.npy", x[:50])
    with pytest.raises(DataError, match=r"d\.npy: 50 rows but .*a\.npz has 90"):
        _probe_cli([str(tmp_path / "a.npz"), str(tmp_path / "d.npy"), "--labels-csv", str(tmp_path / "pos.csv"),
                    "--out", str(tmp_path / "o5")])
