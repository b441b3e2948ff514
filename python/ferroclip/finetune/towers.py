"""The two towers of a transformers CLIP/SigLIP model as the training loop sees them.

Fine-tuning touches the model only through ``get_image_features`` / ``get_text_features``
(the contract every CLIP-like transformers model keeps, as inference does) and the
checkpoint's own ``logit_scale`` / ``logit_bias``, so CLIP, SigLIP and fixed-resolution
SigLIP2 share one loop. Locking, partial unlocking, LoRA and gradient checkpointing are set
up here, once, before the optimiser sees the parameters.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from ..errors import ConfigError
from ..models.torch_backend import features_tensor

__all__ = ["Towers"]


def _encoder_layers(tower: nn.Module) -> list[nn.Module]:
    for path in ("encoder.layers", "vision_model.encoder.layers", "text_model.encoder.layers"):
        obj: Any = tower
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return list(obj)
    return []


class Towers(nn.Module):
    """Wraps a transformers dual encoder; ``model`` stays the object that is saved."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.image_trainable = True
        self.text_trainable = True

    # ------------------------------------------------------------------ setup
    def lock(self, *, image: bool, text: bool, image_unlocked_layers: int = 0, text_unlocked_layers: int = 0) -> None:
        """Freeze a tower's parameters, except its last ``*_unlocked_layers`` encoder layers
        (and, then, the layers after them: final norm and projection)."""
        base = self._base()
        for locked, unlocked, tower_name, proj_name in (
            (image, image_unlocked_layers, "vision_model", "visual_projection"),
            (text, text_unlocked_layers, "text_model", "text_projection"),
        ):
            if not locked:
                continue
            tower = getattr(base, tower_name)
            extra = [getattr(base, proj_name)] if hasattr(base, proj_name) else []
            for p in list(tower.parameters()) + [p for m in extra for p in m.parameters()]:
                p.requires_grad_(False)
            if unlocked:
                layers = _encoder_layers(tower)
                if unlocked > len(layers):
                    raise ConfigError(f"{tower_name} has {len(layers)} encoder layers; cannot unlock {unlocked}")
                keep = layers[len(layers) - unlocked :]
                # everything after the encoder (post-norm, pooling head, projection) trains too
                tail = [m for n, m in tower.named_children() if n not in ("embeddings", "encoder", "pre_layrnorm")]
                for m in keep + tail + extra:
                    for p in m.parameters():
                        p.requires_grad_(True)
            trainable = any(p.requires_grad for p in tower.parameters())
            if tower_name == "vision_model":
                self.image_trainable = trainable
            else:
                self.text_trainable = trainable

    def apply_lora(self, options: dict[str, Any]) -> None:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise ConfigError("lora needs peft: pip install 'ferroclip[finetune]'") from None
        opts = dict(options)
        opts.setdefault("target_modules", ["q_proj", "v_proj"])
        try:
            self.model = get_peft_model(self.model, LoraConfig(**opts))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"lora: {exc}") from None

    def merged_model(self) -> nn.Module:
        """The plain transformers model (LoRA weights merged in), for saving and evaluation."""
        if hasattr(self.model, "merge_and_unload"):
            import copy

            peft_model: Any = self.model  # a peft PeftModel (untyped)
            return cast("nn.Module", copy.deepcopy(peft_model).merge_and_unload())
        return self.model

    def enable_gradient_checkpointing(self) -> None:
        base = self._base()
        if not getattr(base, "supports_gradient_checkpointing", False):
            raise ConfigError(f"{type(base).__name__} does not support gradient checkpointing")
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def _base(self) -> Any:
        m: Any = self.model
        return m.get_base_model() if hasattr(m, "get_base_model") else m

    # ------------------------------------------------------------------ forward
    def train(self, mode: bool = True) -> Towers:
        super().train(mode)
        base = self._base()
        # a fully locked tower runs as at inference: no dropout, so it draws no random numbers
        if not self.image_trainable:
            base.vision_model.eval()
        if not self.text_trainable:
            base.text_model.eval()
        return self

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        base = self._base()
        kw: dict[str, Any] = {}
        if pixel_values.shape[-1] != base.config.vision_config.image_size:
            # another size than the position table's (multi-resolution batches): the table is
            # interpolated on the fly, as transformers does for inference at a new size
            kw["interpolate_pos_encoding"] = True
        return cast("torch.Tensor", features_tensor(base.get_image_features(pixel_values=pixel_values, **kw)))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        kw = {"input_ids": input_ids}
        if attention_mask is not None:
            kw["attention_mask"] = attention_mask
        return cast("torch.Tensor", features_tensor(self._base().get_text_features(**kw)))

    @property
    def logit_scale(self) -> nn.Parameter:
        return cast("nn.Parameter", self._base().logit_scale)

    @property
    def logit_bias(self) -> nn.Parameter | None:
        return getattr(self._base(), "logit_bias", None)
