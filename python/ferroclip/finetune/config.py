"""`FinetuneConfig`: seed 001's ``CLIPFinetuningConfig`` fields and defaults, plus what a
whole-model fine-tuning run needs beyond them (steps, locking, LoRA, WiSE-FT).

Unknown keys are errors that name the key and the closest valid one: a typo such as
``learning_rat`` must not silently train with the default. ``domain`` presets set the
seed's learning rate and epoch count unless the config sets them itself.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from .._atomic import atomic_write
from ..errors import ConfigError
from ..train.config import _build, _read_yaml

__all__ = ["DOMAIN_PRESETS", "LOSS_TYPES", "FinetuneConfig"]

LossType = Literal["auto", "contrastive", "sigmoid", "hard_negative", "domain_specific", "multi_scale"]
LOSS_TYPES = ("auto", "contrastive", "sigmoid", "hard_negative", "domain_specific", "multi_scale")
# The seed's domain presets (its README's "Domain-Specific Configuration").
DOMAIN_PRESETS: dict[str, dict[str, Any]] = {
    "general": {},
    "medical": {"learning_rate": 3.0e-5, "num_epochs": 15},
    "industrial": {"learning_rate": 5.0e-5, "num_epochs": 12},
    "scientific": {"learning_rate": 4.0e-5, "num_epochs": 10},
}


@dataclass
class FinetuneConfig:
    """One fine-tuning run. Field names and defaults are seed 001's where it has them.

    Fields beyond the seed: ``max_steps`` (stop early; None = all epochs), ``output_dir``
    (default ``outputs/<config file stem>`` or ``outputs/finetune``), ``lock_image`` /
    ``lock_text`` (freeze a tower) with ``*_unlocked_layers`` (then train only its last N
    encoder layers, as open_clip's ``--lock-image-unlocked-groups``),
    ``gradient_checkpointing``, ``lora`` (peft ``LoraConfig`` keywords, e.g.
    ``{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}``), ``wise_ft_alphas``,
    ``early_stopping_patience`` (evaluations without a better val R@1), the data's column
    names, augmentation settings (``multi_resolution``: train each batch at one of these
    sizes, drawn per batch from the seed), and ``device``.
    """

    # model
    model_name: str = "openai/clip-vit-base-patch32"
    domain: str = "general"
    # training hyperparameters
    learning_rate: float = 5e-5
    batch_size: Optional[int] = None
    num_epochs: int = 10
    max_sequence_length: int = 77
    image_resolution: Optional[int] = None
    multi_resolution: Optional[list[int]] = None
    # hardware
    use_mps: bool = True
    mixed_precision: Union[bool, str] = True
    gradient_accumulation_steps: int = 1
    # data
    data_path: str = "data"
    train_split: float = 0.8
    val_split: float = 0.1
    test_split: float = 0.1
    num_workers: int = 4
    shuffle: bool = True
    augment_images: bool = True
    augment_text: bool = False
    image_column: str = "image_path"
    caption_column: str = "caption"
    csv_separator: str = ","
    # a class-name column of a CSV/TSV/JSON table: validation then also reports zero-shot
    # accuracy (each class as the mean of its prompts from zero_shot_templates)
    label_column: Optional[str] = None
    zero_shot_templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    # augmentation (used when augment_images)
    crop_scale: list[float] = field(default_factory=lambda: [0.9, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 4.0 / 3.0])
    hflip: float = 0.0
    color_jitter: Optional[list[float]] = None
    grayscale: float = 0.0
    # loss
    loss_type: LossType = "auto"
    temperature: float = 0.07
    learnable_temp: bool = False
    hard_negative_ratio: float = 0.5
    hard_negative_mining_strategy: Literal["semi-hard", "hard", "weighted"] = "semi-hard"
    hard_negative_weight: float = 2.0
    domain_weight: float = 1.0
    temperature_scheduling: bool = False
    temperature_schedule_type: Literal["constant", "warmup", "cosine", "exponential", "adaptive"] = "cosine"
    min_temp: float = 0.01
    max_temp: float = 0.1
    multi_scale_scales: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5])
    multi_scale_weights: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5])
    # optimisation and bookkeeping
    warmup_steps: int = 500
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    save_steps: int = 1000
    eval_steps: int = 500
    logging_steps: int = 100
    seed: int = 42
    # beyond the seed
    max_steps: Optional[int] = None
    output_dir: Optional[str] = None
    lock_image: bool = False
    lock_text: bool = False
    lock_image_unlocked_layers: int = 0
    lock_text_unlocked_layers: int = 0
    gradient_checkpointing: bool = False
    lora: Optional[dict[str, Any]] = None
    wise_ft_alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    early_stopping_patience: Optional[int] = None
    eval_batch_size: int = 64
    device: str = "auto"

    def __post_init__(self) -> None:
        # Built in Python: a preset fills the fields still at their defaults.
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        self._apply_domain({k for k in DOMAIN_PRESETS.get(self.domain, {}) if getattr(self, k) != defaults[k]})

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, body: Any, where: str = "config") -> FinetuneConfig:
        if body is not None and not isinstance(body, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(body).__name__}")
        body = dict(body or {})
        domain = body.pop("domain", "general")
        cfg: FinetuneConfig = _build(cls, body, where, skip=("mixed_precision", "lora"))
        if not isinstance(domain, str):
            raise ConfigError(f"{where}: domain: expected a string, got {domain!r}")
        cfg.domain = domain
        cfg._apply_domain(set(body))  # from a file: a preset fills what the file leaves out
        cfg.validate(where)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> FinetuneConfig:
        """Read a YAML config; ``data_path`` and ``output_dir`` resolve against its folder."""
        p = Path(path)
        body = _read_yaml(p)
        cfg = cls.from_dict(body, str(p))
        base = p.resolve().parent
        if not Path(cfg.data_path).is_absolute() and "://" not in cfg.data_path:
            cfg.data_path = str(base / cfg.data_path)
        cfg.output_dir = str(base / (cfg.output_dir or f"outputs/{p.stem}"))
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_yaml(self, path: str | os.PathLike[str]) -> None:
        import yaml

        with atomic_write(path) as fh:
            fh.write(yaml.safe_dump(self.to_dict(), sort_keys=False).encode("utf-8"))

    def _apply_domain(self, explicit: set[str]) -> None:
        for key, value in DOMAIN_PRESETS.get(self.domain, {}).items():
            if key not in explicit:
                setattr(self, key, value)

    # ------------------------------------------------------------------ derived values
    @property
    def precision(self) -> str:
        """``"bf16"``, ``"fp16"`` or ``"fp32"`` as asked; the device decides what is used."""
        mp = self.mixed_precision
        if mp is True:
            return "auto"
        if mp is False:
            return "fp32"
        return str(mp)

    def resolved_loss(self, family: str) -> str:
        if self.loss_type != "auto":
            return self.loss_type
        return "sigmoid" if family.startswith("siglip") else "contrastive"

    # ------------------------------------------------------------------ validation
    def validate(self, where: str = "config") -> None:
        def need(ok: bool, key: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"{where}: {key}: {msg}")

        need(bool(self.zero_shot_templates) and all(isinstance(t, str) and "{}" in t for t in self.zero_shot_templates),
             "zero_shot_templates", "must be a non-empty list of strings, each with a '{}' for the class name")
        need(self.domain in DOMAIN_PRESETS, "domain", f"unknown domain {self.domain!r}; use one of {sorted(DOMAIN_PRESETS)}")
        need(self.learning_rate > 0, "learning_rate", f"must be positive, got {self.learning_rate}")
        need(self.batch_size is None or self.batch_size >= 2, "batch_size", f"must be >= 2 (a contrastive batch needs negatives) or null, got {self.batch_size}")
        need(self.num_epochs >= 1, "num_epochs", f"must be >= 1, got {self.num_epochs}")
        need(self.max_sequence_length >= 2, "max_sequence_length", f"must be >= 2, got {self.max_sequence_length}")
        need(self.image_resolution is None or self.image_resolution >= 8, "image_resolution", f"must be >= 8 or null, got {self.image_resolution}")
        need(self.multi_resolution is None or (bool(self.multi_resolution) and all(isinstance(s, int) and s >= 8 for s in self.multi_resolution)),
             "multi_resolution", f"must be a non-empty list of sizes >= 8 or null, got {self.multi_resolution}")
        need(self.multi_resolution is None or self.augment_images, "multi_resolution",
             "needs augment_images: true (the training sizes come from the random resized crop)")
        need(self.mixed_precision in (True, False, "bf16", "fp16", "fp32"), "mixed_precision", f"use true, false, 'bf16', 'fp16' or 'fp32', got {self.mixed_precision!r}")
        need(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", f"must be >= 1, got {self.gradient_accumulation_steps}")
        for k in ("train_split", "val_split", "test_split"):
            need(0.0 <= getattr(self, k) <= 1.0, k, f"must be in [0, 1], got {getattr(self, k)}")
        total = self.train_split + self.val_split + self.test_split
        need(abs(total - 1.0) < 1e-6, "train_split", f"train_split + val_split + test_split must be 1, got {total}")
        need(self.train_split > 0, "train_split", "must be positive")
        need(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        need(len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1, "crop_scale", f"must be [min, max] within (0, 1], got {self.crop_scale}")
        need(len(self.crop_ratio) == 2 and 0 < self.crop_ratio[0] <= self.crop_ratio[1], "crop_ratio", f"must be [min, max] with 0 < min <= max, got {self.crop_ratio}")
        need(0 <= self.hflip <= 1 and 0 <= self.grayscale <= 1, "hflip", "hflip and grayscale are probabilities in [0, 1]")
        need(self.color_jitter is None or len(self.color_jitter) == 4, "color_jitter", "must be [brightness, contrast, saturation, hue] or null")
        need(self.temperature > 0, "temperature", f"must be positive, got {self.temperature}")
        need(0 < self.min_temp <= self.max_temp, "min_temp", f"need 0 < min_temp <= max_temp, got {self.min_temp}, {self.max_temp}")
        need(0 <= self.hard_negative_ratio <= 1, "hard_negative_ratio", f"must be in [0, 1], got {self.hard_negative_ratio}")
        need(self.hard_negative_weight >= 1, "hard_negative_weight", f"must be >= 1, got {self.hard_negative_weight}")
        need(self.domain_weight >= 0, "domain_weight", f"must be >= 0, got {self.domain_weight}")
        need(len(self.multi_scale_scales) == len(self.multi_scale_weights) > 0, "multi_scale_weights", "needs one weight per scale")
        need(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        need(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        need(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0 (0: no clipping), got {self.max_grad_norm}")
        for k in ("save_steps", "eval_steps", "logging_steps"):
            need(getattr(self, k) >= 1, k, f"must be >= 1, got {getattr(self, k)}")
        need(self.max_steps is None or self.max_steps >= 1, "max_steps", f"must be >= 1 or null, got {self.max_steps}")
        need(not (self.lock_image and self.lock_text and self.lora is None and self.lock_image_unlocked_layers == 0 and self.lock_text_unlocked_layers == 0),
             "lock_image", "both towers locked: nothing would train (unlock some layers, or use LoRA)")
        need(self.lock_image_unlocked_layers >= 0 and self.lock_text_unlocked_layers >= 0, "lock_image_unlocked_layers", "must be >= 0")
        need(self.lora is None or isinstance(self.lora, dict), "lora", "must be a mapping of peft LoraConfig keywords or null")
        need(all(0.0 <= a <= 1.0 for a in self.wise_ft_alphas), "wise_ft_alphas", f"each alpha must be in [0, 1], got {self.wise_ft_alphas}")
        need(self.early_stopping_patience is None or self.early_stopping_patience >= 1, "early_stopping_patience", "must be >= 1 or null")
        need(self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")
