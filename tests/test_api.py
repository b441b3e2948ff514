"""The public API contract: shapes, dtypes, zero-copy buffers, inputs, configs, threads, fork."""

from __future__ import annotations

import io
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ferroclip
from ferroclip import ConfigError, PreprocessConfig, Preprocessor

from ._images import encode, make_image

RNG = np.random.default_rng(99)
IMG = make_image(RNG, 320, 240, "RGB")
JPEG = encode(IMG, "JPEG")


def test_result_contract():
    pre = Preprocessor(PreprocessConfig.clip(224))
    res = pre.preprocess([JPEG, JPEG])
    pv = res.pixel_values
    assert pv.shape == (2, 3, 224, 224) and pv.dtype == np.float32 and pv.flags.c_contiguous
    assert res.ok.dtype == np.bool_ and res.ok.all() and res.errors == []
    assert len(res) == 2
    np.testing.assert_array_equal(pv[0], pv[1])


def test_single_input_and_mixed_kinds(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(JPEG)
    pre = Preprocessor(PreprocessConfig.siglip(224))
    one = pre.preprocess(JPEG).pixel_values
    assert one.shape == (1, 3, 224, 224)
    arr = np.asarray(Image.open(io.BytesIO(JPEG)))
    mixed = pre.preprocess([str(path), path, bytearray(JPEG), arr, Image.open(io.BytesIO(JPEG))]).pixel_values
    for row in mixed:
        np.testing.assert_array_equal(row, one[0])


def test_out_buffer_is_filled_in_place():
    pre = Preprocessor(PreprocessConfig.clip(224))
    out = np.full((3, 3, 224, 224), 7.0, dtype=np.float32)
    res = pre.preprocess([JPEG, b"bad", JPEG], out=out)
    assert res.pixel_values is out or np.shares_memory(res.pixel_values, out)
    assert not out[1].any() and out[0].any()
    with pytest.raises(ferroclip.ShapeError):
        pre.preprocess([JPEG], out=np.zeros((2, 3, 224, 224), np.float32))
    with pytest.raises(TypeError):
        pre.preprocess([JPEG], out=np.zeros((1, 3, 224, 224), np.float64))


def test_float16_output():
    cfg = PreprocessConfig.clip(224)
    f32 = Preprocessor(cfg).preprocess([JPEG]).pixel_values
    f16 = Preprocessor(cfg, dtype="float16").preprocess([JPEG]).pixel_values
    assert f16.dtype == np.float16
    np.testing.assert_array_equal(f16, f32.astype(np.float16))


def test_threads_do_not_change_results():
    datas = [encode(make_image(RNG, 100 + 13 * i, 90 + 7 * i, "RGB"), "JPEG") for i in range(12)]
    cfg = PreprocessConfig.clip(224)
    one = Preprocessor(cfg, num_threads=1).preprocess(datas).pixel_values
    two = Preprocessor(cfg, num_threads=2).preprocess(datas).pixel_values
    np.testing.assert_array_equal(one, two)
    assert ferroclip._native.resolve_num_threads(3) == 3


def test_env_var_sets_default_threads(monkeypatch):
    monkeypatch.setenv("FERROCLIP_NUM_THREADS", "1")
    assert ferroclip._native.resolve_num_threads(None) == 1


def test_gil_is_released_during_batch():
    datas = [JPEG] * 64
    pre = Preprocessor(PreprocessConfig.clip(224), num_threads=1)
    ticks = 0
    done = threading.Event()

    def work():
        pre.preprocess(datas)
        done.set()

    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():
        ticks += 1  # only advances while the worker thread does not hold the GIL
        done.wait(0.001)
    t.join()
    assert ticks > 5


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_safe_after_fork():
    pre = Preprocessor(PreprocessConfig.clip(224), num_threads=2)
    parent = pre.preprocess([JPEG] * 4).pixel_values  # builds the thread pool before forking
    pid = os.fork()
    if pid == 0:  # child: must not deadlock on the parent's (dead) pool threads
        try:
            child = pre.preprocess([JPEG] * 4).pixel_values
            os._exit(0 if np.array_equal(child, parent) else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


def test_presets():
    assert PreprocessConfig.clip(336).output_size == (336, 336)
    assert PreprocessConfig.siglip(384).image_mean == (0.5, 0.5, 0.5)
    mc = PreprocessConfig.mobileclip()
    assert mc.size == (256, 256) and mc.resize_mode == "squash" and mc.image_mean == ferroclip.CLIP_MEAN


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(size=0),
        dict(size=(224, 200), resize_mode="shortest", crop_size=224),
        dict(size=224, resize_mode="bogus"),
        dict(size=224, resize_mode="squash", resample="nearest"),
        dict(size=224, resize_mode="squash", image_std=(1, 0, 1)),
        dict(size=224, resize_mode="squash", image_mean=None),
        dict(size=224, resize_mode="squash", fill_color=300),
        dict(size=224, resize_mode="shortest"),
    ],
)
def test_invalid_configs_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        PreprocessConfig(**kwargs)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(ConfigError, match="no preprocessor_config.json"):
        PreprocessConfig.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "Siglip2ImageProcessor"}))
    with pytest.raises(ConfigError, match="NaFlex"):
        PreprocessConfig.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "CLIPImageProcessor", "resample": 0}))
    with pytest.raises(ConfigError, match="NEAREST"):
        PreprocessConfig.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        PreprocessConfig.from_pretrained(tmp_path)


