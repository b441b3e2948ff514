"""Seed 004's ClipEmbedder contract on ferroclip: its preprocessing, `embed`, its exceptions.

The seed's pipeline is written out here as the seed documents it and compared pixel for
pixel; the ONNX model is a tiny image encoder exported in the MobileCLIP layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ferroclip
from ferroclip.errors import ImageDecodeError, ImageNotFoundError, ModelError
from ferroclip.models import onnx_backend

from .test_models import checkpoints, images  # noqa: F401 (fixtures)
from .test_onnx import _bare_image_encoder

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def _seed_preprocess(path: Path, size: int) -> np.ndarray:
    """Seed 004, section "1. Preprocessing", verbatim."""
    image = Image.open(path)
    if image.mode != "RGB":
        image = image.convert("RGB")
    image = image.resize((size, size), Image.Resampling.BICUBIC)
    img_array = np.asarray(image, dtype=np.float32) / 255.0
    img_array = (img_array - CLIP_MEAN) / CLIP_STD
    return np.transpose(img_array, (2, 0, 1))


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> list[Path]:
    """The modes the seed lists: RGBA (half transparent), grayscale L, LA, a palette with transparency."""
    root = tmp_path_factory.mktemp("modes")
    rng = np.random.default_rng(11)
    out = []
    rgba = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)
    rgba[..., 3] = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (61, 29), dtype=np.uint8), "L").save(root / "gray.png")
    Image.fromarray(rng.integers(0, 256, (20, 70, 2), dtype=np.uint8), "LA").save(root / "la.png")
    pal = Image.fromarray(rng.integers(0, 256, (45, 45, 3), dtype=np.uint8)).convert("P")
    pal.save(root / "pal.png", transparency=3)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "photo.jpg", quality=90)
    for name in ("rgba.png", "gray.png", "la.png", "pal.png", "photo.jpg"):
        out.append(root / name)
    return out


@pytest.mark.reference
@pytest.mark.parametrize("size", [32, 256])
def test_mobileclip_preset_is_the_seed_pipeline_exactly(odd_images, size):
    cfg = ferroclip.PreprocessConfig.mobileclip(size)
    assert cfg.alpha == "drop" and cfg.rescale == "div255"
    got = ferroclip.Preprocessor(cfg).preprocess([str(p) for p in odd_images], on_error="raise").pixel_values
    for i, p in enumerate(odd_images):
        np.testing.assert_array_equal(got[i], _seed_preprocess(p, size), err_msg=p.name)


@pytest.fixture(scope="module")
def mobile_folder(checkpoints, tmp_path_factory):  # noqa: F811
    return _bare_image_encoder(checkpoints, tmp_path_factory.mktemp("mob") / "mobile", fixed_batch=True)


def _load_like_the_preset(folder: Path, **options) -> ferroclip.EmbeddingModel:
    """What `load_model("mobileclip-s2")` does once the hub snapshot is local."""
    return onnx_backend.load_onnx_model(
        str(folder), name="mobileclip-s2", device="cpu", dtype=None, preprocess=ferroclip.PreprocessConfig.mobileclip(32),
        revision=None, local_files_only=True, num_threads=None, fast=False, family_hint="mobileclip",
        image_options=options,
    )


def test_mobileclip_model_drops_alpha_and_options_override(mobile_folder):
    assert _load_like_the_preset(mobile_folder).preprocessor.alpha == "drop"
    assert _load_like_the_preset(mobile_folder, alpha="white").preprocessor.alpha == "white"
    assert _load_like_the_preset(mobile_folder, exif_transpose=False).preprocessor.exif_transpose is False
    # A third-party folder with a non-MobileCLIP config keeps the config's own choice.
    model = ferroclip.load_model(mobile_folder, preprocess=ferroclip.PreprocessConfig.siglip(32))
    assert model.preprocessor.alpha == "white"


def test_embed_one_image_and_its_exceptions(mobile_folder, odd_images, tmp_path):
    model = _load_like_the_preset(mobile_folder)
    vec = model.embed(odd_images[0])
    assert vec.shape == (model.dim,) and vec.dtype == np.float32
    assert float(np.linalg.norm(vec)) == pytest.approx(1.0, abs=1e-6)
    raw = model.embed(str(odd_images[0]), normalize=False)
    np.testing.assert_allclose(raw / np.linalg.norm(raw), vec, atol=1e-6)
    batch = model.encode_images([str(odd_images[0])], progress=False).embeddings[0]
    np.testing.assert_array_equal(vec, batch)
    # The seed's `except FileNotFoundError` / `except PIL.UnidentifiedImageError` (an OSError).
    with pytest.raises(FileNotFoundError) as info:
        model.embed(tmp_path / "missing.jpg")
    assert isinstance(info.value, ImageNotFoundError) and "missing.jpg" in str(info.value)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"definitely not an image, only text")
    with pytest.raises(OSError) as info:
        model.embed(corrupt)
    assert isinstance(info.value, ImageDecodeError) and isinstance(info.value, ValueError)
    assert info.value.path == str(corrupt)
    with pytest.raises(Image.UnidentifiedImageError):  # the same file, as PIL reports it
        Image.open(corrupt)


def test_onnx_runtime_failures_are_model_errors_naming_graph_and_shape(mobile_folder):
    model = _load_like_the_preset(mobile_folder)
    with pytest.raises(ModelError) as info:
        model.backend.encode_pixels(np.zeros((1, 3, 16, 16), np.float32))  # the graph takes 32x32
    msg = str(info.value)
    assert "image_encoder.onnx" in msg and "(1, 3, 16, 16)" in msg and "ONNX Runtime failed" in msg
    assert isinstance(info.value, RuntimeError)  # the seed's `except RuntimeError`
