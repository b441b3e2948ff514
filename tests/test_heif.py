"""HEIF/HEIC (the iPhone default) against the reference: PIL with pillow-heif's opener,
``ImageOps.exif_transpose`` and the HF processor.

Both sides decode with libheif, but not the same one: ferroclip links the system libheif
(Debian 12: 1.15.1) and pillow-heif bundles its own (1.8.1 ships 1.23.6). What was measured
(``python -m pytest tests/test_heif.py -rA`` prints the numbers):

- 4:4:4 chroma (no upsampling): decoded RGB equal to the byte, any size and orientation,
  so the preprocessed arrays match to float rounding (1e-6).
- 4:2:0 (what cameras write), even sizes: decoded RGB within 1 level of 255 (the two
  versions' YCbCr→RGB/upsampling arithmetic rounds differently). After the resize that is
  at most three levels' worth, 3 / (255 * min(std)) = 0.045: PIL resizes in two separable
  uint8 passes, each with bicubic weights whose absolute sum is over 1 (negative lobes)
  and a rounding, so a 1-level input difference can grow to 2 after the first pass and 3
  after the second (measured: 3 levels, 0.045, on clip-224 302x1000).
- 4:2:0 with an odd width or height that the HEIF transform mirrors (EXIF 2, 3, 6, 8 on
  some odd sizes): the two libheifs place the last odd chroma sample differently; up to
  ~22 levels apart at edges, yet both equally close to the source image, which is what
  the test checks. Photos from phones have even sizes.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

import ferroclip
from ferroclip import PreprocessConfig, Preprocessor

from ._images import smooth_rgb
from .conftest import record_parity

pillow_heif = pytest.importorskip("pillow_heif")
pillow_heif.register_heif_opener()
from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil  # noqa: E402

pytestmark = pytest.mark.reference

TOL = 1e-6
FAMILIES = {
    "clip-224": (PreprocessConfig.clip(224), CLIPImageProcessorPil()),
    "siglip-384": (PreprocessConfig.siglip(384), SiglipImageProcessorPil(size={"height": 384, "width": 384})),
}
#: One 8-bit level, after ``/255`` and division by the smallest std of either family.
LEVEL = 1.0 / (255 * min(min(cfg.image_std) for cfg, _ in FAMILIES.values()))


def make(rng: np.random.Generator, width: int, height: int, alpha: bool = False) -> Image.Image:
    rgb = smooth_rgb(rng, width, height)
    if not alpha:
        return Image.fromarray(rgb)
    a = rng.integers(0, 256, (height, width), dtype=np.uint8)
    a[: height // 3] = 255
    a[-(height // 4) :] = 0
    return Image.fromarray(np.dstack([rgb, a]), "RGBA")


def heic(img: Image.Image, *, chroma: int = 444, orientation: int = 1, quality: int = 90) -> bytes:
    """pillow-heif writes an EXIF orientation as the HEIF transform (``irot``/``imir``)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="HEIF", quality=quality, chroma=chroma, exif=exif.tobytes())
    return buf.getvalue()


def reference_rgb(data: bytes, alpha: str = "white") -> np.ndarray:
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if alpha == "white" and "A" in img.getbands():
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(img.convert("RGB"))


def test_files_carry_both_the_heif_transform_and_the_exif_tag():
    """Control for the tests below: an EXIF 6 file holds an ``irot`` box *and* still says 6
    in its EXIF, so a decoder that also honoured the tag would rotate twice."""
    plain = heic(make(np.random.default_rng(0), 40, 20))
    data = heic(make(np.random.default_rng(0), 40, 20), orientation=6)
    assert b"irot" in data and b"irot" not in plain
    exif = Image.Exif()
    exif.load(pillow_heif.open_heif(io.BytesIO(data)).info["exif"])
    assert exif[0x0112] == 6
    assert reference_rgb(data).shape == ferroclip.decode_image(data).shape == (40, 20, 3)
    assert ferroclip.decode_image(data, exif_transpose=False).shape == (40, 20, 3)  # PIL applies irot regardless


