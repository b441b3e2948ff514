"""Model embedding against transformers called directly, on tiny random-weight checkpoints."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

import ferroclip
from ferroclip.errors import ConfigError, ImageDecodeError, ImageNotFoundError, ModelError

from . import _models
from ._images import smooth_rgb

TEXTS = ["a photo of a cat", "a red car on a highway at night", "dog", "Two people WALKING on the beach"]
FAMILIES = ["clip", "siglip", "siglip2"]


def _build(family: str, path: Path, *, processor: bool = False) -> Path:
    if family == "clip":
        return _models.tiny_clip(path, processor=processor)
    return _models.tiny_siglip(path, tokenizer="sentencepiece" if family == "siglip" else "gemma", processor=processor)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {f: _build(f, root / f) for f in FAMILIES}


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    out = []
    # 40x150 shrinks its height over twice as much as its width for every family's 32x32
    # input: Pillow 13 resizes it vertical pass first, Pillow 12 horizontal first.
    shapes = [(64, 48, "JPEG"), (31, 90, "PNG"), (200, 120, "JPEG"), (40, 40, "WEBP"), (17, 23, "PNG"), (40, 150, "PNG")]
    for i, (w, h, fmt) in enumerate(shapes):
        p = root / f"img{i}.{fmt.lower()}"
        Image.fromarray(smooth_rgb(rng, w, h)).save(p, fmt)
        out.append(str(p))
    return out


def _reference(ckpt: Path, family: str, images: list[str], texts: list[str]) -> tuple[np.ndarray, np.ndarray, object]:
    """What a user writes with transformers alone: PIL processor + get_*_features."""
    model = AutoModel.from_pretrained(ckpt, attn_implementation="sdpa").eval()
    proc = AutoImageProcessor.from_pretrained(ckpt, backend="pil")
    tok = AutoTokenizer.from_pretrained(ckpt)
    pix = proc(images=[Image.open(p) for p in images], return_tensors="pt")
    if family == "clip":
        tin = tok(texts, padding=True, truncation=True, return_tensors="pt")
    else:
        tin = tok(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    with torch.no_grad():
        img = model.get_image_features(**pix).pooler_output
        txt = model.get_text_features(**tin).pooler_output
    norm = torch.nn.functional.normalize
    return norm(img, dim=-1).numpy(), norm(txt, dim=-1).numpy(), model


def _cos_min(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def _assert_embeds_equal_transformers(ckpt: Path, family: str, images: list[str]) -> None:
    model = ferroclip.load_model(ckpt, device="cpu")
    assert model.family == family and model.backend.name == "torch"
    ref_img, ref_txt, _ = _reference(ckpt, family, images, TEXTS)
    res = model.encode_images(images, batch_size=len(images), progress=False)
    txt = model.encode_texts(TEXTS)
    assert res.ok.all() and not res.errors
    assert res.embeddings.dtype == np.float32 and res.embeddings.shape == (len(images), model.dim)
    assert txt.dtype == np.float32 and txt.shape == (len(TEXTS), model.dim)
    assert np.abs(res.embeddings - ref_img).max() <= 1e-5
    assert np.abs(txt - ref_txt).max() <= 1e-5
    assert _cos_min(res.embeddings, ref_img) >= 0.99999 and _cos_min(txt, ref_txt) >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(res.embeddings, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-6)


@pytest.mark.reference
@pytest.mark.parametrize("family", FAMILIES)
def test_embeddings_equal_transformers(checkpoints, images, family):
    _assert_embeds_equal_transformers(checkpoints[family], family, images)


@pytest.mark.reference
@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_saved_with_its_processor_loads_and_embeds_equal(tmp_path, images, family):
    """A checkpoint as a user saves one with the installed transformers: the model, then
    ``XProcessor(image_processor, tokenizer).save_pretrained``. transformers 5.23 and 5.24
    nest the image processor in ``processor_config.json`` and write no
    ``preprocessor_config.json``; whatever the installed release writes must load, and
    embed exactly as transformers does."""
    ckpt = _build(family, tmp_path / family, processor=True)
    transformers_writes_nested = not (ckpt / "preprocessor_config.json").is_file()
    if transformers_writes_nested:
        nested = json.loads((ckpt / "processor_config.json").read_text())
        assert isinstance(nested.get("image_processor"), dict)
    _assert_embeds_equal_transformers(ckpt, family, images)
    cfg = ferroclip.PreprocessConfig.from_pretrained(ckpt)
    assert cfg == ferroclip.load_model(ckpt, device="cpu").preprocess_config


def test_siglip_needs_max_length_padding(checkpoints):
    """The family rule is load-bearing: SigLIP pools the last position, so padding to the
    longest text instead of 64 tokens changes the embeddings."""
    ckpt = checkpoints["siglip"]
    model = AutoModel.from_pretrained(ckpt).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    with torch.no_grad():
        short = model.get_text_features(**tok(TEXTS, padding="longest", return_tensors="pt")).pooler_output
    ours = ferroclip.load_model(ckpt, device="cpu").encode_texts(TEXTS, normalize=False)
    assert np.abs(ours - short.numpy()).max() > 1e-3


def test_batching_and_normalize_flag(checkpoints, images):
    model = ferroclip.load_model(checkpoints["clip"], device="cpu")
    one = model.encode_images(images, batch_size=len(images), progress=False, normalize=False).embeddings
    small = model.encode_images(images, batch_size=2, progress=False, normalize=False).embeddings
    np.testing.assert_allclose(small, one, atol=1e-5)
    assert not np.allclose(np.linalg.norm(one, axis=1), 1.0)
    normed = model.encode_images(images, batch_size=2, progress=False).embeddings
    np.testing.assert_allclose(normed, one / np.linalg.norm(one, axis=1, keepdims=True), atol=1e-6)


def test_bad_files_are_reported_and_the_rest_embedded(checkpoints, images, tmp_path):
    model = ferroclip.load_model(checkpoints["clip"], device="cpu")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(Path(images[0]).read_bytes()[:300])
    missing = str(tmp_path / "missing.png")
    batch = [images[0], str(corrupt), images[1], missing, images[2]]
    res = model.encode_images(batch, batch_size=2, progress=False)
    assert res.ok.tolist() == [True, False, True, False, True]
    assert [type(e) for e in res.errors] == [ImageDecodeError, ImageNotFoundError]
    assert [e.index for e in res.errors] == [1, 3]
    assert res.errors[0].path == str(corrupt) and res.errors[1].path == missing
    assert not res.embeddings[[1, 3]].any()
    solo = model.encode_images([images[0], images[1], images[2]], progress=False).embeddings
    np.testing.assert_allclose(res.embeddings[[0, 2, 4]], solo, atol=1e-5)
    with pytest.raises(ImageDecodeError, match="1 other item also failed"):
        res.raise_for_errors()


def test_preprocessing_of_next_batch_overlaps_the_model(checkpoints, images):
    """Batch i+1 must be preprocessing while the model runs batch i: the first model call
    blocks until the second preprocessing call has started (a serial loop would time out)."""
    model = ferroclip.load_model(checkpoints["clip"], device="cpu")
    started_second = threading.Event()
    calls = []
    real_pre, real_enc = model.preprocessor.preprocess, model.backend.encode_pixels

    def pre(*a, **k):
        calls.append("pre")
        if calls.count("pre") == 2:
            started_second.set()
        return real_pre(*a, **k)

    def enc(pixels):
        if calls.count("enc") == 0:
            assert started_second.wait(timeout=20), "the next batch was not being preprocessed during the model call"
        calls.append("enc")
        return real_enc(pixels)

    model.preprocessor.preprocess = pre
    model.backend.encode_pixels = enc
    res = model.encode_images(images, batch_size=2, progress=False)
    assert res.ok.all() and calls.count("enc") == 3


@pytest.mark.reference
def test_zero_shot_equals_model_logits(checkpoints, images):
    labels = ["cat", "dog", "car"]
    for family in ("clip", "siglip"):
        ckpt = checkpoints[family]
        model = ferroclip.load_model(ckpt, device="cpu")
        zs = model.zero_shot(images, labels, templates=["a photo of a {}."], progress=False)
        hf = AutoModel.from_pretrained(ckpt).eval()
        tok = AutoTokenizer.from_pretrained(ckpt)
        proc = AutoImageProcessor.from_pretrained(ckpt, backend="pil")
        prompts = [f"a photo of a {label}." for label in labels]
        kw = {"padding": True} if family == "clip" else {"padding": "max_length", "max_length": 64}
        with torch.no_grad():
            out = hf(**proc(images=[Image.open(p) for p in images], return_tensors="pt"), **tok(prompts, return_tensors="pt", **kw))
        logits = out.logits_per_image
        ref = (logits.softmax(-1) if family == "clip" else torch.sigmoid(logits)).numpy()
        np.testing.assert_allclose(zs.probs, ref, atol=1e-5)
        assert zs.predicted == [labels[i] for i in ref.argmax(1)]


def test_zero_shot_failed_image_is_a_masked_row(checkpoints, images, tmp_path):
    """A broken image keeps its row: ok False, NaN probabilities, no prediction, its error;
    the other rows equal a run without it."""
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    model = ferroclip.load_model(checkpoints["clip"], device="cpu")
    labels = ["cat", "dog"]
    good = model.zero_shot(images[:2], labels, progress=False)
    zs = model.zero_shot([images[0], bad, images[1]], labels, progress=False)
    assert zs.ok.tolist() == [True, False, True]
    assert np.isnan(zs.probs[1]).all() and not np.isnan(zs.probs[[0, 2]]).any()
    assert zs.predicted[1] is None and zs.predicted[0] == good.predicted[0] and zs.predicted[2] == good.predicted[1]
    np.testing.assert_allclose(zs.probs[zs.ok], good.probs, atol=1e-6)
    assert len(zs.errors) == 1 and "broken.jpg" in str(zs.errors[0])


def test_score_and_score_batch(checkpoints, images, tmp_path):
    model = ferroclip.load_model(checkpoints["clip"], device="cpu")
    img = model.encode_images(images[:2], progress=False).embeddings
    txt = model.encode_texts(TEXTS[:2])
    assert model.score(TEXTS[0], images[1]) == pytest.approx(float(img[1] @ txt[0]), abs=1e-5)
    records = [
        {"query": TEXTS[0], "image": images[0], "query_id": "q1", "image_id": "i1"},
        {"query": TEXTS[1], "image_url": images[1], "query_id": "q2", "image_id": "i2"},
        {"query": TEXTS[0], "image": images[1], "query_id": "q1", "image_id": "i2"},
        {"query": TEXTS[0], "image": str(tmp_path / "nope.jpg"), "query_id": "q1", "image_id": "i3"},
    ]
    out = model.score_batch(records, col_name="sim", progress=False)
    assert [r["image_id"] for r in out] == ["i1", "i2", "i2", "i3"]
    assert out[0]["sim"] == pytest.approx(float(img[0] @ txt[0]), abs=1e-5)
    assert out[1]["sim"] == pytest.approx(float(img[1] @ txt[1]), abs=1e-5)
    assert out[2]["sim"] == pytest.approx(float(img[1] @ txt[0]), abs=1e-5)
    assert out[3]["sim"] is None and "nope.jpg" in out[3]["error"]
    with pytest.raises(ImageNotFoundError):
        model.score("x", str(tmp_path / "nope.jpg"))
    bad = model.score_batch([{"image": images[0]}, {"query": TEXTS[0], "image": images[0]}], progress=False)
    assert "inputs[0]" in bad[0].error and bad[0].score is None and bad[1].ok


def test_impossible_combinations_are_clear_errors(checkpoints, tmp_path):
    ckpt = checkpoints["clip"]
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            ferroclip.load_model(ckpt, device="cuda")
    with pytest.raises(ConfigError, match="float16' on CPU"):
        ferroclip.load_model(ckpt, device="cpu", dtype="float16")
    with pytest.raises(ConfigError, match="unknown device"):
        ferroclip.load_model(ckpt, device="tpu")
    with pytest.raises(ConfigError, match="unknown backend"):
        ferroclip.load_model(ckpt, backend="tensorflow")
    with pytest.raises(ModelError, match="cannot read a model config"):
        ferroclip.load_model(tmp_path, device="cpu", local_files_only=True)
    naflex = _models.tiny_siglip2_naflex(tmp_path / "naflex")
    with pytest.raises(ConfigError, match="NaFlex"):
        ferroclip.load_model(naflex, device="cpu")


def test_bfloat16_on_cpu_is_close(checkpoints, images):
    model = ferroclip.load_model(checkpoints["clip"], device="cpu", dtype="bfloat16")
    ref = ferroclip.load_model(checkpoints["clip"], device="cpu").encode_images(images, progress=False).embeddings
    got = model.encode_images(images, progress=False).embeddings
    assert model.dtype == "bfloat16" and got.dtype == np.float32
    assert _cos_min(got, ref) > 0.98


def test_presets_are_listed():
    names = {m.name: m for m in ferroclip.list_models()}
    assert names["clip-vit-b-32"].dim == 512
    assert names["clip-vit-l-14-336"].dim == 768 and names["clip-vit-l-14-336"].image_size == 336
    assert names["siglip2-so400m-14-384"].dim == 1152
    assert names["mobileclip-s2"].backend == "onnx" and names["mobileclip-s2"].image_size == 256


def test_pickle_checkpoints_need_opt_in(checkpoints, tmp_path):
    """A .bin checkpoint is refused by default; use_safetensors=None reads it (weights_only)."""
    src = checkpoints["clip"]
    dst = tmp_path / "bin-ckpt"
    shutil.copytree(src, dst)
    from safetensors.torch import load_file

    torch.save(load_file(dst / "model.safetensors"), dst / "pytorch_model.bin")
    (dst / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="use_safetensors=None"):
        ferroclip.load_model(dst, device="cpu")
    model = ferroclip.load_model(dst, device="cpu", use_safetensors=None)
    ref = ferroclip.load_model(src, device="cpu")
    np.testing.assert_array_equal(model.encode_texts(TEXTS), ref.encode_texts(TEXTS))


def test_preprocessed_float_batches_are_model_input(checkpoints, images):
    """Seed 000 feeds pixel tensors from its own DataLoader: a float (N, 3, H, W) batch,
    numpy or torch, is embedded as it is, and equals embedding the files."""
    model = ferroclip.load_model(checkpoints["clip"], device="cpu")
    pixels = model.preprocessor.preprocess(images, on_error="raise").pixel_values
    ref = model.encode_images(images, progress=False).embeddings
    for batch in (pixels, torch.from_numpy(pixels), pixels.astype(np.float64)):
        res = model.encode_images(batch, batch_size=4, progress=False)
        assert res.ok.all() and not res.errors
        np.testing.assert_allclose(res.embeddings, ref, atol=1e-6)
    raw = model.encode_images(torch.from_numpy(pixels), progress=False, normalize=False).embeddings
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    from ferroclip.errors import ShapeError

    with pytest.raises(ShapeError, match=r"\(N, 3, 32, 32\)"):
        model.encode_images(np.zeros((2, 3, 224, 224), np.float32))
    with pytest.raises(ShapeError, match="NaN"):
        model.encode_images(np.full((1, 3, 32, 32), np.nan, np.float32))
