"""`PreprocessConfig`: the whole preprocessing contract of a model, as data.

A config says what the model expects (resize rule, crop, filter, normalisation) and which
Pillow's resize to reproduce (``pil_version``: Pillow 13 orders the two resampling passes
differently from Pillow 12, and the uint8 rounding between them makes that visible). How
the input is read (EXIF, transparency, limits, fast JPEG decoding) is a `Preprocessor`
option. Presets cover the common families; `from_pretrained` reads a checkpoint's image
processor (``preprocessor_config.json``, or the ``image_processor`` nested in
``processor_config.json`` that transformers >= 5.24 writes) the way transformers does;
`from_open_clip` takes an open_clip ``PreprocessCfg``.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "NEWEST_PIL_VERSION",
    "PIL_VERSIONS",
    "PreprocessConfig",
    "SIGLIP_MEAN",
    "SIGLIP_STD",
    "installed_pil_version",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

ResizeMode = Literal["shortest", "squash", "longest", "none"]
Resample = Literal["bicubic", "bilinear", "lanczos"]
Rescale = Literal["mul", "div255", "none"]

# Pillow's resize pass orders, by the releases that use them (see `PreprocessConfig.pil_version`).
PilVersion = Literal["12.1", "12", "13"]
PIL_VERSIONS: dict[str, str] = {
    "12.1": "Pillow 10.0-12.1: horizontal pass first, always",
    "12": "Pillow 12.2-12.x: vertical pass first only for images over 100x taller than wide",
    "13": "Pillow 13: vertical pass first when the height loses over twice the pixels the width does",
}
#: The rule used when PIL is not installed (and for PIL releases newer than ferroclip knows).
NEWEST_PIL_VERSION: PilVersion = "13"
_OLDEST_PIL_MAJOR = 10  # the `pil` extra's floor; older releases were not checked
_VERSION_RE = re.compile(r"(\d+)(?:\.(\d+))?(?:\.\d+)?(?:[.+-]?[0-9A-Za-z.+-]*)?")

# The two files an image processor is saved in (transformers' IMAGE_PROCESSOR_NAME, PROCESSOR_NAME).
IMAGE_PROCESSOR_CONFIG = "preprocessor_config.json"
PROCESSOR_CONFIG = "processor_config.json"

# PIL.Image.Resampling values, as stored in preprocessor_config.json.
_PIL_RESAMPLE: dict[int, Resample] = {3: "bicubic", 2: "bilinear", 1: "lanczos"}
_PIL_RESAMPLE_NAMES = {0: "NEAREST", 4: "BOX", 5: "HAMMING"}


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be an int or (height, width), got {value!r}")
    if isinstance(value, int):
        return (value, value)
    try:
        h, w = value
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be an int or (height, width), got {value!r}") from None
    return (int(h), int(w))


def _triple(value: float | Sequence[float] | None, what: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    vals = tuple(float(v) for v in value)
    if len(vals) != 3:
        raise ConfigError(f"{what} must have 3 values (RGB), got {len(vals)}")
    return vals


@functools.cache
def installed_pil_version() -> str | None:
    """``PIL.__version__`` of the Pillow this process imports, or None without Pillow.

    Read once: the reference a default config matches is the Pillow installed now.
    """
    try:
        import PIL
    except ImportError:
        return None
    version = getattr(PIL, "__version__", None)
    return version if isinstance(version, str) else None


def _rule_of(major: int, minor: int | None) -> PilVersion:
    if major >= 13:
        return "13"
    if major == 12 and (minor is None or minor >= 2):
        return "12"
    return "12.1"


def _parse_pil_version(value: object) -> tuple[int, int | None] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (value, None)
    if isinstance(value, str):
        m = _VERSION_RE.fullmatch(value.strip())
        if m:
            return (int(m.group(1)), None if m.group(2) is None else int(m.group(2)))
    return None


def resolve_pil_version(value: str | int | None) -> tuple[PilVersion, bool]:
    """``(rule, pinned)`` for a ``pil_version`` argument: ``None`` follows the installed
    Pillow (the newest rule without one); a version string or major number pins it."""
    if value is None:
        installed = installed_pil_version()
        parsed = _parse_pil_version(installed) if installed is not None else None
        if parsed is None:
            return NEWEST_PIL_VERSION, False
        return _rule_of(*parsed), False
    parsed = _parse_pil_version(value)
    if parsed is None:
        raise ConfigError(
            f"pil_version must be a Pillow version such as '12', '13' or '12.3.0' (or None for the installed "
            f"Pillow), got {value!r}"
        )
    major, _ = parsed
    if major > 13:
        raise ConfigError(
            f"pil_version={value!r}: Pillow {major} is newer than this ferroclip knows; the newest resize rule "
            f"it reproduces is Pillow {NEWEST_PIL_VERSION}'s (pil_version={NEWEST_PIL_VERSION!r})"
        )
    if major < _OLDEST_PIL_MAJOR:
        raise ConfigError(f"pil_version={value!r}: Pillow releases before {_OLDEST_PIL_MAJOR}.0 are not supported")
    return _rule_of(*parsed), True


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model wants its pixels.

    Attributes:
        size: ``(height, width)`` target of the resize. For ``"shortest"`` both are the
            shortest-edge length.
        resize_mode: ``"shortest"`` (short side to ``size``, long side truncated, as HF CLIP
            and torchvision ``Resize(int)``), ``"squash"`` (exactly ``size``, as SigLIP),
            ``"longest"`` (fit inside ``size`` keeping the ratio, as open_clip), ``"none"``.
        crop_size: ``(height, width)`` of the centre crop, or ``None``. Images smaller than
            the crop are padded with ``fill_color``.
        crop_rounding: ``"floor"`` for HF's crop offsets, ``"round"`` for torchvision's.
        resample: Pillow's filter: ``"bicubic"``, ``"bilinear"`` or ``"lanczos"``.
        rescale: ``"mul"`` (HF: ``float64(v) * rescale_factor``), ``"div255"``
            (torchvision ``ToTensor``: float32 ``v / 255``), or ``"none"``.
        image_mean, image_std: per-channel normalisation, or ``None`` to skip it.
        fill_color: padding colour (0-255), a gray level or an RGB triple.
        alpha: what the reference does with transparency: ``"white"`` composites onto
            white (HF processors' ``convert_to_rgb``), ``"drop"`` discards the alpha
            channel (PIL ``convert("RGB")``: MobileCLIP's and open_clip's pipelines). A
            :class:`Preprocessor` may override it.
        pil_version: which Pillow's resize to reproduce byte for byte. Pillow 13 runs the
            vertical pass first when the height shrinks by more than twice as many pixels
            as the width (python-pillow/Pillow#9549); Pillow 12.2-12.x only for images
            over 100 times taller than wide; Pillow 10.0-12.1 never. The passes round to
            uint8 in between, so tall images differ by a few levels between releases.
            Default ``None``: the Pillow installed here (``PIL.__version__``), else the
            newest, so the output equals what the user's own PIL-based processor gives.
            Pin a release with ``"12"``, ``"13"``, a full version (``"12.3.0"``) or a major
            number; the field then holds the rule: ``"12.1"``, ``"12"`` or ``"13"``.
        name: where the config came from, for messages and reports.
    """

    size: tuple[int, int]
    resize_mode: ResizeMode = "shortest"
    crop_size: tuple[int, int] | None = None
    crop_rounding: Literal["floor", "round"] = "floor"
    resample: Resample = "bicubic"
    rescale: Rescale = "mul"
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] | None = CLIP_MEAN
    image_std: tuple[float, float, float] | None = CLIP_STD
    fill_color: int | tuple[int, int, int] = 0
    alpha: Literal["white", "drop"] = "white"
    name: str = field(default="custom", compare=False)
    pil_version: str | int | None = None
    # Whether `pil_version` was asked for rather than detected; an ONNX export records only
    # a pinned rule, so an export made under one Pillow follows the loader's Pillow.
    pil_version_pinned: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rule, pinned = resolve_pil_version(self.pil_version)
        object.__setattr__(self, "pil_version", rule)
        object.__setattr__(self, "pil_version_pinned", pinned)
        object.__setattr__(self, "size", _pair(self.size, "size"))
        if self.crop_size is not None:
            object.__setattr__(self, "crop_size", _pair(self.crop_size, "crop_size"))
        object.__setattr__(self, "image_mean", _triple(self.image_mean, "image_mean"))
        object.__setattr__(self, "image_std", _triple(self.image_std, "image_std"))
        if self.resize_mode not in ("shortest", "squash", "longest", "none"):
            raise ConfigError(f"resize_mode must be 'shortest', 'squash', 'longest' or 'none', got {self.resize_mode!r}")
        if self.resize_mode == "shortest" and self.size[0] != self.size[1]:
            raise ConfigError(f"a shortest-edge resize takes one length, got size={self.size}")
        if min(self.size) <= 0 or (self.crop_size is not None and min(self.crop_size) <= 0):
            raise ConfigError(f"sizes must be positive, got size={self.size}, crop_size={self.crop_size}")
        if self.resample not in ("bicubic", "bilinear", "lanczos"):
            raise ConfigError(f"resample must be 'bicubic', 'bilinear' or 'lanczos', got {self.resample!r}")
        if self.crop_rounding not in ("floor", "round"):
            raise ConfigError(f"crop_rounding must be 'floor' or 'round', got {self.crop_rounding!r}")
        if self.alpha not in ("white", "drop"):
            raise ConfigError(f"alpha must be 'white' or 'drop', got {self.alpha!r}")
        if self.rescale not in ("mul", "div255", "none"):
            raise ConfigError(f"rescale must be 'mul', 'div255' or 'none', got {self.rescale!r}")
        if (self.image_mean is None) != (self.image_std is None):
            raise ConfigError("image_mean and image_std must both be set or both be None")
        if self.image_std is not None and any(s == 0 for s in self.image_std):
            raise ConfigError(f"image_std must be non-zero, got {self.image_std}")
        fill = self.fill_color
        fill3 = (fill,) * 3 if isinstance(fill, int) else tuple(fill)
        if len(fill3) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in fill3):
            raise ConfigError(f"fill_color must be 0-255 or an RGB triple of them, got {fill!r}")
        if self.crop_size is None and self.resize_mode in ("shortest", "longest"):
            raise ConfigError(
                f"resize_mode={self.resize_mode!r} without a crop gives a different size per image; set crop_size"
            )

    @property
    def output_size(self) -> tuple[int, int]:
        """``(height, width)`` of every preprocessed image."""
        if self.crop_size is not None:
            return self.crop_size
        return self.size

    @property
    def fill_rgb(self) -> tuple[int, int, int]:
        f = self.fill_color
        return (f, f, f) if isinstance(f, int) else tuple(f)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """The init arguments as plain data (``PreprocessConfig(**d)`` rebuilds it)."""
        d = asdict(self)
        d.pop("pil_version_pinned")
        return d

    # ----------------------------------------------------------------- presets
    @classmethod
    def clip(cls, size: int = 224, *, pil_version: str | int | None = None) -> PreprocessConfig:
        """HF ``CLIPImageProcessor``: shortest edge to ``size``, centre crop, bicubic, CLIP mean/std."""
        return cls(
            size=(size, size), resize_mode="shortest", crop_size=(size, size), name=f"clip-{size}", pil_version=pil_version
        )

    @classmethod
    def siglip(cls, size: int = 224, *, pil_version: str | int | None = None) -> PreprocessConfig:
        """HF ``SiglipImageProcessor`` (also SigLIP2 fixed-resolution checkpoints): squash, 0.5/0.5."""
        return cls(
            size=(size, size),
            resize_mode="squash",
            image_mean=SIGLIP_MEAN,
            image_std=SIGLIP_STD,
            name=f"siglip-{size}",
            pil_version=pil_version,
        )

    @classmethod
    def mobileclip(cls, size: int = 256, *, pil_version: str | int | None = None) -> PreprocessConfig:
        """MobileCLIP ONNX as seed 004 runs it: ``convert("RGB")`` (alpha dropped), PIL bicubic
        resize to ``size`` x ``size``, float32 ``v / 255``, CLIP mean/std."""
        return cls(
            size=(size, size),
            resize_mode="squash",
            rescale="div255",
            alpha="drop",
            name=f"mobileclip-{size}",
            pil_version=pil_version,
        )

    @classmethod
    def from_open_clip(
        cls,
        cfg: Any = None,
        *,
        size: int | Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        interpolation: str | None = None,
        resize_mode: str | None = None,
        fill_color: int | None = None,
        pil_version: str | int | None = None,
    ) -> PreprocessConfig:
        """From an open_clip ``PreprocessCfg`` (or its dict, or keywords) for its eval transform.

        open_clip resizes through torchvision on PIL images (so Pillow's filters), crops with
        torchvision's rounding and rescales with ``ToTensor``; all three are mirrored here.
        """
        if cfg is not None:
            d = dict(cfg) if isinstance(cfg, Mapping) else {k: getattr(cfg, k) for k in vars(cfg)}
        else:
            d = {}
        for key, value in (
            ("size", size),
            ("mean", mean),
            ("std", std),
            ("interpolation", interpolation),
            ("resize_mode", resize_mode),
            ("fill_color", fill_color),
        ):
            if value is not None:
                d[key] = value
        size_hw = _pair(d.get("size", 224), "size")
        mode = d.get("resize_mode", "shortest")
        interp = d.get("interpolation", "bicubic")
        if interp not in ("bicubic", "bilinear"):
            raise ConfigError(f"open_clip interpolation {interp!r} is not supported (bicubic, bilinear)")
        common: dict[str, Any] = dict(
            resample=interp,
            rescale="div255",
            crop_rounding="round",
            image_mean=tuple(d.get("mean", CLIP_MEAN)),
            image_std=tuple(d.get("std", CLIP_STD)),
            fill_color=int(d.get("fill_color", 0)),
            name="open_clip",
            pil_version=pil_version,
        )
        if mode == "shortest":
            if size_hw[0] != size_hw[1]:
                raise ConfigError("open_clip 'shortest' with a non-square size is not supported")
            return cls(size=size_hw, resize_mode="shortest", crop_size=size_hw, **common)
        if mode == "squash":
            return cls(size=size_hw, resize_mode="squash", **common)
        if mode == "longest":
            return cls(size=size_hw, resize_mode="longest", crop_size=size_hw, **common)
        raise ConfigError(f"open_clip resize_mode must be 'shortest', 'squash' or 'longest', got {mode!r}")

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        pil_version: str | int | None = None,
    ) -> PreprocessConfig:
        """Read a checkpoint's image processor from a directory, a JSON file or a hub id.

        transformers saves it in one of two layouts and reads both, so both are read here,
        with transformers' priority: the ``"image_processor"`` dict nested in
        ``processor_config.json`` (what ``XProcessor.save_pretrained`` writes from
        transformers 5.24 on, with no ``preprocessor_config.json`` beside it), else
        ``preprocessor_config.json`` (image processors saved alone, older checkpoints).
        """
        path = Path(name_or_path)
        if path.is_dir():
            files = [f for f in (path / PROCESSOR_CONFIG, path / IMAGE_PROCESSOR_CONFIG) if f.is_file()]
            if not files:
                raise ConfigError(
                    f"{path}: no {IMAGE_PROCESSOR_CONFIG} (nor a {PROCESSOR_CONFIG} with an image processor) in this directory"
                )
        elif path.is_file():
            files = [path]
        else:
            files = _hub_download(str(name_or_path), revision, cache_dir, local_files_only)
        data = _image_processor_dict(files, str(name_or_path))
        return cls.from_hf_dict(data, name=str(name_or_path), pil_version=pil_version)

    @classmethod
    def from_hf_dict(
        cls,
        d: Mapping[str, Any],
        *,
        name: str = "hf",
        pil_version: str | int | None = None,
    ) -> PreprocessConfig:
        """Interpret a transformers image-processor dict (CLIP, SigLIP, SigLIP2 fixed-res).

        ``d`` is the image processor's own dict; a whole processor dict (``processor_config.json``
        of transformers >= 5.24) is accepted too and its nested ``"image_processor"`` used.
        """
        nested = d.get("image_processor")
        if isinstance(nested, Mapping):
            d = nested
        elif "processor_class" in d and not any(k in d for k in ("image_processor_type", "feature_extractor_type", "size")):
            raise ConfigError(f"{name}: a processor config without an image processor in it")
        kind = str(d.get("image_processor_type", d.get("feature_extractor_type", "")))
        family = kind.removesuffix("Fast").removesuffix("Pil")
        if family == "Siglip2ImageProcessor":
            raise ConfigError(
                f"{name}: SigLIP2 NaFlex (variable resolution) preprocessing is not supported; "
                "fixed-resolution SigLIP2 checkpoints use SiglipImageProcessor"
            )
        is_siglip = family.startswith("Siglip")
        defaults: dict[str, Any]
        if is_siglip:
            defaults = dict(size={"height": 224, "width": 224}, do_center_crop=False, mean=SIGLIP_MEAN, std=SIGLIP_STD)
        elif family in ("CLIPImageProcessor", "CLIPFeatureExtractor", ""):
            defaults = dict(size={"shortest_edge": 224}, do_center_crop=True, mean=CLIP_MEAN, std=CLIP_STD)
        elif family in ("ChineseCLIPImageProcessor", "ChineseCLIPFeatureExtractor"):
            defaults = dict(size={"height": 224, "width": 224}, do_center_crop=True, mean=CLIP_MEAN, std=CLIP_STD)
        else:
            raise ConfigError(f"{name}: unsupported image processor {kind!r} (CLIP, Chinese-CLIP and SigLIP families are)")
        size = d.get("size", defaults["size"])
        if isinstance(size, int):
            size = {"height": size, "width": size} if is_siglip else {"shortest_edge": size}
        if not isinstance(size, Mapping):
            raise ConfigError(f"{name}: cannot read size {size!r}")
        do_resize = bool(d.get("do_resize", True))
        if not do_resize:
            mode: ResizeMode = "none"
            size_hw = (1, 1)
        elif "shortest_edge" in size and "longest_edge" not in size:
            mode, size_hw = "shortest", (int(size["shortest_edge"]),) * 2
        elif "height" in size and "width" in size:
            mode, size_hw = "squash", (int(size["height"]), int(size["width"]))
        else:
            raise ConfigError(f"{name}: unsupported size rule {dict(size)!r}")
        crop = None
        if bool(d.get("do_center_crop", defaults["do_center_crop"])):
            c = d.get("crop_size", {"height": size_hw[0], "width": size_hw[1]})
            crop = (int(c), int(c)) if isinstance(c, int) else (int(c["height"]), int(c["width"]))
        resample_id = int(d.get("resample", 3))
        if resample_id not in _PIL_RESAMPLE:
            label = _PIL_RESAMPLE_NAMES.get(resample_id, str(resample_id))
            raise ConfigError(f"{name}: resample={label} is not supported (BICUBIC, BILINEAR, LANCZOS are)")
        do_rescale = bool(d.get("do_rescale", True))
        do_normalize = bool(d.get("do_normalize", True))
        if mode == "none" and crop is None:
            raise ConfigError(f"{name}: without resize or crop every image keeps its own size; cannot batch")
        if mode == "none":
            size_hw = crop  # type: ignore[assignment]
        return cls(
            size=size_hw,
            resize_mode=mode,
            crop_size=crop,
            resample=_PIL_RESAMPLE[resample_id],
            rescale="mul" if do_rescale else "none",
            rescale_factor=float(d.get("rescale_factor", 1 / 255)),
            image_mean=tuple(d.get("image_mean", defaults["mean"])) if do_normalize else None,
            image_std=tuple(d.get("image_std", defaults["std"])) if do_normalize else None,
            name=name,
            pil_version=pil_version,
        )


