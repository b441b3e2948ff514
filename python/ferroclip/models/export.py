"""Exporting a model's two towers to ONNX, and proving the export right before returning.

The export is checked on real inputs (random pixels and the tokenizer's output for padded
texts of different lengths, so masking is exercised) against the PyTorch model in float32.
A divergence raises :class:`ExportCheckError` and leaves no export behind: an ONNX model
that silently differs from its source is worse than none.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np

from .. import __version__
from ..errors import ConfigError, FerroclipError
from .model import EmbeddingModel
from .onnx_backend import MANIFEST, preprocess_to_dict

__all__ = ["ExportCheckError", "export_onnx"]

_CHECK_TEXTS = [
    "a photo of a cat",
    "a red car parked on a narrow street next to an old stone building, at dusk",
    "dog",
]


class ExportCheckError(FerroclipError, RuntimeError):
    """The exported graph does not reproduce the PyTorch model within tolerance."""


def _towers(hf_model: Any) -> tuple[Any, Any]:
    import torch

    from .torch_backend import features_tensor

    class Vision(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = hf_model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return cast("torch.Tensor", features_tensor(self.m.get_image_features(pixel_values=pixel_values)))

    class Text(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = hf_model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
            return cast("torch.Tensor", features_tensor(self.m.get_text_features(input_ids=input_ids, attention_mask=attention_mask)))

    return Vision().eval(), Text().eval()


def _export(module: Any, args: tuple[Any, ...], path: Path, names: list[str], dynamic: dict[str, Any], opset: int) -> None:
    import torch

    with warnings.catch_warnings():
        # The exporter narrates deprecations of torch internals; nothing a user can act on.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=names,
            output_names=["embeds"],
            dynamic_shapes=dynamic,
            dynamo=True,
            opset_version=opset,
            external_data=False,
            verbose=False,
        )


def _manifest_preprocess(model: EmbeddingModel) -> dict[str, Any]:
    """The preprocessing the export records. A detected ``pil_version`` is left out, so the
    loaded export follows the loader's Pillow like any config; a pinned one is kept."""
    d = preprocess_to_dict(model.preprocess_config)
    if not model.preprocess_config.pil_version_pinned:
        d.pop("pil_version")
    return d


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max()) if a.size else 0.0


def export_onnx(
    model: EmbeddingModel | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    opset: int = 18,
    atol: float = 1e-4,
    overwrite: bool = False,
) -> Path:
    """Export ``model``'s vision and text towers to ``out_dir`` (dynamic batch), check them.

    ``model`` is a torch-backend :class:`EmbeddingModel` or anything :func:`load_model`
    accepts. The export runs in float32 on CPU whatever the model's device and dtype. The
    directory gets ``vision.onnx``, ``text.onnx``, the tokenizer files and
    ``ferroclip_onnx.json``; :func:`load_model` loads it with ``backend="onnx"``.

    Raises:
        ExportCheckError: ONNX Runtime's embeddings differ from PyTorch's by more than
            ``atol`` (max abs, unnormalised); nothing is written then.
    """
    import torch

    from .loader import load_model
    from .onnx_backend import _Tower

    if not isinstance(model, EmbeddingModel):
        model = load_model(model, backend="torch", device="cpu", dtype="float32")
    if model.backend.name != "torch":
        raise ConfigError(f"export_onnx needs a torch-backend model, got backend={model.backend.name!r}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True to replace it)")
    hf_model = model.backend.model  # type: ignore[attr-defined]
    src_device = next(hf_model.parameters()).device
    src_dtype = next(hf_model.parameters()).dtype
    hf_model.to("cpu", torch.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        vision, text = _towers(hf_model)
        h, w = model.preprocessor.output_size
        batch = torch.export.Dim("batch", min=1)
        gen = torch.Generator().manual_seed(0)
        pixels = torch.randn(2, 3, h, w, generator=gen)
        _export(vision, (pixels,), tmp / "vision.onnx", ["pixel_values"], {"pixel_values": {0: batch}}, opset)

        assert model.tokenizer is not None and model.text_rules is not None
        tokens = model.text_rules.tokenize(model.tokenizer, _CHECK_TEXTS[:2])
        names = [k for k in ("input_ids", "attention_mask") if k in tokens]
        if model.text_rules.padding == "max_length":
            seq_dim: Any = {}
        else:
            seq_dim = {1: torch.export.Dim("sequence", min=1, max=model.text_rules.max_length)}
        dyn = {name: {0: batch, **seq_dim} for name in names}
        args = tuple(torch.from_numpy(tokens[n]) for n in names)
        _export(text, args, tmp / "text.onnx", names, dyn, opset)

        # Check on inputs other than the traced ones: another batch size, other lengths.
        check_pixels = torch.randn(3, 3, h, w, generator=gen)
        check_tokens = model.text_rules.tokenize(model.tokenizer, _CHECK_TEXTS)
        with torch.inference_mode():
            ref_img = vision(check_pixels).numpy()
            ref_txt = text(*(torch.from_numpy(check_tokens[n]) for n in names)).numpy()
        providers = ["CPUExecutionProvider"]
        got_img = _Tower(tmp / "vision.onnx", providers, None).run({"pixel_values": check_pixels.numpy()})
        got_txt = _Tower(tmp / "text.onnx", providers, None).run({n: check_tokens[n] for n in names})
        img_diff, txt_diff = _max_diff(got_img, ref_img), _max_diff(got_txt, ref_txt)
        if not (img_diff <= atol and txt_diff <= atol):
            raise ExportCheckError(
                f"ONNX export of {model.name} diverges from PyTorch: max abs diff {img_diff:.3g} (vision), "
                f"{txt_diff:.3g} (text), tolerance {atol:g}"
            )
        model.tokenizer.save_pretrained(tmp)
        manifest = {
            "format": 1,
            "name": model.name,
            "family": model.family,
            "dim": model.dim,
            "vision": "vision.onnx",
            "text": "text.onnx",
            "text_inputs": names,
            "text_rules": model.text_rules.to_dict(),
            "logit_scale": model.backend.logit_scale,
            "logit_bias": model.backend.logit_bias,
            "preprocess": _manifest_preprocess(model),
            "check": {"vision_max_abs_diff": img_diff, "text_max_abs_diff": txt_diff, "atol": atol},
            "exported_with": {"ferroclip": __version__, "torch": torch.__version__, "opset": opset},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        hf_model.to(src_device, src_dtype)
    return out
