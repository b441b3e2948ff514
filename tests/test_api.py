"""The public API contract: shapes, dtypes, zero-copy buffers, inputs, configs, threads, fork."""

from __future__ import annotations

import io
import json
import os
import sys
import threading

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
