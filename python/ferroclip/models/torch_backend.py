"""Running a transformers CLIP-family model with PyTorch.

Only the two towers' ``get_image_features`` / ``get_text_features`` are used: that is the
public contract of every CLIP-like model in transformers, so the same code serves CLIP,
SigLIP and fixed-resolution SigLIP2 checkpoints, and the CLIP-architecture dual encoders
with other text towers (AltCLIP's XLM-R, Chinese-CLIP's BERT, MetaCLIP 2's multilingual
vocabulary).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..errors import ConfigError, ModelError, ModelNotFoundError
from .device import torch_dtype
from .registry import offline_miss

__all__ = ["TorchBackend", "features_tensor", "load_hf_model"]

SUPPORTED_MODEL_TYPES = ("clip", "siglip", "altclip", "chinese_clip", "metaclip_2")
_SUPPORTED = (
    "transformers dual encoders with model_type " + ", ".join(SUPPORTED_MODEL_TYPES) + " (SigLIP2 at fixed resolution)"
)


def _not_supported_hint(source: str) -> str:
    """Why a checkpoint people expect to work does not, from the files it holds."""
    p = Path(source)
    if (p / "open_clip_config.json").is_file() or "open_clip" in source.lower():
        return (
            "it is an open_clip checkpoint (open_clip_config.json, no transformers config); "
            "load the transformers export of the same model, or convert it"
        )
    if (p / "modules.json").is_file() or source.startswith("sentence-transformers/"):
        return (
            "it is a sentence-transformers model: a text encoder trained into a CLIP model's space, not a "
            "dual encoder; embed its texts with sentence-transformers and the images with that CLIP "
            "(e.g. clip-vit-b-32 for clip-ViT-B-32-multilingual-v1)"
        )
    return ""


def features_tensor(out: Any) -> Any:
    """transformers >= 5 returns a model output whose ``pooler_output`` is the projection;
    4.x returned the tensor itself."""
    return out if hasattr(out, "shape") else out.pooler_output


def load_hf_model(
    source: str | os.PathLike[str],
    *,
    dtype: str,
    revision: str | None = None,
    local_files_only: bool = False,
    use_safetensors: bool | None = True,
) -> Any:
    """Load weights with SDPA attention.

    ``use_safetensors=True`` (default) accepts only safetensors; ``None`` prefers them and
    falls back to a ``.bin`` checkpoint, which transformers then reads with
    ``torch.load(weights_only=True)`` (tensors only, no arbitrary unpickling).
    """
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(source, revision=revision, local_files_only=local_files_only)
    except (OSError, ValueError) as exc:
        if local_files_only and (miss := offline_miss(str(source), exc)):
            raise ModelNotFoundError(miss, str(source)) from None
        hint = _not_supported_hint(str(source))
        hint = f"; {hint}. ferroclip loads {_SUPPORTED}" if hint else ""
        raise ModelError(f"cannot read a model config from {source!s}: {exc}{hint}") from None
    if config.model_type == "siglip2":
        raise ConfigError(
            f"{source}: SigLIP2 NaFlex (variable resolution) checkpoints are not supported yet; "
            "use a fixed-resolution SigLIP2 checkpoint such as google/siglip2-so400m-patch14-384"
        )
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        hint = _not_supported_hint(str(source))
        raise ConfigError(
            f"{source}: model_type {config.model_type!r} is not a supported CLIP-family model"
            f"{'; ' + hint if hint else ''} (supported: {_SUPPORTED})"
        )
    try:
        model = AutoModel.from_pretrained(
            source,
            revision=revision,
            local_files_only=local_files_only,
            dtype=torch_dtype(dtype),
            attn_implementation="sdpa",
            use_safetensors=use_safetensors,
        )
    except OSError as exc:
        hint = " (only .bin weights? pass use_safetensors=None to allow them)" if use_safetensors else ""
        raise ModelError(f"cannot load weights from {source!s}: {exc}{hint}") from None
    return model.eval()


class TorchBackend:
    """Image and text towers of a transformers model on one device, in one dtype."""

    name = "torch"

    def __init__(self, model: Any, *, device: str, dtype: str) -> None:
        import torch

        self.model = model.to(device)
        self.device = device
        self.dtype = dtype
        self._torch_dtype = torch_dtype(dtype)
        self._cuda = device.startswith("cuda")
        cfg = model.config
        self.dim = int(getattr(cfg, "projection_dim", 0) or cfg.vision_config.hidden_size)
        with torch.no_grad():
            self.logit_scale = float(model.logit_scale.detach().float().exp().item())
            bias = getattr(model, "logit_bias", None)
            self.logit_bias = float(bias.detach().float().item()) if bias is not None else None

    def pixel_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        """A host buffer Rust can write into; page-locked on CUDA so the copy is asynchronous."""
        import torch

        if self._cuda:
            return torch.empty(shape, dtype=torch.float32, pin_memory=True).numpy()
        return np.empty(shape, dtype=np.float32)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(pixels).to(self.device, non_blocking=True).to(self._torch_dtype)
            out = features_tensor(self.model.get_image_features(pixel_values=x))
            return cast("np.ndarray", out.float().cpu().numpy())

    def encode_tokens(self, tokens: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            inputs = {k: torch.from_numpy(v).to(self.device) for k, v in tokens.items()}
            out = features_tensor(self.model.get_text_features(**inputs))
            return cast("np.ndarray", out.float().cpu().numpy())