def test_from_pretrained_old_style_int_sizes(tmp_path):
    cfg_dict = {
        "image_processor_type": "CLIPImageProcessor",
        "size": 224,
        "crop_size": 224,
        "do_center_crop": True,
        "resample": 3,
        "image_mean": list(ferroclip.CLIP_MEAN),
        "image_std": list(ferroclip.CLIP_STD),
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg_dict))
    assert PreprocessConfig.from_pretrained(tmp_path) == PreprocessConfig.clip(224)


@pytest.mark.parametrize(
    ("value", "rule"),
    [("13", "13"), (13, "13"), ("13.0.0", "13"), ("13.1.0.dev0", "13"), ("12", "12"), (12, "12"), ("12.3.0", "12"),
     ("12.2", "12"), ("12.1.1", "12.1"), ("12.1", "12.1"), ("12.0.0", "12.1"), (11, "12.1"), ("10.4.0", "12.1")],
)
def test_pil_version_pins_resolve_to_their_rule(value, rule):
    cfg = PreprocessConfig.clip(224, pil_version=value)
    assert cfg.pil_version == rule and cfg.pil_version_pinned
    assert f"pil_version={rule!r}" in repr(cfg)
    assert cfg == PreprocessConfig(**cfg.to_dict())


@pytest.mark.parametrize("value", ["14", 14, "9.5.0", "twelve", "", True, 12.5, "v13"])
def test_bad_pil_versions_raise_config_error(value):
    with pytest.raises(ConfigError, match="pil_version"):
        PreprocessConfig.siglip(224, pil_version=value)


@pytest.mark.reference
def test_default_pil_version_follows_the_installed_pillow(monkeypatch):
    import PIL

    from ferroclip import config as config_mod

    cfg = PreprocessConfig.clip()
    major, minor = (int(v) for v in PIL.__version__.split(".")[:2])
    expected = "13" if major >= 13 else "12" if (major, minor) >= (12, 2) else "12.1"
    assert cfg.pil_version == expected and not cfg.pil_version_pinned
    if (major, minor) >= (12, 2):
        # Both CI worlds (Pillow 12.3 pinned, the newest): the installed major itself.
        assert cfg.pil_version == str(major)
    assert f"pil_version={cfg.pil_version!r}" in repr(cfg)
    # Without Pillow (or with one newer than known) the newest rule is used.
    monkeypatch.setattr(config_mod, "installed_pil_version", lambda: None)
    assert PreprocessConfig.clip().pil_version == config_mod.NEWEST_PIL_VERSION
    monkeypatch.setattr(config_mod, "installed_pil_version", lambda: "14.0.0")
    assert PreprocessConfig.clip().pil_version == config_mod.NEWEST_PIL_VERSION
    monkeypatch.setattr(config_mod, "installed_pil_version", lambda: "12.1.0")
    assert PreprocessConfig.clip().pil_version == "12.1"


CLIP_IP = {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 160}, "crop_size": {"height": 128, "width": 144}}
SIGLIP_IP = {"image_processor_type": "SiglipImageProcessor", "size": {"height": 96, "width": 112}, "resample": 2}


