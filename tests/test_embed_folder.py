"""The folder embedding cache: re-runs embed nothing, changes embed only the change,
a killed run resumes, corrupt files are reported; and the CLI over it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ferroclip
from ferroclip.cli import main as cli_main

from ._images import smooth_rgb
from .test_models import checkpoints  # noqa: F401 (fixture)


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(11)
    for i in range(7):
        where = root / "sub" if i % 3 == 0 else root
        Image.fromarray(smooth_rgb(rng, 40 + 3 * i, 36)).save(where / f"p{i}.{'png' if i % 2 else 'jpg'}")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (root / "notes.txt").write_text("not an image, not even looked at")
    return root


@pytest.fixture
def model(checkpoints):  # noqa: F811
    return ferroclip.load_model(checkpoints["clip"], device="cpu")


def test_first_run_then_cached(model, folder, tmp_path):
    cache = tmp_path / "cache"
    first = ferroclip.embed_folder(model, folder, cache, batch_size=3, progress=False)
    assert len(first) == 7 and first.embedded == 7 and first.reused == 0
    assert list(first.errors) == ["broken.jpg"]
    assert first.paths == sorted(first.paths) and "sub/p0.jpg" in first.paths
    direct = model.encode_images([str(folder / p) for p in first.paths], progress=False).embeddings
    np.testing.assert_allclose(first.embeddings, direct, atol=1e-5)

    again = ferroclip.embed_folder(model, folder, cache, progress=False)
    assert again.embedded == 0 and again.reused == 7 and list(again.errors) == ["broken.jpg"]
    np.testing.assert_array_equal(again.embeddings, first.embeddings)

    # One changed file, one new file, one renamed file, one deleted file.
    rng = np.random.default_rng(99)
    Image.fromarray(smooth_rgb(rng, 30, 30)).save(folder / "p1.png")
    Image.fromarray(smooth_rgb(rng, 31, 33)).save(folder / "new.png")
    os.replace(folder / "p2.jpg", folder / "renamed.jpg")
    (folder / "p4.jpg").unlink()
    third = ferroclip.embed_folder(model, folder, cache, progress=False)
    assert third.embedded == 2 and third.reused == 5 and len(third) == 7
    assert "renamed.jpg" in third.paths and "p2.jpg" not in third.paths and "p4.jpg" not in third.paths
    direct = model.encode_images([str(folder / p) for p in third.paths], progress=False).embeddings
    np.testing.assert_allclose(third.embeddings, direct, atol=1e-5)
    # Compacted into one committed part.
    parts = list((third.cache_dir / "parts").glob("part-*.json"))
    assert len(parts) == 1 and len(json.loads(parts[0].read_text())["rows"]) == 7


def test_killed_run_resumes_without_redoing_work(model, folder, tmp_path):
    cache = tmp_path / "cache"
    calls = {"n": 0}
    real = model.backend.encode_pixels

    def dies_on_third_batch(pixels):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # what Ctrl-C or a kill between commits looks like to us
        return real(pixels)

    model.backend.encode_pixels = dies_on_third_batch
    with pytest.raises(KeyboardInterrupt):
        ferroclip.embed_folder(model, folder, cache, batch_size=2, commit_every=2, progress=False)
    model.backend.encode_pixels = real
    resumed = ferroclip.embed_folder(model, folder, cache, batch_size=2, progress=False)
    # Sorted order: broken.jpg, p1.png | p2.jpg, p4.jpg | p5.png, sub/p0.jpg (dies) | ...
    # Two chunks were committed: three good images and the broken one.
    assert resumed.reused == 3 and resumed.embedded == 4 and len(resumed) == 7
    fresh = ferroclip.embed_folder(model, folder, tmp_path / "fresh", progress=False)
    np.testing.assert_allclose(resumed.embeddings, fresh.embeddings, atol=1e-5)
    assert not list(resumed.cache_dir.rglob("*.tmp"))


def test_cache_is_per_model(model, folder, tmp_path, checkpoints):  # noqa: F811
    cache = tmp_path / "cache"
    a = ferroclip.embed_folder(model, folder, cache, progress=False)
    other = ferroclip.load_model(checkpoints["siglip"], device="cpu")
    b = ferroclip.embed_folder(other, folder, cache, progress=False)
    assert b.embedded == 7 and b.cache_dir != a.cache_dir and b.embeddings.shape[1] == other.dim


def test_search_finds_the_query_image(model, folder, tmp_path):
    res = ferroclip.embed_folder(model, folder, tmp_path / "cache", progress=False)
    q = model.encode_images([str(folder / "sub" / "p3.png")], progress=False).embeddings[0]
    hits = res.search(q, k=3)
    assert hits[0][0] == "sub/p3.png" and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert len(hits) == 3 and hits[0][1] >= hits[1][1] >= hits[2][1]


def test_cli_embed_search_models_export(checkpoints, folder, tmp_path, capsys):  # noqa: F811
    ckpt = str(checkpoints["clip"])
    cache = str(tmp_path / "cache")
    common = ["--model", ckpt, "--device", "cpu", "--cache", cache, "--quiet"]
    out_npy = tmp_path / "emb.npy"
    assert cli_main(["embed", str(folder), *common, "--out", str(out_npy)]) == 0
    err = capsys.readouterr().err
    assert "7 images embedded (7 new, 0 from cache, 1 failed)" in err and "broken.jpg" in err
    # One row per image file found, the broken one zeros with ok=false (the preprocess rule).
    assert np.load(out_npy).shape[0] == 8
    assert sum(json.loads(out_npy.with_suffix(".paths.json").read_text())["ok"]) == 7
    assert cli_main(["embed", str(folder), *common, "--strict"]) == 1
    assert "(0 new, 7 from cache, 1 failed)" in capsys.readouterr().err

    assert cli_main(["search", str(folder), "a photo of a cat", "-k", "3", "--json", *common]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and all(Path(h["path"]).is_file() for h in hits)
    assert cli_main(["search", str(folder), "--image", str(folder / "p5.png"), "-k", "1", *common]) == 0
    assert capsys.readouterr().out.split()[2].endswith("p5.png")
    assert cli_main(["search", str(folder), *common]) == 2

    assert cli_main(["models", "--json"]) == 0
    assert any(m["name"] == "clip-vit-b-32" for m in json.loads(capsys.readouterr().out))

    onnx_dir = tmp_path / "onnx"
    assert cli_main(["export-onnx", ckpt, str(onnx_dir)]) == 0
    assert "vision max abs diff" in capsys.readouterr().err
    assert cli_main(["search", str(folder), "--image", str(folder / "p5.png"), "-k", "1", "--model", str(onnx_dir),
                     "--cache", cache, "--quiet"]) == 0
    assert capsys.readouterr().out.split()[2].endswith("p5.png")
    assert cli_main(["embed", str(tmp_path / "nowhere"), *common]) == 2
    shutil.rmtree(onnx_dir)


def test_cli_embed_then_probe_over_class_folders(checkpoints, tmp_path, monkeypatch, capsys):  # noqa: F811
    """The seed-000 workflow: embed an ImageFolder tree once, then a k-fold probe on it."""
    root = tmp_path / "classes"
    rng = np.random.default_rng(5)
    for label, tint in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (root / label).mkdir(parents=True)
        for i in range(6):
            arr = np.clip(smooth_rgb(rng, 36, 36).astype(np.int16) // 3 + np.array(tint, np.int16), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / label / f"{i}.png")
    monkeypatch.chdir(tmp_path)  # relative paths on the command line, absolute in the .npz
    common = ["--model", str(checkpoints["clip"]), "--device", "cpu", "--cache", str(tmp_path / "cache"), "--quiet"]
    assert cli_main(["embed", "classes", *common, "--out", "feats.npz"]) == 0
    with np.load(tmp_path / "feats.npz") as z:
        assert z["features"].shape == (12, 24) and all(Path(p).is_absolute() for p in z["paths"])
    capsys.readouterr()
    assert cli_main(["probe", "feats.npz", "--labels-dir", "classes", "--folds", "3", "--out", "probe", "--no-plots"]) == 0
    results = list((tmp_path / "probe").glob("*.json"))
    assert results, "probe wrote no JSON results"


def test_heic_is_embedded_and_unsupported_formats_are_failures(model, folder, tmp_path):
    """HEIF (the iPhone default) is decoded (libheif); a broken HEIC and a format the core
    does not read (AVIF) come back as failures with the reason, never silently left out."""
    pillow_heif = pytest.importorskip("pillow_heif")
    img = Image.fromarray(smooth_rgb(np.random.default_rng(5), 48, 40))
    pillow_heif.from_pillow(img).save(folder / "IMG_0001.HEIC", quality=90)
    pillow_heif.from_pillow(img).save(folder / "sub" / "live.heif", quality=90)
    (folder / "sub" / "cut.heic").write_bytes((folder / "IMG_0001.HEIC").read_bytes()[:200])
    (folder / "anim.avif").write_bytes(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64))
    res = ferroclip.embed_folder(model, folder, tmp_path / "cache", progress=False)
    assert len(res) == 9 and {"IMG_0001.HEIC", "sub/live.heif"} <= set(res.paths)
    assert set(res.errors) == {"broken.jpg", "sub/cut.heic", "anim.avif"}
    assert "HEIF" in res.errors["sub/cut.heic"]
    assert "unrecognised" in res.errors["anim.avif"] or "unsupported" in res.errors["anim.avif"]
    # the HEIC row is the embedding of its decoded pixels, not of some other file
    row = res.embeddings[res.paths.index("IMG_0001.HEIC")]
    pixels = model.encode_images([ferroclip.decode_image(str(folder / "IMG_0001.HEIC"))]).embeddings[0]
    np.testing.assert_allclose(row, pixels, atol=1e-5)
    assert not np.allclose(row, res.embeddings[res.paths.index("p1.png")], atol=1e-3)
    assert res.skipped == ["notes.txt"]
    again = ferroclip.embed_folder(model, folder, tmp_path / "cache", progress=False)
    assert set(again.errors) == set(res.errors) and again.skipped == ["notes.txt"] and again.reused == 9


def test_force_recompute_embeds_everything_again(model, folder, tmp_path, capsys, checkpoints):  # noqa: F811
    cache = tmp_path / "cache"
    first = ferroclip.embed_folder(model, folder, cache, progress=False)
    # Poison the cache: a forced run must not reuse it.
    parts = sorted((first.cache_dir / "parts").glob("part-*.npy"))
    np.save(parts[0], np.zeros_like(np.load(parts[0])))
    stale = ferroclip.embed_folder(model, folder, cache, progress=False)
    assert stale.reused == 7 and not stale.embeddings.any()
    forced = ferroclip.embed_folder(model, folder, cache, force_recompute=True, progress=False)
    assert forced.embedded == 7 and forced.reused == 0 and list(forced.errors) == ["broken.jpg"]
    np.testing.assert_allclose(forced.embeddings, first.embeddings, atol=1e-6)
    after = ferroclip.embed_folder(model, folder, cache, progress=False)
    assert after.reused == 7 and after.embedded == 0
    np.testing.assert_allclose(after.embeddings, first.embeddings, atol=1e-6)
    common = ["--model", str(checkpoints["clip"]), "--device", "cpu", "--cache", str(cache), "--quiet"]
    assert cli_main(["embed", str(folder), *common, "--force-recompute"]) == 0
    err = capsys.readouterr().err
    assert "(7 new, 0 from cache, 1 failed)" in err and "notes.txt" in err


def test_cli_embed_npy_with_a_broken_image_then_probe(checkpoints, tmp_path, monkeypatch, capsys):  # noqa: F811
    """`embed --out x.npy` keeps the broken image's row as zeros with ok=false (rows stay aligned
    with the files found); probe reads the mask and the paths in .paths.json to match labels."""
    root = tmp_path / "ages"
    rng = np.random.default_rng(8)
    for label in ("1", "2", "10"):
        (root / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(smooth_rgb(rng, 36, 36)).save(root / label / f"{i}.png")
    (root / "2" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    monkeypatch.chdir(tmp_path)
    common = ["--model", str(checkpoints["clip"]), "--device", "cpu", "--cache", str(tmp_path / "cache"), "--quiet"]
    assert cli_main(["embed", "ages", *common, "--out", "feats.npy"]) == 0
    feats = np.load(tmp_path / "feats.npy")
    side = json.loads((tmp_path / "feats.paths.json").read_text())
    assert feats.shape[0] == 13 and len(side["paths"]) == 13 and len(side["ok"]) == 13
    broken = [i for i, p in enumerate(side["paths"]) if p.endswith("broken.png")]
    assert len(broken) == 1 and side["ok"][broken[0]] is False and sum(side["ok"]) == 12
    assert not feats[broken[0]].any() and all(feats[i].any() for i in range(13) if i != broken[0])
    assert list(side["errors"]) == [side["paths"][broken[0]]]
    assert side["paths"] == sorted(side["paths"], key=Path)  # the folder scan's order
    capsys.readouterr()
    assert cli_main(["probe", "feats.npy", "--labels-dir", "ages", "--folds", "2", "--out", "probe", "--no-plots"]) == 0
    assert "1 rows of images that failed (ok=false in a feature set) left out" in capsys.readouterr().err
    saved = [json.loads(p.read_text()) for p in (tmp_path / "probe").glob("*.json")]
    assert any(d.get("classes") == ["1", "2", "10"] for d in saved if isinstance(d, dict))
    # Without the paths file the rows still line up with the folder's files by position.
    (tmp_path / "feats.paths.json").unlink()
    assert cli_main(["probe", "feats.npy", "--labels-dir", "ages", "--folds", "2", "--out", "p2", "--no-plots"]) == 0
    # An array from elsewhere with another row count: the mismatch points at .npz.
    np.save(tmp_path / "other.npy", feats[:12])
    assert cli_main(["probe", "other.npy", "--labels-dir", "ages", "--folds", "2", "--out", "p3", "--no-plots"]) == 2
    assert "ferroclip embed --out x.npz" in capsys.readouterr().err
