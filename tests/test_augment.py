"""Training augmentation (`TrainAugment`): parity with PIL on the sampled box, reproducibility
by ``(seed, epoch, index)`` whatever the threads or batch, torchvision's box distribution, and
per-item failures.

The crop+resize of a box must equal ``PIL.Image.resize(size, resample, box=box)`` byte for
byte, under the installed Pillow's pass-order rule (the configs' default ``pil_version``).
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageEnhance, ImageOps

from ferroclip import AugmentParams, PreprocessConfig, TrainAugment, _native
from ferroclip.errors import ImageError

from ._images import encode, make_image

FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def raw_config(resample: str = "bicubic", size: int = 32) -> PreprocessConfig:
    """Output = the uint8 bytes as floats: comparisons are exact."""
    return PreprocessConfig(
        size=size, resize_mode="squash", resample=resample, rescale="none", image_mean=None, image_std=None
    )


def as_chw(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB")).transpose(2, 0, 1).astype(np.float32)


def reference(img: Image.Image, p: AugmentParams, size: tuple[int, int], resample: str) -> Image.Image:
    """torchvision's PIL-path ops in ferroclip's order, with the crop+resize as resize(box=)."""
    out = img.convert("RGB").resize((size[1], size[0]), FILTERS[resample], box=p.box)
    if p.flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    for op, factor in p.jitter:
        if op == "brightness":
            out = ImageEnhance.Brightness(out).enhance(factor)
        elif op == "contrast":
            out = ImageEnhance.Contrast(out).enhance(factor)
        elif op == "saturation":
            out = ImageEnhance.Color(out).enhance(factor)
        else:
            import torchvision.transforms.functional as F

            out = F.adjust_hue(out, factor)
    if p.grayscale:
        out = out.convert("L").convert("RGB")
    return out


sides = st.one_of(st.integers(1, 40), st.integers(41, 400))


@pytest.mark.reference
@settings(max_examples=80)
@given(
    width=sides,
    height=sides,
    out_w=st.integers(1, 120),
    out_h=st.integers(1, 120),
    resample=st.sampled_from(sorted(FILTERS)),
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
)
def test_resize_of_any_box_equals_pil(width, height, out_w, out_h, resample, data, seed):
    """The stage alone: arbitrary integer boxes, including ones touching the edges."""
    x0 = data.draw(st.integers(0, width - 1))
    y0 = data.draw(st.integers(0, height - 1))
    box = (x0, y0, data.draw(st.integers(x0 + 1, width)), data.draw(st.integers(y0 + 1, height)))
    img = make_image(np.random.default_rng(seed), width, height, "RGB")
    rule = PreprocessConfig.clip().pil_version
    want = np.asarray(img.resize((out_w, out_h), FILTERS[resample], box=box))
    got = _native.resize_image(np.asarray(img), out_w, out_h, resample=resample, pil_version=rule, box=box)
    np.testing.assert_array_equal(got, want)


@pytest.mark.reference
@settings(max_examples=60)
@given(
    width=sides,
    height=sides,
    out=st.tuples(st.integers(1, 96), st.integers(1, 96)),
    fmt_mode=st.sampled_from([("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "L"), ("JPEG", "RGB"), ("JPEG", "L")]),
    resample=st.sampled_from(sorted(FILTERS)),
    scale_lo=st.sampled_from([0.08, 0.5, 1.0]),
    orientation=st.sampled_from([1, 3, 6, 8]),
    index=st.integers(0, 2**40),
    seed=st.integers(0, 2**32 - 1),
)
def test_sampled_crop_equals_pil_resize_of_its_box(
    width, height, out, fmt_mode, resample, scale_lo, orientation, index, seed
):
    """End to end (decode only where the taps read, then crop+resize), photometric ops off;
    the box lives in the EXIF-oriented image, as after ``ImageOps.exif_transpose``."""
    fmt, mode = fmt_mode
    data = encode(make_image(np.random.default_rng(seed), width, height, mode), fmt, orientation=orientation)
    aug = TrainAugment(raw_config(resample), scale=(scale_lo, 1.0), hflip=0.0, seed=seed, alpha="drop")
    res = aug.augment([data], epoch=2, indices=[index], size=out)
    assert res.ok.all(), res.errors
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    (p,) = aug.params(img.width, img.height, epoch=2, indices=[index])
    assert not p.flip and not p.grayscale and p.jitter == ()
    want = as_chw(reference(img, p, out, resample))
    np.testing.assert_array_equal(res.pixel_values[0], want)


@pytest.mark.reference
@pytest.mark.parametrize("resample", sorted(FILTERS))
def test_flip_grayscale_and_jitter_equal_pil(resample):
    """Flip is `transpose(FLIP_LEFT_RIGHT)`, grayscale `convert("L").convert("RGB")`, the
    jitter ops `ImageEnhance` / torchvision `adjust_hue`, each with the sampled factor."""
    rng = np.random.default_rng(7)
    images = [make_image(rng, w, h, "RGB") for w, h in [(97, 61), (300, 200), (61, 250), (40, 40)]]
    aug = TrainAugment(
        raw_config(resample), hflip=0.5, color_jitter=(0.4, 0.4, 0.4, 0.1), grayscale=0.3, seed=11
    )
    n = 48
    arrays = [np.asarray(images[i % 4]) for i in range(n)]
    indices = list(range(1000, 1000 + n))
    res = aug.augment(arrays, epoch=5, indices=indices, size=(40, 56))
    assert res.ok.all()
    seen = {"flip": 0, "gray": 0}
    for i in range(n):
        img = images[i % 4]
        (p,) = aug.params(img.width, img.height, epoch=5, indices=[indices[i]])
        seen["flip"] += p.flip
        seen["gray"] += p.grayscale
        assert sorted(op for op, _ in p.jitter) == ["brightness", "contrast", "hue", "saturation"]
        want = as_chw(reference(img, p, (40, 56), resample))
        np.testing.assert_array_equal(res.pixel_values[i], want, err_msg=f"sample {i}: {p}")
    assert 0 < seen["flip"] < n and 0 < seen["gray"] < n


def test_normalisation_is_the_configs():
    cfg = PreprocessConfig.clip(32)
    rng = np.random.default_rng(3)
    img = make_image(rng, 120, 90, "RGB")
    for dtype, tol in [("float32", 1e-6), ("float16", 2e-3)]:
        aug = TrainAugment(cfg, hflip=0.0, seed=1, dtype=dtype)
        res = aug.augment([np.asarray(img)], epoch=0, indices=[4])
        assert res.pixel_values.dtype == np.dtype(dtype)
        (p,) = aug.params(120, 90, epoch=0, indices=[4])
        px = np.asarray(reference(img, p, (32, 32), "bicubic")).astype(np.float64) * (1 / 255)
        x = px.astype(np.float32)
        want = ((x - np.float32(cfg.image_mean)) / np.float32(cfg.image_std)).transpose(2, 0, 1)
        np.testing.assert_allclose(res.pixel_values[0].astype(np.float32), want, atol=tol, rtol=0)


# --- reproducibility -------------------------------------------------------------------


def _batch(n: int = 12) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [np.asarray(make_image(rng, 50 + 13 * i, 40 + 7 * i, "RGB")) for i in range(n)]


def test_same_seed_epoch_and_indices_give_the_same_bytes():
    images = _batch()
    kw = dict(hflip=0.5, color_jitter=(0.3, 0.3, 0.3, 0.05), grayscale=0.2, seed=99)
    a = TrainAugment(raw_config(), **kw).augment(images, epoch=3, indices=range(12)).pixel_values
    b = TrainAugment(raw_config(), **kw).augment(images, epoch=3, indices=range(12)).pixel_values
    assert a.tobytes() == b.tobytes()
    other_seed = TrainAugment(raw_config(), **{**kw, "seed": 100}).augment(images, epoch=3, indices=range(12))
    assert other_seed.pixel_values.tobytes() != a.tobytes()


def test_another_epoch_draws_other_boxes():
    aug = TrainAugment(raw_config(), seed=0)
    e0, f0 = aug.boxes(640, 480, epoch=0, indices=range(200))
    e1, f1 = aug.boxes(640, 480, epoch=1, indices=range(200))
    assert e0.shape == (200, 4) and f0.dtype == bool
    assert (e0 != e1).any(axis=1).mean() > 0.95
    again, _ = aug.boxes(640, 480, epoch=0, indices=range(200))
    np.testing.assert_array_equal(e0, again)


def test_output_is_independent_of_threads_and_batch_composition():
    images = _batch()
    kw = dict(hflip=0.5, color_jitter=(0.3, 0.3, 0.3, 0.05), grayscale=0.2, seed=7)
    indices = [40 + i for i in range(12)]
    one = TrainAugment(raw_config(), num_threads=1, **kw).augment(images, epoch=1, indices=indices)
    two = TrainAugment(raw_config(), num_threads=2, **kw).augment(images, epoch=1, indices=indices)
    assert one.pixel_values.tobytes() == two.pixel_values.tobytes()
    aug = TrainAugment(raw_config(), num_threads=2, **kw)
    alone = aug.augment([images[7]], epoch=1, indices=[indices[7]]).pixel_values[0]
    np.testing.assert_array_equal(alone, one.pixel_values[7])
    order = [7, 3, 11, 0]
    shuffled = aug.augment([images[i] for i in order], epoch=1, indices=[indices[i] for i in order])
    np.testing.assert_array_equal(shuffled.pixel_values, one.pixel_values[order])


def test_a_size_per_batch_and_out_buffers():
    images = _batch(4)
    aug = TrainAugment(raw_config(size=32), seed=3)
    assert aug.augment(images, epoch=0, indices=range(4)).pixel_values.shape == (4, 3, 32, 32)
    small = aug.augment(images, epoch=0, indices=range(4), size=(16, 24))
    assert small.pixel_values.shape == (4, 3, 16, 24)
    out = np.full((4, 3, 48, 40), -1.0, dtype=np.float32)
    res = aug.augment(images, epoch=0, indices=range(4), size=(48, 40), out=out)
    assert res.pixel_values is out or np.shares_memory(res.pixel_values, out)
    assert (out >= 0).all()
    with pytest.raises(ValueError, match="shape"):
        aug.augment(images, epoch=0, indices=range(4), size=(8, 8), out=out)


# --- the box distribution --------------------------------------------------------------


def _ks(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic and its large-sample critical value at alpha = 1e-3."""
    try:
        from scipy.stats import ks_2samp

        stat = float(ks_2samp(a, b).statistic)
    except ImportError:
        grid = np.union1d(a, b)
        cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)  # noqa: E731
        stat = float(np.abs(cdf(a) - cdf(b)).max())
    n, m = len(a), len(b)
    return stat, math.sqrt(-math.log(1e-3 / 2) / 2) * math.sqrt((n + m) / (n * m))


