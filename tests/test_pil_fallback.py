"""The Pillow fallback (``Preprocessor(pil_fallback=...)``): file variants the Rust decoders
refuse are decoded by Pillow, preprocessed in Rust, equal the reference and are reported;
without Pillow (or with the fallback off) they keep their typed error."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps
from transformers import CLIPImageProcessorPil

from ferroclip import ImageTooLargeError, PreprocessConfig, Preprocessor, UnsupportedFormatError, _pil_fallback

CFG = PreprocessConfig.clip(32)
PROC = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=32)


def _palette_tiff(seed: int = 0, size: tuple[int, int] = (45, 31), **save) -> bytes:
    """A palette TIFF (the tiff crate refuses RGBPalette photometric), with transparency."""
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).quantize(16)
    buf = io.BytesIO()
    im.save(buf, "TIFF", **save)
    return buf.getvalue()


def _big_tiff(seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (20, 70, 3), dtype=np.uint8)).save(buf, "TIFF", big_tiff=True)
    return buf.getvalue()


def _reference(data: bytes) -> np.ndarray:
    return PROC(images=ImageOps.exif_transpose(Image.open(io.BytesIO(data))), return_tensors="np")["pixel_values"][0]


def _jpeg(seed: int = 2) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (33, 50, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_refused_variants_decode_with_pillow_equal_reference_and_are_reported(tmp_path):
    path = tmp_path / "palette.tif"
    path.write_bytes(_palette_tiff())
    items = [_jpeg(), str(path), _big_tiff(), b"not an image at all"]
    res = Preprocessor(CFG, num_threads=2).preprocess(items)
    assert res.ok.tolist() == [True, True, True, False]
    assert res.pil_fallback == [1, 2]
    assert set(res.warnings) == {1, 2}
    assert res.warnings[1][0].startswith("decoded by Pillow: ") and "Tiff" in res.warnings[1][0]
    for i in (1, 2):
        data = path.read_bytes() if i == 1 else items[i]
        assert np.abs(res.pixel_values[i] - _reference(data)).max() <= 1e-6
    # Pillow refuses the junk too: the core's typed error stands, in input order
    assert len(res.errors) == 1 and res.errors[0].index == 3
    # the fallback rows are what a batch of the same pixels as arrays gives (same Rust path)
    arr = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    solo = Preprocessor(CFG, num_threads=1).preprocess([np.ascontiguousarray(arr)])
    assert np.array_equal(solo.pixel_values[0], res.pixel_values[1])


@pytest.mark.parametrize("alpha", ["white", "drop"])
def test_fallback_follows_the_alpha_rule(alpha):
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 255, (29, 41, 4), dtype=np.uint8)
    rgba[..., 3] = rng.choice([0, 128, 255], (29, 41))
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "TIFF", big_tiff=True)
    res = Preprocessor(CFG, alpha=alpha).preprocess([buf.getvalue()], on_error="raise")
    assert res.pil_fallback == [0]
    img = Image.open(io.BytesIO(buf.getvalue()))
    want = _pil_fallback._to_rgb(img, alpha)
    if alpha == "white":  # HF's convert_to_rgb composites onto white, as the reference does
        assert np.abs(res.pixel_values[0] - _reference(buf.getvalue())).max() <= 1e-6
    ref = PROC(images=want, return_tensors="np")["pixel_values"][0]
    assert np.abs(res.pixel_values[0] - ref).max() <= 1e-6
    other = _pil_fallback._to_rgb(img, "drop" if alpha == "white" else "white")
    assert not np.array_equal(np.asarray(want), np.asarray(other))


def test_fallback_off_or_without_pillow_keeps_the_typed_error(tmp_path, monkeypatch):
    path = tmp_path / "palette.tif"
    path.write_bytes(_palette_tiff())
    off = Preprocessor(CFG, pil_fallback=False).preprocess([str(path)])
    assert not off.ok[0] and off.pil_fallback == [] and off.warnings == {}
    assert isinstance(off.errors[0], UnsupportedFormatError) and off.errors[0].path == str(path)
    monkeypatch.setattr(_pil_fallback, "HAVE_PIL", False)
    no_pil = Preprocessor(CFG)
    assert no_pil.pil_fallback is False
    res = no_pil.preprocess([str(path)])
    assert isinstance(res.errors[0], UnsupportedFormatError) and str(path) in str(res.errors[0])
    with pytest.raises(UnsupportedFormatError, match="palette.tif"):
        no_pil.preprocess([str(path)], on_error="raise")
    with pytest.raises(ValueError, match="needs Pillow"):
        Preprocessor(CFG, pil_fallback=True)


def test_fallback_keeps_the_pixel_limit(tmp_path):
    path = tmp_path / "big.tif"
    path.write_bytes(_big_tiff())
    res = Preprocessor(CFG, max_pixels=100).preprocess([str(path), _jpeg()])
    assert res.ok.tolist() == [False, False] and res.pil_fallback == []
    assert all(isinstance(e, ImageTooLargeError) for e in res.errors)
    assert res.errors[0].path == str(path) and "70x20" in str(res.errors[0]) and str(path) in str(res.errors[0])


def test_damaged_jpeg_decodes_like_pil_with_a_warning_unless_strict():
    data = bytearray(_jpeg(4))
    data = bytes(data[: len(data) * 2 // 3])  # truncated: libjpeg warns, PIL fills with grey
    opened = Image.open(io.BytesIO(data))
    with pytest.raises(OSError):  # plain PIL refuses it without LOAD_TRUNCATED_IMAGES
        opened.load()
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        res = Preprocessor(CFG).preprocess([data])
        ref = _reference(data)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    assert res.pil_fallback == [0] and "Premature end of JPEG file" in res.warnings[0][0]
    assert np.abs(res.pixel_values[0] - ref).max() <= 1e-6
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        strict = Preprocessor(CFG, strict=True).preprocess([data])
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    assert not strict.ok[0] and strict.pil_fallback == [] and "Premature end" in str(strict.errors[0])


def test_train_augment_falls_back_to_pillow_with_the_crop_of_the_same_sample(tmp_path):
    # Training data holds such files too: without the fallback they would drop out of every
    # batch. The Pillow-decoded file must get exactly the augmentation the same pixels get
    # when the Rust core decodes them (as a PNG), into the caller's buffer.
    from ferroclip import TrainAugment

    path = tmp_path / "palette.tif"
    path.write_bytes(_palette_tiff(seed=4, size=(64, 48)))
    same_png = io.BytesIO()
    Image.open(path).convert("RGB").save(same_png, "PNG")
    aug = TrainAugment(CFG, seed=7, num_threads=2, color_jitter=(0.3, 0.3, 0.3, 0.05))
    items = [_jpeg(), str(path), b"not an image at all"]
    out = np.full((3, 3, 32, 32), np.nan, dtype=np.float32)
    res = aug.augment(items, epoch=3, indices=[10, 11, 12], out=out)
    assert res.ok.tolist() == [True, True, False] and res.pil_fallback == [1]
    assert res.warnings[1][0].startswith("decoded by Pillow: ")
    assert len(res.errors) == 1 and res.errors[0].index == 2
    core = aug.augment([same_png.getvalue()], epoch=3, indices=[11])
    assert core.pil_fallback == [] and np.array_equal(out[1], core.pixel_values[0])
    other = aug.augment([same_png.getvalue()], epoch=4, indices=[11])
    assert not np.array_equal(out[1], other.pixel_values[0])  # the sample's own draw, not any
    off = TrainAugment(CFG, seed=7, pil_fallback=False).augment([str(path)], epoch=3, indices=[11])
    assert not off.ok[0] and off.pil_fallback == [] and off.errors[0].path == str(path)
