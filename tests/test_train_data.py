"""Embedding/metadata loading, image-level splits and YAML config validation."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from ferroclip.errors import ConfigError, DataError, ShapeError
from ferroclip.train import HeadsConfig, Split, TuneConfig, load_array, load_paired, split_images

from ._train_data import planted


@pytest.fixture
def arr():
    return np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)


def test_every_format_loads_the_same_array(tmp_path, arr):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import save_file

    np.save(tmp_path / "a.npy", arr)
    np.savez(tmp_path / "a.npz", emb=arr)
    torch.save(torch.from_numpy(arr), tmp_path / "a.pt")
    torch.save({"emb": torch.from_numpy(arr).half(), "other": torch.zeros(2)}, tmp_path / "b.pt")
    save_file({"emb": arr}, str(tmp_path / "a.safetensors"))
    for name, key in [("a.npy", None), ("a.npz", None), ("a.npz", "emb"), ("a.pt", None), ("a.safetensors", "emb")]:
        np.testing.assert_array_equal(load_array(tmp_path / name, key), arr)
    np.testing.assert_allclose(load_array(tmp_path / "b.pt", "emb"), arr, atol=1e-2)
    with pytest.raises(DataError, match="several arrays"):
        load_array(tmp_path / "b.pt")
    with pytest.raises(DataError, match="no array named 'nope'"):
        load_array(tmp_path / "a.npz", "nope")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickles_are_never_loaded(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    np.save(tmp_path / "obj.npy", np.array([Evil()], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="obj.npy"):
        load_array(tmp_path / "obj.npy")
    torch.save({"emb": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(DataError, match="evil.pt"):
        load_array(tmp_path / "evil.pt", "emb")
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DataError, match="raw.pt"):
        load_array(tmp_path / "raw.pt")
    assert "pwned" not in capsys.readouterr().out


def test_bad_arrays_name_the_file(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros(5, np.float32))
    with pytest.raises(ShapeError, match=r"v.npy.*2-d"):
        load_array(tmp_path / "v.npy")
    bad = np.zeros((3, 2), np.float32)
    bad[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DataError, match=r"nan.npy.*row 2"):
        load_array(tmp_path / "nan.npy")
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match="unknown embedding format"):
        load_array(tmp_path / "x.csv")
    with pytest.raises(DataError, match="no such file"):
        load_array(tmp_path / "missing.npy")


def _write(tmp_path, img, txt, meta):
    np.save(tmp_path / "img.npy", img)
    np.save(tmp_path / "txt.npy", txt)
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    return tmp_path / "img.npy", tmp_path / "txt.npy", tmp_path / "meta.json"


def test_paired_layout_collapses_repeated_images(tmp_path):
    d = planted(n_images=4, image_dim=3, text_dim=5, captions=2)
    img_rows = d.images[d.text_to_image]  # seed layout: one image row per caption
    ids = [d.image_ids[i] for i in d.text_to_image]
    got = load_paired(*_write(tmp_path, img_rows, d.texts, {"image_ids": ids}))
    np.testing.assert_array_equal(got.images, d.images)
    np.testing.assert_array_equal(got.text_to_image, d.text_to_image)
    assert got.image_ids == d.image_ids


def test_separate_layout_and_its_errors(tmp_path):
    d = planted(n_images=3, image_dim=3, text_dim=5, captions=2)
    meta = {"image_ids": list(d.image_ids), "text_image_ids": [d.image_ids[i] for i in d.text_to_image]}
    got = load_paired(*_write(tmp_path, d.images, d.texts, meta))
    np.testing.assert_array_equal(got.text_to_image, d.text_to_image)
    with pytest.raises(DataError, match=r"meta.json.*not image ids.*'ghost'"):
        load_paired(*_write(tmp_path, d.images, d.texts, {**meta, "text_image_ids": ["ghost"] + meta["text_image_ids"][1:]}))
    with pytest.raises(DataError, match=r"'image_ids' has 2 entries but .*img.npy has 3 rows"):
        load_paired(*_write(tmp_path, d.images, d.texts, {**meta, "image_ids": meta["image_ids"][:2]}))
    with pytest.raises(DataError, match="'text_image_ids' has 5 entries"):
        load_paired(*_write(tmp_path, d.images, d.texts, {**meta, "text_image_ids": meta["text_image_ids"][:5]}))
    with pytest.raises(DataError, match="paired layout needs as many text rows"):
        load_paired(*_write(tmp_path, d.images, d.texts, {"image_ids": meta["image_ids"]}))
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="meta.json: not a readable JSON"):
        load_paired(tmp_path / "img.npy", tmp_path / "txt.npy", tmp_path / "meta.json")


def test_splits_are_disjoint_by_image_and_keep_all_captions(tmp_path):
    d = planted(n_images=100, captions=5)
    s = split_images(d, val=0.1, test=0.2, tuning=0.25, seed=3)
    assert not set(s.train) & set(s.val) and not set(s.train) & set(s.test) and not set(s.val) & set(s.test)
    assert set(s.train) | set(s.val) | set(s.test) == set(d.image_ids)
    assert set(s.tuning) < set(s.train) and len(s.tuning) == 18
    parts = {k: s.part(d, k) for k in ("train", "val", "test")}
    assert sum(len(p.texts) for p in parts.values()) == len(d.texts)
    for p in parts.values():  # every caption still points at its own image vector
        np.testing.assert_array_equal(p.texts, d.texts[np.isin(d.text_to_image, [d.image_ids.index(i) for i in p.image_ids])])
        assert np.bincount(p.text_to_image).tolist() == [5] * len(p.images)
    s.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json") == s
    assert split_images(d, val=0.1, test=0.2, tuning=0.25, seed=3) == s
    assert split_images(d, val=0.1, test=0.2, tuning=0.25, seed=4) != s
    with pytest.raises(DataError, match="different data"):
        s.part(planted(n_images=50), "train")


def test_tampered_split_file_is_rejected(tmp_path):
    s = split_images(planted(n_images=20), val=0.2, test=0.2)
    s.save(tmp_path / "split.json")
    body = json.loads((tmp_path / "split.json").read_text())
    body["test"].append(body["train"][0])
    (tmp_path / "split.json").write_text(json.dumps(body))
    with pytest.raises(DataError, match="share images"):
        Split.load(tmp_path / "split.json")


def test_yaml_config_reads_seed_style_and_rejects_typos(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "model:\n  type: clip\n  output_dim: 64\n  learnable_temp: true\n"
        "loss:\n  type: clip\n  temperature: 0.05\n"
        "training:\n  learning_rate: 1e-4\n  batch_size: 64\n"
        "data:\n  image_embeddings: emb/img.pt\n"
    )
    cfg = HeadsConfig.from_yaml(tmp_path / "c.yaml")
    assert cfg.training.learning_rate == 1e-4 and cfg.loss_type == "infonce"
    assert cfg.data.image_embeddings == str(tmp_path / "emb/img.pt")
    assert HeadsConfig.from_dict({"model": {"type": "blip"}}).loss_type == "momentum_distill"
    assert HeadsConfig.from_dict({"model": {"type": "siglip"}}).loss_type == "sigmoid"
    cases = [
        ("training:\n  learning_rat: 0.1\n", r"c.yaml.*unknown keys 'learning_rat' \(did you mean 'learning_rate'\?\)"),
        ("model:\n  type: transformer\n", r"model.type.*not one of"),
        ("training:\n  batch_size: big\n", r"training.batch_size: expected an integer"),
        ("loss:\n  type: hinge\n", r"loss.type: unknown loss 'hinge'"),
        ("model:\n  type: attention\n  hidden_dim: 30\n  num_heads: 8\n", "divisible by num_heads"),
        ("training:\n  warmup_ratio: 1.5\n", r"training.warmup_ratio"),
        ("model: [1, 2]\n", "expected a mapping"),
        ("model:\n  type: mlp\n bad", "invalid YAML"),
    ]
    for text, msg in cases:
        (tmp_path / "c.yaml").write_text(text)
        with pytest.raises(ConfigError, match=msg):
            HeadsConfig.from_yaml(tmp_path / "c.yaml")


def test_tune_config_validates_search_space(tmp_path):
    (tmp_path / "t.yaml").write_text(
        "study:\n  name: s\n  storage: sqlite:///db/s.db\n  n_trials: 3\n"
        "search_space:\n  training.learning_rate: {type: float, low: 1e-4, high: 1e-2, log: true}\n"
        "  model.type: {type: categorical, choices: [mlp, clip]}\n"
    )
    cfg = TuneConfig.from_yaml(tmp_path / "t.yaml")
    assert cfg.storage == f"sqlite:///{tmp_path}/db/s.db" and cfg.direction == "maximize"
    (tmp_path / "t.yaml").write_text("search_space:\n  training.lr: {type: float, low: 0, high: 1}\n")
    with pytest.raises(ConfigError, match="training.lr: not a config key"):
        TuneConfig.from_yaml(tmp_path / "t.yaml")
    (tmp_path / "t.yaml").write_text("search_space:\n  training.learning_rate: {type: float, low: 0, high: 1, log: true}\n")
    with pytest.raises(ConfigError, match="log scale needs low > 0"):
        TuneConfig.from_yaml(tmp_path / "t.yaml")