@pytest.mark.parametrize(
    ("width", "height", "scale", "ratio"),
    [
        (640, 480, (0.08, 1.0), (3 / 4, 4 / 3)),
        (224, 224, (0.08, 1.0), (3 / 4, 4 / 3)),
        (333, 777, (0.35, 1.0), (3 / 4, 4 / 3)),
        (400, 100, (0.08, 1.0), (3 / 4, 4 / 3)),  # elongated: many draws fall back
        (1000, 40, (0.08, 1.0), (3 / 4, 4 / 3)),  # always the central fallback
        (300, 200, (0.5, 1.0), (1 / 2, 2.0)),
    ],
)
def test_boxes_follow_torchvision_get_params(width, height, scale, ratio):
    torch = pytest.importorskip("torch")
    from torchvision.transforms import RandomResizedCrop

    n = 3000
    torch.manual_seed(0)
    dummy = torch.empty(1, height, width)
    ref = np.array([RandomResizedCrop.get_params(dummy, list(scale), list(ratio)) for _ in range(n)])
    ty0, tx0, th, tw = ref.T
    boxes, _ = TrainAugment(raw_config(), scale=scale, ratio=ratio, seed=2024).boxes(
        width, height, epoch=0, indices=range(n)
    )
    fx0, fy0, fw, fh = boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (fw >= 1).all() and (fh >= 1).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    stats = {
        "w": (fw, tw),
        "h": (fh, th),
        "x0": (fx0, tx0),
        "y0": (fy0, ty0),
        "area": (fw * fh / (width * height), tw * th / (width * height)),
        "aspect": (fw / fh, tw / th),
    }
    for name, (ours, theirs) in stats.items():
        if np.ptp(theirs) == 0:  # a single atom (the fallback box): must be exactly it
            np.testing.assert_array_equal(ours, theirs, err_msg=name)
            continue
        stat, critical = _ks(ours.astype(np.float64), theirs.astype(np.float64))
        assert stat < critical, f"{width}x{height} {name}: KS {stat:.4f} >= {critical:.4f}"


