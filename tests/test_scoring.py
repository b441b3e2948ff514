"""Seed 003's local CLIP adapter contract: config.toml, typed per-record results, the score CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ferroclip
from ferroclip import SimilarityConfig, SimilarityInput, SimilarityResult, SimilarityScorer
from ferroclip.cli import main
from ferroclip.errors import ConfigError

from . import _models
from ._images import smooth_rgb

SEED_TOML = """
[similarity_config]
adapter = "local_clip"
model = "{model}"
device = "cpu"
use_safetensors = true
col_name = "clip_score"
"""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _models.tiny_clip(tmp_path_factory.mktemp("score") / "clip")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("score-imgs")
    rng = np.random.default_rng(5)
    out = []
    for i in range(3):
        p = root / f"img{i}.png"
        Image.fromarray(smooth_rgb(rng, 40 + 7 * i, 33)).save(p)
        out.append(str(p))
    return out


def test_config_defaults_are_the_seeds():
    cfg = SimilarityConfig.from_dict({"similarity_config": {"model": "x/y", "torch_dtype": None}})
    assert cfg.torch_dtype == "float32" and cfg.col_name == "clip_score" and cfg.device == "auto"
    assert cfg.use_safetensors is True and cfg.model == "x/y"
    assert SimilarityConfig().model == "openai/clip-vit-base-patch32"
    with pytest.raises(ConfigError, match="did you mean 'torch_dtype'"):
        SimilarityConfig.from_dict({"torch_dtpe": "float16"})
    with pytest.raises(ConfigError, match="adapter"):
        SimilarityConfig.from_dict({"adapter": "openai_clip"})


def test_scorer_from_toml_and_dict(ckpt, images, tmp_path):
    toml = tmp_path / "config.toml"
    toml.write_text(SEED_TOML.format(model=ckpt.as_posix()) + 'torch_dtype = "bfloat16"\n')
    scorer = SimilarityScorer.from_toml(toml)
    assert scorer.model.dtype == "bfloat16" and scorer.col_name == "clip_score"
    toml.write_text(SEED_TOML.format(model=ckpt.as_posix()))  # torch_dtype not given: float32
    scorer = SimilarityScorer.from_toml(toml)
    assert scorer.model.dtype == "float32"
    same = SimilarityScorer.from_dict({"model": str(ckpt), "device": "cpu", "col_name": "sim"})
    assert same.col_name == "sim"
    expect = float(same.model.encode_images([images[0]], progress=False).embeddings[0] @ same.model.encode_texts(["a cat"])[0])
    assert scorer.score("a cat", images[0]) == pytest.approx(expect, abs=1e-5)
    with pytest.raises(ConfigError, match="no \\[similarity_config\\] table"):
        (tmp_path / "empty.toml").write_text("[other]\n")
        SimilarityScorer.from_toml(tmp_path / "empty.toml")


def test_score_batch_typed_results_per_item_errors(ckpt, images, tmp_path):
    scorer = SimilarityScorer(model=str(ckpt), device="cpu", col_name="sim")
    m = scorer.model
    inputs = [
        SimilarityInput("a red car", images[0], "q1", "i1"),
        {"query": None, "image_url": images[1], "query_id": "q2", "image_id": "i2"},
        {"query": "a dog", "image_url": str(tmp_path / "missing.jpg"), "query_id": "q3", "image_id": "i3", "split": "test"},
        {"query": "a dog", "image": images[1], "query_id": "q3", "image_id": "i2"},
        {"query": "a dog", "query_id": "q4"},
    ]
    out = scorer.score_batch(inputs, progress=False)
    assert all(isinstance(r, SimilarityResult) for r in out) and [r.index for r in out] == [0, 1, 2, 3, 4]
    assert [r.query_id for r in out] == ["q1", "q2", "q3", "q3", "q4"]
    assert [r.ok for r in out] == [True, False, False, True, False]
    emb = m.encode_images([images[0], images[1]], progress=False).embeddings
    txt = m.encode_texts(["a red car", "a dog"])
    assert out[0].score == pytest.approx(float(emb[0] @ txt[0]), abs=1e-5)
    assert out[3].score == pytest.approx(float(emb[1] @ txt[1]), abs=1e-5)
    assert "'query' must be a non-empty string" in out[1].error and out[1].score is None
    assert "missing.jpg" in out[2].error
    assert "no image" in out[4].error
    # The input's own field names come back: image_url stays image_url, image stays image.
    assert out[0].to_dict()["image_url"] == images[0] and "image" not in out[0].to_dict()
    assert out[3]["image"] == images[1] and "image_url" not in out[3].to_dict()
    assert out[0]["sim"] == out[0].score and out[2]["split"] == "test"


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_cli_scores_csv_and_jsonl(ckpt, images, tmp_path, capsys):
    toml = tmp_path / "config.toml"
    toml.write_text(SEED_TOML.format(model=ckpt.as_posix()).replace('"clip_score"', '"my_score"'))
    rows = [
        {"query": "a red car", "image_url": images[0], "query_id": "q1", "image_id": "i1", "note": "keep me"},
        {"query": "", "image_url": images[1], "query_id": "q2", "image_id": "i2", "note": ""},
        {"query": "a dog", "image_url": str(tmp_path / "gone.png"), "query_id": "q3", "image_id": "i3", "note": ""},
    ]
    _write_csv(tmp_path / "in.csv", rows)
    assert main(["score", str(tmp_path / "in.csv"), "--config", str(toml), "--out", str(tmp_path / "out.csv"), "--quiet"]) == 0
    with open(tmp_path / "out.csv", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert list(got[0]) == ["query", "image_url", "query_id", "image_id", "note", "my_score", "error"]
    assert [r["query_id"] for r in got] == ["q1", "q2", "q3"] and got[0]["note"] == "keep me"
    model = ferroclip.load_model(ckpt, device="cpu")
    expect = float(model.encode_images([images[0]], progress=False).embeddings[0] @ model.encode_texts(["a red car"])[0])
    assert float(got[0]["my_score"]) == pytest.approx(expect, abs=1e-5) and got[0]["error"] == ""
    assert got[1]["my_score"] == "" and "query" in got[1]["error"]
    assert got[2]["my_score"] == "" and "gone.png" in got[2]["error"]
    assert "scored 1 of 3 rows" in capsys.readouterr().err

    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:1]) + "\n")
    code = main(["score", str(tmp_path / "in.jsonl"), "-m", str(ckpt), "--device", "cpu", "-o", str(tmp_path / "o.jsonl"), "--quiet"])
    assert code == 0
    line = json.loads((tmp_path / "o.jsonl").read_text().splitlines()[0])
    assert line["clip_score"] == pytest.approx(expect, abs=1e-5) and line["error"] is None and line["note"] == "keep me"
    assert main(["score", str(tmp_path / "in.csv"), "-c", str(toml), "-o", str(tmp_path / "x.csv"), "--quiet", "--strict"]) == 1
    (tmp_path / "bad.csv").write_text("text,url\nx,y\n")
    assert main(["score", str(tmp_path / "bad.csv"), "-m", str(ckpt), "-o", str(tmp_path / "y.csv")]) == 2
    assert "needs 'query' and 'image_url'" in capsys.readouterr().err
