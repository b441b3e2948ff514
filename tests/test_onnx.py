"""ONNX export and the ONNX Runtime backend against PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import ferroclip
from ferroclip.errors import ConfigError, ModelError
from ferroclip.models import ExportCheckError, export_onnx
from ferroclip.models import onnx_backend

from .test_models import TEXTS, checkpoints, images  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def exports(checkpoints, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("onnx")
    return {f: export_onnx(ferroclip.load_model(checkpoints[f], device="cpu"), root / f) for f in ("clip", "siglip")}


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_onnx_equals_torch(checkpoints, exports, images, family):  # noqa: F811
    torch_model = ferroclip.load_model(checkpoints[family], device="cpu")
    onnx_model = ferroclip.load_model(exports[family])
    assert onnx_model.backend.name == "onnx" and onnx_model.family == family and onnx_model.dim == torch_model.dim
    a = torch_model.encode_images(images, batch_size=3, progress=False)
    b = onnx_model.encode_images(images, batch_size=3, progress=False)
    assert b.ok.all()
    assert np.abs(a.embeddings - b.embeddings).max() <= 1e-4
    assert np.abs(torch_model.encode_texts(TEXTS) - onnx_model.encode_texts(TEXTS)).max() <= 1e-4
    np.testing.assert_allclose(
        torch_model.zero_shot(images, ["cat", "dog"], progress=False).probs,
        onnx_model.zero_shot(images, ["cat", "dog"], progress=False).probs,
        atol=1e-4,
    )
    meta = json.loads((exports[family] / "ferroclip_onnx.json").read_text())
    assert meta["check"]["vision_max_abs_diff"] <= 1e-4 and meta["family"] == family
    # A detected Pillow rule is not frozen into the export: it follows the loader's Pillow.
    assert "pil_version" not in meta["preprocess"]
    assert onnx_model.preprocess_config == torch_model.preprocess_config


def test_export_manifest_keeps_only_a_pinned_pil_version():
    from types import SimpleNamespace

    from ferroclip.models.export import _manifest_preprocess

    detected = _manifest_preprocess(SimpleNamespace(preprocess_config=ferroclip.PreprocessConfig.clip(32)))
    pinned = _manifest_preprocess(SimpleNamespace(preprocess_config=ferroclip.PreprocessConfig.clip(32, pil_version="12.3.0")))
    assert "pil_version" not in detected and pinned["pil_version"] == "12"
    assert onnx_backend.preprocess_from_dict(json.loads(json.dumps(pinned))) == ferroclip.PreprocessConfig.clip(32, pil_version=12)
    assert onnx_backend.preprocess_from_dict(json.loads(json.dumps(detected))) == ferroclip.PreprocessConfig.clip(32)


def test_export_check_catches_divergence(checkpoints, tmp_path, monkeypatch):  # noqa: F811
    """A graph that computes something else must be refused and leave nothing behind."""
    real_run = onnx_backend._Tower.run

    def skewed(self, feeds):
        out = real_run(self, feeds)
        return out + (0.01 if self.path.name == "vision.onnx" else 0.0)

    monkeypatch.setattr(onnx_backend._Tower, "run", skewed)
    out = tmp_path / "bad"
    with pytest.raises(ExportCheckError, match="diverges"):
        export_onnx(ferroclip.load_model(checkpoints["clip"], device="cpu"), out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir()], "temporary export directory left behind"


def test_export_refuses_to_overwrite(exports, checkpoints):  # noqa: F811
    with pytest.raises(FileExistsError):
        export_onnx(ferroclip.load_model(checkpoints["clip"], device="cpu"), exports["clip"])


def _bare_image_encoder(checkpoints, folder: Path, fixed_batch: bool) -> Path:  # noqa: F811
    """A third-party style ONNX image encoder: one .onnx file, no ferroclip manifest."""
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(checkpoints["clip"]).eval()

    class Vision(torch.nn.Module):
        def forward(self, x):
            return hf.get_image_features(pixel_values=x).pooler_output

    folder.mkdir()
    dyn = None if fixed_batch else {"x": {0: torch.export.Dim("batch")}}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Vision().eval(), (torch.randn(1, 3, 32, 32),), str(folder / "image_encoder.onnx"),
                          input_names=["image"], dynamic_shapes=dyn, dynamo=True, verbose=False)
    return folder


@pytest.mark.reference
def test_third_party_image_encoder_like_mobileclip(checkpoints, images, tmp_path):  # noqa: F811
    """Seed 004: squash-resize, /255, CLIP mean/std, CHW; ORT with a fixed batch of 1."""
    folder = _bare_image_encoder(checkpoints, tmp_path / "mobile", fixed_batch=True)
    cfg = ferroclip.PreprocessConfig(size=(32, 32), resize_mode="squash", rescale="div255")
    with pytest.raises(ConfigError, match="preprocessor_config.json"):
        ferroclip.load_model(folder)
    model = ferroclip.load_model(folder, preprocess=cfg)
    assert model.backend.name == "onnx" and model.backend.vision.fixed_batch == 1
    res = model.encode_images(images, batch_size=4, progress=False, normalize=False)
    assert res.ok.all()
    # Seed 004's reference pipeline, written out.
    mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
    sess = ort.InferenceSession(str(folder / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    for i, p in enumerate(images):
        img = Image.open(p).convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)
        arr = (np.asarray(img, dtype=np.float32) / 255.0 - mean) / std
        ref = sess.run(None, {"image": arr.transpose(2, 0, 1)[None]})[0].reshape(-1)
        np.testing.assert_allclose(res.embeddings[i], ref, atol=1e-5)
    with pytest.raises(Exception, match="no text encoder"):
        model.encode_texts(["a cat"])


def test_third_party_onnx_dir_reads_either_processor_layout(checkpoints, tmp_path):  # noqa: F811
    """The folder's image processor may be saved alone (``preprocessor_config.json``) or
    nested in ``processor_config.json`` (transformers >= 5.24 processors): same config."""
    folder = _bare_image_encoder(checkpoints, tmp_path / "enc", fixed_batch=False)
    ip = {"image_processor_type": "SiglipImageProcessor", "size": {"height": 32, "width": 32}}
    (folder / "processor_config.json").write_text(json.dumps({"image_processor": ip, "processor_class": "SiglipProcessor"}))
    nested = ferroclip.load_model(folder).preprocess_config
    (folder / "processor_config.json").unlink()
    (folder / "preprocessor_config.json").write_text(json.dumps(ip))
    flat = ferroclip.load_model(folder).preprocess_config
    assert nested == flat == ferroclip.PreprocessConfig.siglip(32)


def test_onnx_backend_errors(exports, tmp_path):
    with pytest.raises(ConfigError, match="float32"):
        ferroclip.load_model(exports["clip"], dtype="float16")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ConfigError, match="onnxruntime-gpu"):
            ferroclip.load_model(exports["clip"], device="cuda")
    with pytest.raises(ConfigError, match="backend='onnx'"):
        ferroclip.load_model(exports["clip"], backend="torch")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.onnx").write_bytes(b"not a graph")
    with pytest.raises(ModelError, match="cannot load the ONNX graph"):
        ferroclip.load_model(empty, preprocess=ferroclip.PreprocessConfig.mobileclip())