def test_from_pretrained_reads_both_checkpoint_layouts(tmp_path):
    """transformers >= 5.24 processors save ``processor_config.json`` with the image
    processor nested; image processors saved alone write ``preprocessor_config.json``.
    Where both exist the nested one wins, as in transformers."""
    flat, nested, both, legacy = (tmp_path / n for n in ("flat", "nested", "both", "legacy"))
    for d in (flat, nested, both, legacy):
        d.mkdir()
    (flat / "preprocessor_config.json").write_text(json.dumps(CLIP_IP))
    (nested / "processor_config.json").write_text(json.dumps({"image_processor": CLIP_IP, "processor_class": "CLIPProcessor"}))
    (both / "processor_config.json").write_text(json.dumps({"image_processor": SIGLIP_IP, "processor_class": "SiglipProcessor"}))
    (both / "preprocessor_config.json").write_text(json.dumps(CLIP_IP))
    # Older transformers wrote a processor_config.json for the processor class alone.
    (legacy / "processor_config.json").write_text(json.dumps({"processor_class": "CLIPProcessor"}))
    (legacy / "preprocessor_config.json").write_text(json.dumps(CLIP_IP))
    want = PreprocessConfig.from_hf_dict(CLIP_IP)
    assert want.size == (160, 160) and want.crop_size == (128, 144)
    assert PreprocessConfig.from_pretrained(flat) == want
    assert PreprocessConfig.from_pretrained(nested) == want
    assert PreprocessConfig.from_pretrained(nested / "processor_config.json") == want
    assert PreprocessConfig.from_pretrained(legacy) == want
    assert PreprocessConfig.from_pretrained(both) == PreprocessConfig.from_hf_dict(SIGLIP_IP)
    assert PreprocessConfig.from_pretrained(nested, pil_version="12").pil_version == "12"
    (legacy / "preprocessor_config.json").unlink()
    with pytest.raises(ConfigError, match="holds no \"image_processor\""):
        PreprocessConfig.from_pretrained(legacy)
    with pytest.raises(ConfigError, match="without an image processor"):
        PreprocessConfig.from_hf_dict({"processor_class": "CLIPProcessor"})


@pytest.mark.parametrize("present", [("processor_config.json",), ("preprocessor_config.json",), ("processor_config.json", "preprocessor_config.json")])
def test_hub_fetch_tries_both_file_names(tmp_path, monkeypatch, present):
    hub = pytest.importorskip("huggingface_hub")
    files = {
        "processor_config.json": {"image_processor": CLIP_IP, "processor_class": "CLIPProcessor"},
        "preprocessor_config.json": CLIP_IP,
    }
    asked = []

    def fake_download(repo_id, filename, **kw):
        asked.append(filename)
        if filename not in present:
            raise hub.errors.EntryNotFoundError(f"{filename} not in {repo_id}")
        path = tmp_path / filename
        path.write_text(json.dumps(files[filename]))
        return str(path)

    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    assert PreprocessConfig.from_pretrained("someone/some-clip") == PreprocessConfig.from_hf_dict(CLIP_IP)
    assert asked == ["processor_config.json", "preprocessor_config.json"]


def test_hub_fetch_without_either_file_is_a_config_error(monkeypatch):
    hub = pytest.importorskip("huggingface_hub")

    def fake_download(repo_id, filename, **kw):
        raise hub.errors.EntryNotFoundError(f"{filename} not in {repo_id}")

    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    with pytest.raises(ConfigError, match="processor_config.json or preprocessor_config.json"):
        PreprocessConfig.from_pretrained("someone/nothing-here")


def test_cli_preprocess(tmp_path, capsys):
    from ferroclip.cli import main

    d = tmp_path / "imgs"
    d.mkdir()
    (d / "a.jpg").write_bytes(JPEG)
    (d / "b.png").write_bytes(b"broken")
    out = tmp_path / "batch.npy"
    assert main(["preprocess", str(d), "--out", str(out), "--config", "siglip-224", "--quiet"]) == 0
    arr = np.load(out)
    assert arr.shape == (2, 3, 224, 224)
    assert "1 failed" in capsys.readouterr().err
    assert main(["preprocess", str(d), "--out", str(out), "--strict", "--quiet"]) == 1


def test_cli_preprocess_rows_match_embed_rule(tmp_path, capsys):
    """`preprocess --out` follows `embed --out`'s rule: one row per input, a failed one zeros with
    ok=false, paths and reasons beside it (.paths.json for .npy; keys of the .npz)."""
    from ferroclip.cli import main

    d = tmp_path / "imgs"
    d.mkdir()
    (d / "a.jpg").write_bytes(JPEG)
    (d / "b.png").write_bytes(b"broken")
    (d / "c.jpg").write_bytes(JPEG)
    out = tmp_path / "batch.npy"
    assert main(["preprocess", str(d), "--out", str(out), "--quiet"]) == 0
    arr = np.load(out)
    side = json.loads((tmp_path / "batch.paths.json").read_text())
    assert [Path(p).name for p in side["paths"]] == ["a.jpg", "b.png", "c.jpg"]
    assert side["ok"] == [True, False, True]
    assert list(side["errors"]) == [str(d / "b.png")] and side["errors"][str(d / "b.png")]
    assert not arr[1].any() and arr[0].any() and np.array_equal(arr[0], arr[2])
    npz = tmp_path / "batch.npz"
    assert main(["preprocess", str(d), "--out", str(npz), "--quiet"]) == 0
    with np.load(npz, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["pixels"], arr)
        assert z["ok"].tolist() == [True, False, True]
        assert [bool(e) for e in z["errors"]] == [False, True, False]
        assert list(z["paths"]) == side["paths"]
    assert "1 failed (zeros, ok=false)" in capsys.readouterr().err
