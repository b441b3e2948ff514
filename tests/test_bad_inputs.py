"""Hostile and broken inputs: each fails fast with its own typed error naming the file,
and the good images in the same batch come out intact."""

from __future__ import annotations

import os
import struct
import time
import zlib

import numpy as np
import pytest

import ferroclip
from ferroclip import PreprocessConfig, Preprocessor

from ._images import encode, make_image

RNG = np.random.default_rng(1234)
GOOD_JPEG = encode(make_image(RNG, 160, 120, "RGB"), "JPEG")
GOOD_PNG = encode(make_image(RNG, 160, 120, "RGB"), "PNG")
PROGRESSIVE = encode(make_image(RNG, 160, 120, "RGB"), "JPEG", progressive=True)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_bomb(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_header_bomb(width: int, height: int) -> bytes:
    data = bytearray(GOOD_JPEG)
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def bmp_header_bomb(width: int, height: int, bpp: int = 24) -> bytes:
    """A BITMAPINFOHEADER claiming the size, with no pixel data (image-rs's BMP decoder
    refuses sides over 65535 itself, as a format error: it must still be too-large)."""
    palette = 4 << bpp if bpp <= 8 else 0
    head = struct.pack("<2sIHHI", b"BM", 0, 0, 0, 54 + palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bpp, 0, 0, 0, 0, 0, 0)
    return head + info + b"\0" * (palette + 64)


def corrupt_entropy(data: bytes) -> bytes:
    out = bytearray(data)
    sos = out.find(b"\xff\xda")
    start = sos + 2 + struct.unpack(">H", out[sos + 2 : sos + 4])[0]
    for i in range(start + 20, len(out) - 10, 7):
        if out[i] != 0xFF and out[i - 1] != 0xFF:
            out[i] = 0xFF  # stray markers inside entropy-coded data
    return bytes(out)


def bad_crc(data: bytes) -> bytes:
    out = bytearray(data)
    idat = out.find(b"IDAT")
    length = struct.unpack(">I", out[idat - 4 : idat])[0]
    out[idat + 4 + length] ^= 0xFF  # flip a byte of the IDAT CRC
    return bytes(out)


def corrupt_tail(data: bytes) -> bytes:
    """Stray markers only in the last tenth of the entropy data (rows below a centre crop)."""
    out = bytearray(data)
    for i in range(len(out) * 9 // 10, len(out) - 10, 7):
        if out[i] != 0xFF and out[i - 1] != 0xFF:
            out[i] = 0xFF
    return bytes(out)


# A tall photo: a centre crop reads only its middle rows, so the decoder skips the rest;
# damage below the crop must still be reported, as PIL reports it.
TALL_JPEG = encode(make_image(RNG, 120, 900, "RGB"), "JPEG")

CASES = {
    "empty": (b"", ferroclip.ImageDecodeError),
    "random": (RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes(), ferroclip.UnsupportedFormatError),
    "text": (b"this is not a png, just text\n" * 10, ferroclip.UnsupportedFormatError),
    "jpeg_truncated": (GOOD_JPEG[: len(GOOD_JPEG) // 2], ferroclip.ImageDecodeError),
    "jpeg_progressive_truncated": (PROGRESSIVE[: len(PROGRESSIVE) // 3], ferroclip.ImageDecodeError),
    "jpeg_header_only": (GOOD_JPEG[:200], ferroclip.ImageDecodeError),
    "jpeg_tall_truncated_below_crop": (TALL_JPEG[: len(TALL_JPEG) * 9 // 10], ferroclip.ImageDecodeError),
    "jpeg_tall_corrupt_below_crop": (corrupt_tail(TALL_JPEG), ferroclip.ImageDecodeError),
    "jpeg_corrupt_entropy": (corrupt_entropy(GOOD_JPEG), ferroclip.ImageDecodeError),
    "png_truncated": (GOOD_PNG[: len(GOOD_PNG) // 2], ferroclip.ImageDecodeError),
    "png_bad_crc": (bad_crc(GOOD_PNG), ferroclip.ImageDecodeError),
    "gif_truncated": (encode(make_image(RNG, 90, 70, "P"), "GIF")[:300], ferroclip.ImageDecodeError),
    "webp_truncated": (encode(make_image(RNG, 90, 70, "RGB"), "WEBP")[:200], ferroclip.ImageDecodeError),
    "jpeg_bomb_65500": (jpeg_header_bomb(65500, 65500), ferroclip.ImageTooLargeError),
    "png_bomb_100000": (png_header_bomb(100000, 100000), ferroclip.ImageTooLargeError),
    # libjpeg's own refusal (JERR_IMAGE_TOO_BIG) of sides over 65500.
    "jpeg_bomb_65535": (jpeg_header_bomb(65535, 65535), ferroclip.ImageTooLargeError),
    "bmp_bomb_65535": (bmp_header_bomb(65535, 65535), ferroclip.ImageTooLargeError),
    "bmp_soft_limit_wide": (bmp_header_bomb(2**31 - 1, 1, bpp=1), ferroclip.ImageTooLargeError),
}


@pytest.fixture(scope="module")
def pre() -> Preprocessor:
    # strict: damaged data stays an error here (by default the Pillow fallback decodes the
    # damage PIL tolerates, tested below and in test_pil_fallback.py)
    return Preprocessor(PreprocessConfig.clip(224), num_threads=2, strict=True)


def test_bad_png_crc_decodes_like_pil_unless_strict():
    """PIL ignores a bad IDAT CRC; by default so does ferroclip (via Pillow, with a warning)."""
    data = bad_crc(GOOD_PNG)
    res = Preprocessor(PreprocessConfig.clip(224), num_threads=2).preprocess([data])
    assert res.ok[0] and res.pil_fallback == [0] and res.warnings[0][0].startswith("decoded by Pillow: ")
    assert not Preprocessor(PreprocessConfig.clip(224), strict=True).preprocess([data]).ok[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_file_gives_typed_error_and_batch_survives(tmp_path, pre, name):
    data, expected = CASES[name]
    bad = tmp_path / f"{name}.png"  # the extension lies on purpose: formats are sniffed
    bad.write_bytes(data)
    good = tmp_path / "good.jpg"
    good.write_bytes(GOOD_JPEG)
    alone = pre.preprocess([str(good)]).pixel_values[0]

    t0 = time.perf_counter()
    res = pre.preprocess([str(good), str(bad), data, str(good)])
    elapsed = time.perf_counter() - t0

    assert res.ok.tolist() == [True, False, False, True]
    assert [e.index for e in res.errors] == [1, 2]
    for err in res.errors:
        assert isinstance(err, expected), (name, type(err), str(err))
    assert res.errors[0].path == str(bad)
    assert str(bad) in str(res.errors[0])
    assert res.errors[1].path is None and "item 2" in str(res.errors[1])
    assert not res.pixel_values[1].any() and not res.pixel_values[2].any()
    np.testing.assert_array_equal(res.pixel_values[0], alone)
    np.testing.assert_array_equal(res.pixel_values[3], alone)
    assert elapsed < 10, f"{name} took {elapsed:.1f}s: limits must stop it early"


def test_on_error_raise_raises_first_with_count(tmp_path, pre):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ferroclip.ImageNotFoundError) as info:
        pre.preprocess([GOOD_JPEG, str(missing), b"", b"xx"], on_error="raise")
    msg = str(info.value)
    assert str(missing) in msg and "2 other items also failed" in msg
    assert isinstance(info.value, FileNotFoundError)  # catchable as the builtin


def test_missing_directory_and_fifo(tmp_path, pre):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    res = pre.preprocess([str(tmp_path / "nope.jpg"), str(tmp_path), str(fifo), GOOD_PNG])
    assert time.perf_counter() - t0 < 5  # a FIFO with no writer must not block
    kinds = [type(e) for e in res.errors]
    assert kinds == [ferroclip.ImageNotFoundError, ferroclip.NotAFileError, ferroclip.NotAFileError]
    assert "directory" in str(res.errors[1]) and "FIFO" in str(res.errors[2])
    assert res.ok.tolist() == [False, False, False, True]


def test_pixel_limit_is_configurable(pre):
    data = encode(make_image(RNG, 300, 200, "RGB"), "PNG")
    small = Preprocessor(PreprocessConfig.clip(224), max_pixels=300 * 200 - 1)
    err = small.preprocess([data]).errors[0]
    assert isinstance(err, ferroclip.ImageTooLargeError) and "300x200" in str(err)
    assert pre.preprocess([data]).ok.all()


def test_file_byte_cap(tmp_path):
    f = tmp_path / "big.png"
    f.write_bytes(GOOD_PNG)
    capped = Preprocessor(PreprocessConfig.clip(224), max_file_bytes=100)
    err = capped.preprocess([str(f)]).errors[0]
    assert isinstance(err, ferroclip.ImageTooLargeError) and "100-byte limit" in str(err)


def test_wrong_python_types_are_per_item(pre):
    res = pre.preprocess([GOOD_JPEG, 12345, np.zeros((10, 10, 3), np.float32), np.zeros((4, 4, 5), np.uint8)])
    assert res.ok.tolist() == [True, False, False, False]
    assert isinstance(res.errors[0], TypeError)
    assert isinstance(res.errors[1], ferroclip.ShapeError) and "float32" in str(res.errors[1])
    assert isinstance(res.errors[2], ferroclip.ShapeError)


def test_decode_image_raises_typed(tmp_path):
    with pytest.raises(ferroclip.ImageDecodeError, match="truncated|Premature|end"):
        ferroclip.decode_image(GOOD_JPEG[:400])
    with pytest.raises(ferroclip.ImageNotFoundError):
        ferroclip.decode_image(str(tmp_path / "none.png"))