@pytest.mark.parametrize("orientation", [1, 2, 3, 6, 8])
@pytest.mark.parametrize(("width", "height"), [(64, 48), (97, 61), (1, 9), (333, 1000)])
@pytest.mark.parametrize(("has_alpha", "alpha"), [(False, "white"), (True, "white"), (True, "drop")])
def test_444_decode_equals_pillow_heif(width, height, orientation, has_alpha, alpha):
    data = heic(make(np.random.default_rng(width * height), width, height, has_alpha), orientation=orientation)
    ref = reference_rgb(data, alpha)
    got = ferroclip.decode_image(data, alpha=alpha)
    assert got.shape == ref.shape
    assert int(np.abs(got.astype(np.int16) - ref).max()) == 0


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize(("chroma", "tol"), [(444, TOL), (420, 3 * LEVEL + TOL)])
@pytest.mark.parametrize("orientation", [1, 3, 6])
@pytest.mark.parametrize(("width", "height"), [(640, 480), (302, 1000), (1024, 2)])
def test_preprocessed_matches_reference(family, chroma, tol, orientation, width, height):
    cfg, proc = FAMILIES[family]
    data = heic(make(np.random.default_rng(7), width, height), chroma=chroma, orientation=orientation)
    ref = proc(images=ImageOps.exif_transpose(Image.open(io.BytesIO(data))), return_tensors="np")["pixel_values"]
    res = Preprocessor(cfg, num_threads=2).preprocess([data])
    assert res.ok.all(), res.errors
    diff = float(np.abs(res.pixel_values - ref).max())
    record_parity(family, f"RGB {chroma}", "HEIC", diff)
    assert diff <= tol, f"{family} {chroma} {width}x{height} orientation={orientation}: max abs diff {diff}"


@pytest.mark.parametrize("orientation", [1, 2, 3, 6, 8])
@pytest.mark.parametrize(("width", "height"), [(97, 61), (96, 61), (97, 60)])
def test_420_odd_sizes_are_as_close_to_the_source_as_pillow_heif(width, height, orientation):
    img = make(np.random.default_rng(3), width, height)
    data = heic(img, chroma=420, orientation=orientation, quality=-1)
    png = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(png, format="PNG", exif=exif.tobytes())
    truth = np.asarray(ImageOps.exif_transpose(Image.open(png)).convert("RGB")).astype(np.float64)
    ref = reference_rgb(data).astype(np.float64)
    got = ferroclip.decode_image(data).astype(np.float64)
    assert got.shape == ref.shape == truth.shape
    err_ref, err_got = np.abs(ref - truth).mean(), np.abs(got - truth).mean()
    record_parity("decode", f"RGB 420 {width}x{height}", "HEIC", float(np.abs(got - ref).max()))
    # 4:2:0 loses chroma detail either way (~7 levels mean on this test image); the two
    # libheifs differ only at the mirrored odd edge, which moves the mean by < 0.3 level.
    assert abs(err_got - err_ref) < 0.3, (err_got, err_ref)


def test_truncated_and_corrupt_files_are_typed_errors_naming_the_file(tmp_path):
    good = heic(make(np.random.default_rng(1), 120, 80))
    paths = []
    for i, cut in enumerate((len(good) // 2, len(good) - 40, 40, 12)):
        p = tmp_path / f"cut{i}.heic"
        p.write_bytes(good[:cut])
        paths.append(p)
    # A damaged box structure. (Zeroed HEVC data is no test: libde265 conceals it and
    # pillow-heif decodes it as well, so neither side can call it an error.)
    assert good.count(b"meta") == 1
    (tmp_path / "nometa.heic").write_bytes(good.replace(b"meta", b"mxta"))
    paths.append(tmp_path / "nometa.heic")
    (tmp_path / "good.heic").write_bytes(good)
    for p in paths:
        with pytest.raises(ferroclip.ImageDecodeError) as info:
            ferroclip.decode_image(str(p))
        assert str(p) in str(info.value) and info.value.path == str(p)
        assert isinstance(info.value, OSError)
    res = Preprocessor(PreprocessConfig.clip(224), num_threads=2).preprocess([str(p) for p in paths] + [str(tmp_path / "good.heic")])
    assert res.ok.tolist() == [False] * len(paths) + [True]  # the batch goes on
    assert all("HEIF" in str(e) or "decode" in str(e) for e in res.errors) and len(res.errors) == len(paths)


def test_pixel_budget_is_checked_before_decoding():
    data = heic(make(np.random.default_rng(2), 300, 200), orientation=6)
    with pytest.raises(ferroclip.ImageTooLargeError, match="200x300|300x200"):
        ferroclip.decode_image(data, max_pixels=300 * 200 - 1)
    assert ferroclip.decode_image(data, max_pixels=300 * 200).shape == (300, 200, 3)


def test_10_bit_files_are_reduced_to_8_bit_as_pillow_heif_does():
    """HDR iPhone photos are 10-bit: libheif converts to 8-bit RGB on both sides."""
    rng = np.random.default_rng(4)
    blocks = rng.integers(0, 65536, (8, 12, 3)).astype(np.uint16)
    rgb16 = np.repeat(np.repeat(blocks, 4, 0), 4, 1)
    buf = io.BytesIO()
    pillow_heif.from_bytes(mode="RGB;16", size=(48, 32), data=rgb16.tobytes()).save(buf, quality=-1, chroma=444)
    data = buf.getvalue()
    assert pillow_heif.open_heif(io.BytesIO(data)).info["bit_depth"] == 10
    got = ferroclip.decode_image(data)
    ref = reference_rgb(data)
    assert got.shape == ref.shape == (32, 48, 3)
    assert int(np.abs(got.astype(np.int16) - ref).max()) == 0
