"""Every file of Pillow's own test images (``../shared/peer-images/pillow/``, README there)
through ferroclip and through the reference (PIL + ``CLIPImageProcessorPil`` after
``ImageOps.exif_transpose``), file by file.

Outcome without a row in ``EXCEPTIONS``: if PIL decodes the file, ferroclip's array equals
the reference's (the Pillow fallback included); if PIL refuses it, ferroclip gives a typed
:class:`ImageError` naming the file. Each row is a known exception with its reason, and
holds the outcome it expects, so a fixed cause fails the test until its row is removed.
``tools/pillow_corpus_classify.py`` prints the same classification with counts.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import PIL
import pytest
from PIL import Image, ImageOps
from transformers import CLIPImageProcessorPil

from ferroclip import ImageError, PreprocessConfig, Preprocessor

pytestmark = pytest.mark.reference

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "peer-images" / "pillow"
FILES = sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file()) if CORPUS.is_dir() else []
TOL = 1e-6
PILLOW = PIL.__version__.split(".")[0]
BOTH = ("12", "13")

_BMP_BITFIELDS = "BMP bitfield layout PIL does not support; image-rs decodes it (the layout is valid)"
_TIFF_JPEG = "JPEG-in-TIFF: the tiff crate's JPEG decoder is not libjpeg-turbo (off by rounding)"

#: name -> (expected outcome, Pillow majors it applies under, reason), each reason traced to
#: the code that makes the difference.
#: Outcomes: "differ" (both decode, pixels differ), "we-refuse", "we-decode" (PIL refuses).
EXCEPTIONS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "apng/chunk_no_fctl.png": ("we-decode", BOTH, "APNG fdAT chunk with no fcTL before it: PngImagePlugin.chunk_fdAT raises 'APNG contains frame sequence errors'; the png crate reads the default image (IDAT) and stops"),
    "bmp/g/rgb32bf.bmp": ("we-decode", BOTH, _BMP_BITFIELDS),
    "bmp/q/rgb16-231.bmp": ("we-decode", BOTH, _BMP_BITFIELDS),
    "bmp/q/rgb32-111110.bmp": ("we-decode", BOTH, _BMP_BITFIELDS),
    "bmp/q/rgba16-4444.bmp": ("we-decode", BOTH, _BMP_BITFIELDS),
    "bmp/q/pal2.bmp": ("we-decode", BOTH, "2-bit BMP: BmpImagePlugin.BIT2MODE has no 2-bit entry ('Unsupported BMP pixel depth'); image-rs decodes it"),
    "hopper_unknown_pixel_mode.tif": ("we-decode", BOTH, "32-bit unsigned RGB TIFF: TiffImagePlugin.OPEN_INFO has no (2, (1,), 1, (32, 32, 32), ()) key ('unknown pixel mode', so Image.open cannot identify it); the tiff crate decodes it"),
    "png_decompression_dos.png": ("we-decode", BOTH, "zTXt chunks inflating past PngImagePlugin.MAX_TEXT_CHUNK: PIL refuses (_safe_zlib_decompress); the png crate keeps zTXt compressed until asked (compressed_latin1_text) and the core never asks"),
    "unknown_compression_method.png": ("we-decode", BOTH, "iCCP chunk with compression method 1: PngImagePlugin.chunk_iCCP raises, so Image.open cannot identify it; the png crate drops the profile (parse_iccp ignores parse_iccp_raw's error) and the core reads no ICC"),
    "hopper_jpg.tif": ("differ", BOTH, _TIFF_JPEG),
    "tiff_strip_cmyk_jpeg.tif": ("differ", BOTH, _TIFF_JPEG),
    "tiff_strip_cmyk_16l_jpeg.tif": ("differ", BOTH, _TIFF_JPEG),
    "tiff_tiled_cmyk_jpeg.tif": ("differ", BOTH, _TIFF_JPEG),
    "pil168.tif": ("differ", BOTH, "pil168.tif is JPEG-compressed RGB (not 1-bit): " + _TIFF_JPEG),
}

_PRE = Preprocessor(PreprocessConfig.clip(224), num_threads=1)
_PROC = CLIPImageProcessorPil()


def _high_byte(img: Image.Image) -> Image.Image:
    """ferroclip's documented 16-bit rule (the high byte), keeping a tRNS grey transparent:
    a new image from the array would drop ``info["transparency"]``, which the processor's
    ``convert_to_rgb`` composites onto white (as the core does)."""
    arr = np.asarray(img, dtype=np.uint32)
    out = Image.fromarray((arr >> 8).astype(np.uint8), "L")
    trns = img.info.get("transparency")
    if isinstance(trns, int):
        out.putalpha(Image.fromarray(np.where(arr == trns, 0, 255).astype(np.uint8), "L"))
    return out


def _reference(data: bytes) -> np.ndarray:
    with warnings.catch_warnings():  # PIL's warnings on damaged files are not refusals
        warnings.simplefilter("ignore")
        img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
        if img.mode.startswith("I;16"):
            img = _high_byte(img)
        return _PROC(images=img, return_tensors="np")["pixel_values"][0]


@pytest.mark.skipif(not FILES, reason="needs ../shared/peer-images/pillow beside the checkout")
@pytest.mark.parametrize("name", FILES)
def test_pillow_corpus_file_matches_reference(name):
    path = CORPUS / name
    try:
        ref = _reference(path.read_bytes())
    except Exception:  # noqa: BLE001 - PIL refusing the file is an outcome under test
        ref = None
    res = _PRE.preprocess([str(path)])
    if ref is None and not res.ok[0]:
        outcome = "both-refuse"
    elif ref is None:
        outcome = "we-decode"
    elif not res.ok[0]:
        outcome = "we-refuse"
    else:
        outcome = "exact" if float(np.abs(res.pixel_values[0] - ref).max()) <= TOL else "differ"
    row = EXCEPTIONS.get(name)
    expected = row[0] if row and PILLOW in row[1] else ("both-refuse" if ref is None else "exact")
    assert outcome == expected, f"{name}: {outcome}, table expects {expected}" + (f" ({row[2]})" if row else "")
    if not res.ok[0]:
        err = res.errors[0]
        assert isinstance(err, ImageError) and err.path == str(path) and str(path) in str(err)


def _sixteen_bit_gray(name: str) -> bool:
    try:
        with Image.open(CORPUS / name) as img:
            return img.mode.startswith("I;16")
    except Exception:  # noqa: BLE001 - files PIL refuses have no mode to choose by
        return False


_PRE_CLIP = Preprocessor(PreprocessConfig.clip(224), num_threads=1, sixteen_bit="clip")
SIXTEEN = [n for n in FILES if _sixteen_bit_gray(n)]


@pytest.mark.parametrize("name", SIXTEEN)
def test_pillow_corpus_sixteen_bit_clip_is_pils_own_rule(name):
    """``sixteen_bit="clip"`` equals the reference with PIL's own ``I;16`` conversion (no
    high-byte rule applied to it), file by file over the corpus's 16-bit grayscale images."""
    data = (CORPUS / name).read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _PROC(images=ImageOps.exif_transpose(Image.open(io.BytesIO(data))), return_tensors="np")["pixel_values"][0]
    res = _PRE_CLIP.preprocess([str(CORPUS / name)])
    row = EXCEPTIONS.get(name)
    if row and row[0] == "differ" and PILLOW in row[1]:
        pytest.skip(f"listed difference: {row[2]}")
    assert res.ok[0], res.errors
    assert float(np.abs(res.pixel_values[0] - ref).max()) <= TOL