# --- bad inputs and arguments ------------------------------------------------------------


def test_a_corrupt_file_fails_alone_and_is_named(tmp_path):
    rng = np.random.default_rng(8)
    paths = []
    for i in range(3):
        p = tmp_path / f"good{i}.jpg"
        p.write_bytes(encode(make_image(rng, 120 + i, 90, "RGB"), "JPEG"))
        paths.append(str(p))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 20)
    items = [paths[0], str(bad), paths[1], paths[2]]
    aug = TrainAugment(raw_config(), seed=1, num_threads=2)
    res = aug.augment(items, epoch=0, indices=[0, 1, 2, 3])
    assert res.ok.tolist() == [True, False, True, True]
    (err,) = res.errors
    assert isinstance(err, ImageError) and err.index == 1 and err.path == str(bad) and "broken.jpg" in str(err)
    assert (res.pixel_values[1] == 0).all()
    good = aug.augment([paths[0], paths[1], paths[2]], epoch=0, indices=[0, 2, 3])
    np.testing.assert_array_equal(res.pixel_values[[0, 2, 3]], good.pixel_values)
    with pytest.raises(ImageError):
        aug.augment(items, epoch=0, indices=[0, 1, 2, 3], on_error="raise")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"scale": (0.9, 0.1)}, "scale"),
        ({"scale": (0.0, 1.0)}, "scale"),
        ({"ratio": (2.0, 1.0)}, "ratio"),
        ({"hflip": 1.5}, "hflip"),
        ({"grayscale": -0.1}, "grayscale"),
        ({"color_jitter": (0.1, 0.1, 0.1)}, "color_jitter"),
        ({"color_jitter": (0.1, 0.1, 0.1, 0.7)}, "hue"),
        ({"color_jitter": (-0.1, 0.0, 0.0, 0.0)}, "color_jitter"),
        ({"size": 0}, "size"),
        ({"seed": -1}, "seed"),
        ({"dtype": "float64"}, "dtype"),
        ({"num_threads": 0}, "num_threads"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TrainAugment(raw_config(), **kwargs)


def test_bad_call_arguments():
    aug = TrainAugment(raw_config())
    img = _batch(1)
    with pytest.raises(ValueError, match="indices"):
        aug.augment(img, epoch=0, indices=[0, 1])
    with pytest.raises(ValueError, match="epoch"):
        aug.augment(img, epoch=-1, indices=[0])
    with pytest.raises(ValueError, match="size"):
        aug.augment(img, epoch=0, indices=[0], size=(0, 3))
    with pytest.raises(TypeError):
        TrainAugment("clip")  # type: ignore[arg-type]


def test_alpha_follows_the_config_as_evaluation_does():
    """Fine-tuning a MobileCLIP-preset model must treat transparency as its evaluation
    preprocessing does (the preset drops alpha), unless told otherwise."""
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = np.linspace(0, 255, 40, dtype=np.uint8)[None, :]
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    data = buf.getvalue()
    for cfg, rule in ((PreprocessConfig.mobileclip(), "drop"), (PreprocessConfig.clip(32), "white")):
        default = TrainAugment(cfg, size=32, hflip=0.0, seed=3)
        assert default.alpha == rule == ferroclip_preprocessor_alpha(cfg)
        explicit = TrainAugment(cfg, size=32, hflip=0.0, seed=3, alpha=rule)
        other = TrainAugment(cfg, size=32, hflip=0.0, seed=3, alpha="white" if rule == "drop" else "drop")
        a, b, c = (t.augment([data], epoch=0, indices=[5]).pixel_values for t in (default, explicit, other))
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def ferroclip_preprocessor_alpha(cfg: PreprocessConfig) -> str:
    from ferroclip import Preprocessor

    return Preprocessor(cfg).alpha
