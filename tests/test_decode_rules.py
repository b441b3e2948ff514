"""Decode rules where PIL's behaviour is wider than "decode the pixels": recoverable JPEG
damage decoded by the core with the libjpeg warning attached (``strict`` refuses it), the
16-bit grayscale choice (``sixteen_bit``), and orientation PIL reads from places other than
a plain EXIF chunk (``Exif\\0\\0``-prefixed WebP EXIF, PNG XMP and ImageMagick text, JPEG XMP).
Each is compared with the reference (PIL + ``CLIPImageProcessorPil`` after
``ImageOps.exif_transpose``) on generated files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps, PngImagePlugin
from transformers import CLIPImageProcessorPil

from ferroclip import ImageDecodeError, PreprocessConfig, Preprocessor, TrainAugment, _native, decode_image
from ferroclip import config as config_mod

pytestmark = pytest.mark.reference

CFG = PreprocessConfig.clip(32)
PROC = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=32)
RNG = np.random.default_rng(7)


def _reference(data: bytes) -> np.ndarray:
    return PROC(images=ImageOps.exif_transpose(Image.open(io.BytesIO(data))), return_tensors="np")["pixel_values"][0]


def _photo(w: int = 96, h: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: compresses like a photo, orientation-asymmetric."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (w + h)], axis=-1)
    return np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


def _encode(arr: np.ndarray, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **save)
    return buf.getvalue()


def _cut_entropy(data: bytes) -> bytes:
    """Delete a stretch of the entropy-coded data: libjpeg warns ("Corrupt JPEG data:
    premature end of data segment" when it meets the next marker early), decodes the
    rest, and PIL gives that image."""
    out = bytearray(data)
    sos = out.find(b"\xff\xda")
    start = sos + 2 + int.from_bytes(out[sos + 2 : sos + 4], "big")
    del out[start + (len(out) - start) // 3 : start + (len(out) - start) // 2]
    return bytes(out)


def test_corrupt_jpeg_decodes_in_the_core_like_pil_with_its_warning():
    data = _cut_entropy(_encode(_photo(), "JPEG", quality=90))
    ref = _reference(data)  # PIL decodes it (libjpeg only warns)
    for fallback in (True, False):  # the core decodes it itself: no Pillow needed
        res = Preprocessor(CFG, pil_fallback=fallback).preprocess([data, _encode(_photo(seed=1), "PNG")])
        assert res.ok.tolist() == [True, True] and res.pil_fallback == []
        assert list(res.warnings) == [0] and any("Corrupt JPEG data" in w for w in res.warnings[0])
        assert np.abs(res.pixel_values[0] - ref).max() <= 1e-6
    strict = Preprocessor(CFG, strict=True).preprocess([data])
    assert not strict.ok[0] and strict.pil_fallback == [] and strict.warnings == {}
    assert isinstance(strict.errors[0], ImageDecodeError) and "Corrupt JPEG data" in str(strict.errors[0])
    # Training reads the same way: the warning comes with the sample, strict refuses it.
    aug = TrainAugment(CFG, seed=3).augment([data], epoch=0, indices=[0])
    assert aug.ok[0] and any("Corrupt JPEG data" in w for w in aug.warnings[0])
    assert not TrainAugment(CFG, seed=3, strict=True).augment([data], epoch=0, indices=[0]).ok[0]


def test_truncated_jpeg_stays_an_error_in_the_core():
    """PIL raises 'image file is truncated' where libjpeg's in-memory source would pad the
    rest with grey and only warn: without the Pillow fallback the core refuses it too."""
    data = _encode(_photo(), "JPEG")
    data = data[: len(data) * 2 // 3]
    with pytest.raises(OSError):
        Image.open(io.BytesIO(data)).load()
    res = Preprocessor(CFG, pil_fallback=False).preprocess([data])
    assert not res.ok[0] and "Premature end of JPEG file" in str(res.errors[0])


@settings(max_examples=25, deadline=None)
@given(
    w=st.integers(1, 70),
    h=st.integers(1, 70),
    top=st.integers(0, 65535),
    fmt=st.sampled_from(["PNG", "TIFF"]),
    seed=st.integers(0, 2**16),
)
def test_sixteen_bit_gray_scale_or_clip(w, h, top, fmt, seed):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, top + 1, (h, w), dtype=np.uint32).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)  # mode I;16
    data = buf.getvalue()
    clip = decode_image(data, sixteen_bit="clip")
    scale = decode_image(data)
    assert np.array_equal(clip[..., 0], np.minimum(arr, 255).astype(np.uint8))
    assert np.array_equal(scale[..., 0], (arr >> 8).astype(np.uint8))
    # "clip" is PIL's own I;16 -> RGB, end to end through the processor.
    res = Preprocessor(CFG, sixteen_bit="clip").preprocess([data], on_error="raise")
    assert np.abs(res.pixel_values[0] - _reference(data)).max() <= 1e-6


def test_sixteen_bit_is_checked_and_reaches_the_pillow_fallback():
    with pytest.raises(ValueError, match="sixteen_bit"):
        Preprocessor(CFG, sixteen_bit="round")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sixteen_bit"):
        TrainAugment(CFG, sixteen_bit="high")  # type: ignore[arg-type]
    # A 16-bit gray BigTIFF: the core refuses BigTIFF, Pillow decodes it under the same rule.
    arr = (np.arange(40 * 30, dtype=np.uint32).reshape(30, 40) * 50).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "TIFF", big_tiff=True)
    data = buf.getvalue()
    res = Preprocessor(CFG, sixteen_bit="clip").preprocess([data], on_error="raise")
    assert res.pil_fallback == [0]
    assert np.abs(res.pixel_values[0] - _reference(data)).max() <= 1e-6


def _tiff_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _xmp(orientation: int, attr: bool = True) -> bytes:
    body = f'tiff:Orientation="{orientation}"' if attr else f"<tiff:Orientation>{orientation}</tiff:Orientation>"
    return f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description {body}/></x:xmpmeta>'.encode()


def _png_with(chunks: list[tuple[bytes, bytes]], arr: np.ndarray) -> bytes:
    """A PNG of `arr` with raw extra chunks before IDAT (CRCs computed)."""
    plain = _encode(arr, "PNG")
    idat = plain.find(b"IDAT") - 4
    extra = b"".join(
        len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big") for kind, body in chunks
    )
    return plain[:idat] + extra + plain[idat:]


def _raw_profile(exif: bytes) -> bytes:
    hexed = exif.hex()
    lines = "\n".join(hexed[i : i + 72] for i in range(0, len(hexed), 72))
    return b"Raw profile type exif\0" + f"\nexif\n{len(exif):8d}\n{lines}\n".encode()


ARR = _photo(45, 28, seed=5)


def _cases(o: int) -> dict[str, bytes]:
    webp = io.BytesIO()
    Image.fromarray(ARR).save(webp, "WEBP", lossless=True, exif=b"Exif\0\0" + _tiff_exif(o))
    webp_xmp = io.BytesIO()
    Image.fromarray(ARR).save(webp_xmp, "WEBP", lossless=True, xmp=_xmp(o))
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", _xmp(o, attr=False).decode(), zip=True)
    png_xmp = io.BytesIO()
    Image.fromarray(ARR).save(png_xmp, "PNG", pnginfo=info)
    return {
        "webp-exif-prefix": webp.getvalue(),
        "webp-xmp": webp_xmp.getvalue(),
        "png-itxt-xmp-compressed": png_xmp.getvalue(),
        "png-raw-profile": _png_with([(b"tEXt", _raw_profile(_tiff_exif(o)))], ARR),
        "png-exif-beats-xmp": _png_with([(b"eXIf", _tiff_exif(1)), (b"tEXt", b"XML:com.adobe.xmp\0" + _xmp(o))], ARR),
        "jpeg-xmp": _encode(ARR, "JPEG", quality=95, xmp=_xmp(o)),
    }


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("case", sorted(_cases(1)))
def test_orientation_from_metadata_as_pil_reads_it(case, orientation):
    data = _cases(orientation)[case]
    ref = _reference(data)
    res = Preprocessor(CFG, pil_fallback=False).preprocess([data], on_error="raise")
    assert np.abs(res.pixel_values[0] - ref).max() <= 1e-6, case
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    if case != "jpeg-xmp":  # lossless: the decoded pixels themselves match
        assert np.array_equal(decode_image(data), want)
    assert decode_image(data).shape == want.shape
    assert np.array_equal(decode_image(data, exif_transpose=False).shape, np.asarray(Image.open(io.BytesIO(data))).shape)


def _rle4_odd_run_bmp() -> bytes:
    """A 3x2 RLE4 BMP on which Pillow 12 and 13 differ (decode/bmp.rs): the bottom row is an
    absolute run of 3 pixels (indices 1, 2, 3) in 2 bytes, then an end of line; the top row
    an encoded run of 3. Pillow 12 reads ``3 // 2`` bytes of the odd run, so the end of line
    leaves the row's last pixel at index 0; Pillow 13 reads both."""
    palette = b"".join(bytes([0, 0, i * 10 + 1, 0]) for i in range(6))  # BGRX: red 1, 11, ..., 51
    stream = bytes([0, 3, 0x12, 0x30, 0, 0, 3, 0x45])
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, 3, 2, 1, 4, 2, len(stream), 0, 0, 6, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(stream), 0, 0, offset) + info + palette + stream


