"""What `load_model` accepts and refuses: names, dtypes, weights formats, architectures, image options.

Each test is one paper cut a user of seed 000, 003 or 004 hit (issue 17).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

import ferroclip
from ferroclip.errors import ConfigError, ModelError, ModelNotFoundError

from . import _models
from ._images import smooth_rgb

TEXTS = ["a photo of a cat", "a red car on a highway", "dog"]


@pytest.fixture(scope="module")
def clip_ckpt(tmp_path_factory) -> Path:
    return _models.tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(3)
    out = []
    for i, (w, h) in enumerate([(64, 48), (31, 90), (40, 40)]):
        p = root / f"img{i}.png"
        Image.fromarray(smooth_rgb(rng, w, h)).save(p)
        out.append(str(p))
    return out


# ---------------------------------------------------------------- seed 003: torch_dtype, use_safetensors


def test_torch_dtype_is_accepted_as_dtype(clip_ckpt):
    assert ferroclip.load_model(clip_ckpt, device="cpu", torch_dtype="bfloat16").dtype == "bfloat16"
    assert ferroclip.load_model(clip_ckpt, device="cpu", torch_dtype=torch.float32).dtype == "float32"
    assert ferroclip.load_model(clip_ckpt, device="cpu", dtype="float32", torch_dtype="float32").dtype == "float32"
    with pytest.raises(ConfigError, match="disagree"):
        ferroclip.load_model(clip_ckpt, device="cpu", dtype="float32", torch_dtype="bfloat16")


def test_use_safetensors_false_still_reads_safetensors(clip_ckpt, tmp_path):
    """False is seed 003's "pickle allowed", not "safetensors forbidden"."""
    ref = ferroclip.load_model(clip_ckpt, device="cpu").encode_texts(TEXTS)
    got = ferroclip.load_model(clip_ckpt, device="cpu", use_safetensors=False).encode_texts(TEXTS)
    np.testing.assert_array_equal(got, ref)
    # ... and a .bin-only checkpoint loads with it too.
    dst = tmp_path / "bin"
    shutil.copytree(clip_ckpt, dst)
    from safetensors.torch import load_file

    torch.save(load_file(dst / "model.safetensors"), dst / "pytorch_model.bin")
    (dst / "model.safetensors").unlink()
    np.testing.assert_array_equal(ferroclip.load_model(dst, device="cpu", use_safetensors=False).encode_texts(TEXTS), ref)


# ---------------------------------------------------------------- seed 004 / 000: names that cannot be loaded


@pytest.mark.parametrize("name", ["./no/such/model", "/no/such/model", "models/mobileclip/s2", "mobileclip.onnx", "~/nope-model"])
def test_missing_local_path_is_file_not_found(name):
    with pytest.raises(FileNotFoundError, match="no such model file or directory") as info:
        ferroclip.load_model(name, device="cpu")
    assert isinstance(info.value, ModelNotFoundError) and isinstance(info.value, ModelError)
    assert info.value.path == name and name in str(info.value)


def test_missing_pathlike_object_is_file_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="missing-dir"):
        ferroclip.load_model(tmp_path / "missing-dir", backend="onnx")


def test_mistyped_preset_lists_closest_presets_without_the_hub(monkeypatch):
    import huggingface_hub

    def no_network(*a, **k):
        raise AssertionError("the hub must not be asked")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    with pytest.raises(ConfigError, match="did you mean clip-vit-l-14-336") as info:
        ferroclip.load_model("clip-vit-l14-336", device="cpu")
    assert "not a preset, a local path or a hub id" in str(info.value)
    with pytest.raises(ConfigError, match="did you mean siglip2-so400m-14-384"):
        ferroclip.load_model("siglip2-so400m-14-378", device="cpu")
    with pytest.raises(ConfigError, match="valid hub id"):
        ferroclip.load_model("openai/clip vit", device="cpu")


# ---------------------------------------------------------------- seed 003: other CLIP-architecture dual encoders


def _reference(ckpt: Path, images: list[str], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    model = AutoModel.from_pretrained(ckpt, attn_implementation="sdpa").eval()
    proc = AutoImageProcessor.from_pretrained(ckpt, backend="pil")
    tok = AutoTokenizer.from_pretrained(ckpt)
    pix = proc(images=[Image.open(p) for p in images], return_tensors="pt")
    tin = tok(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        img = model.get_image_features(**pix)
        txt = model.get_text_features(**tin)
    img = img if hasattr(img, "shape") else img.pooler_output
    txt = txt if hasattr(txt, "shape") else txt.pooler_output
    norm = torch.nn.functional.normalize
    return norm(img, dim=-1).numpy(), norm(txt, dim=-1).numpy()


@pytest.mark.reference
@pytest.mark.parametrize("kind", ["chinese_clip", "metaclip_2"])
def test_other_clip_architectures_embed_as_transformers(tmp_path, images, kind):
    build = {"chinese_clip": _models.tiny_chinese_clip, "metaclip_2": _models.tiny_metaclip2}[kind]
    ckpt = build(tmp_path / kind)
    model = ferroclip.load_model(ckpt, device="cpu")
    assert model.family == kind
    ref_img, ref_txt = _reference(ckpt, images, TEXTS)
    res = model.encode_images(images, progress=False)
    assert res.ok.all()
    np.testing.assert_allclose(res.embeddings, ref_img, atol=1e-5)
    np.testing.assert_allclose(model.encode_texts(TEXTS), ref_txt, atol=1e-5)


def test_unsupported_checkpoints_say_what_is_supported(tmp_path):
    oc = tmp_path / "open_clip_ckpt"
    oc.mkdir()
    (oc / "open_clip_config.json").write_text("{}")
    with pytest.raises(ModelError, match="open_clip checkpoint") as info:
        ferroclip.load_model(oc, device="cpu")
    assert "altclip, chinese_clip, metaclip_2" in str(info.value)
    st = tmp_path / "st-multilingual"
    st.mkdir()
    (st / "modules.json").write_text("[]")
    (st / "config.json").write_text('{"model_type": "distilbert"}')
    with pytest.raises(ConfigError, match="sentence-transformers model") as info:
        ferroclip.load_model(st, device="cpu")
    assert "supported: transformers dual encoders with model_type clip, siglip" in str(info.value)


# ---------------------------------------------------------------- seed 004: image options on load_model


def test_load_model_takes_the_preprocessor_image_options(clip_ckpt, tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 30  # mostly transparent red: white compositing and dropping differ a lot
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    white = ferroclip.load_model(clip_ckpt, device="cpu")
    drop = ferroclip.load_model(clip_ckpt, device="cpu", alpha="drop")
    no_exif = ferroclip.load_model(clip_ckpt, device="cpu", exif_transpose=False)
    assert white.preprocessor.alpha == "white" and drop.preprocessor.alpha == "drop"
    assert no_exif.preprocessor.exif_transpose is False
    dropped = Image.open(path).convert("RGB")
    ref = ferroclip.Preprocessor(white.preprocess_config, alpha="drop").preprocess([np.asarray(dropped)]).pixel_values
    got = drop.preprocessor.preprocess([str(path)]).pixel_values
    np.testing.assert_array_equal(got, ref)
    assert np.abs(white.preprocessor.preprocess([str(path)]).pixel_values - got).max() > 0.5
    with pytest.raises(ConfigError, match="alpha"):
        ferroclip.load_model(clip_ckpt, device="cpu", alpha="black")