def _image_processor_dict(files: list[Path], name: str) -> dict[str, Any]:
    """The image processor's dict from the first of ``files`` that holds one.

    A ``processor_config.json`` without a nested ``"image_processor"`` (older transformers
    write one for the processor class alone) is passed over for the next file.
    """
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read preprocessor config: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: preprocessor config must be a JSON object")
        nested = data.get("image_processor")
        if isinstance(nested, dict):
            return nested
        if path.name == PROCESSOR_CONFIG and len(files) > 1:
            continue
        if path.name == PROCESSOR_CONFIG and "processor_class" in data:
            raise ConfigError(
                f"{path}: this {PROCESSOR_CONFIG} holds no \"image_processor\" and there is no "
                f"{IMAGE_PROCESSOR_CONFIG} beside it"
            )
        return data
    raise ConfigError(f"{name}: no image processor config found")


def _hub_download(repo_id: str, revision: str | None, cache_dir: Any, local_files_only: bool) -> list[Path]:
    """Both config files a hub checkpoint may have, in transformers' priority; the missing one is skipped."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ConfigError(
            f"{repo_id!r} is not a local directory or file, and huggingface_hub is not installed "
            "to fetch it from the hub (pip install 'ferroclip[hub]')"
        ) from None
    found: list[Path] = []
    last: Exception | None = None
    for filename in (PROCESSOR_CONFIG, IMAGE_PROCESSOR_CONFIG):
        try:
            found.append(
                Path(
                    hf_hub_download(
                        repo_id,
                        filename,
                        revision=revision,
                        cache_dir=cache_dir,
                        local_files_only=local_files_only,
                    )
                )
            )
        except Exception as exc:  # missing file, network, auth, missing repo: try the other name
            last = exc
    if not found:
        raise ConfigError(
            f"{repo_id}: cannot fetch {PROCESSOR_CONFIG} or {IMAGE_PROCESSOR_CONFIG} from the hub: {last}"
        ) from last
    return found