PILLOW12_BOTTOM, PILLOW13_BOTTOM, TOP = [11, 21, 1], [11, 21, 31], [41, 51, 41]


@pytest.mark.parametrize(
    ("pil_version", "bottom"),
    [("12", PILLOW12_BOTTOM), ("12.3.0", PILLOW12_BOTTOM), (12, PILLOW12_BOTTOM), ("13", PILLOW13_BOTTOM)],
    ids=["12", "12.3.0", "int-12", "13"],
)
def test_decode_image_reads_bmp_as_the_pil_version_given(pil_version, bottom):
    got = decode_image(_rle4_odd_run_bmp(), pil_version=pil_version)
    assert got[:, :, 0].tolist() == [TOP, bottom]


def test_decode_image_follows_the_installed_pillow_as_configs_do(monkeypatch):
    data = _rle4_odd_run_bmp()
    for installed, bottom in [("12.3.0", PILLOW12_BOTTOM), ("13.0.0", PILLOW13_BOTTOM), (None, PILLOW13_BOTTOM)]:
        monkeypatch.setattr(config_mod, "installed_pil_version", lambda v=installed: v)
        assert decode_image(data)[:, :, 0].tolist() == [TOP, bottom], installed
    with pytest.raises(ValueError, match="pil_version"):
        decode_image(data, pil_version="14")
    # The native hook keeps its fixed default and takes only the three rule names.
    assert _native.decode_image(data)[:, :, 0].tolist() == [TOP, PILLOW13_BOTTOM]
    with pytest.raises(ValueError, match="pil_version"):
        _native.decode_image(data, pil_version="12.3.0")


def test_decode_image_bmp_equals_the_installed_pil():
    data = _rle4_odd_run_bmp()
    want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(decode_image(data), want)
    res = Preprocessor(CFG, pil_fallback=False).preprocess([data], on_error="raise")
    assert np.abs(res.pixel_values[0] - _reference(data)).max() <= 1e-6
