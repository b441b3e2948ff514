"""`load_model`: from a preset name, hub id, checkpoint dir or ONNX export to an `EmbeddingModel`.

Resolution order: a preset name maps to its hub id; a local directory holding
``ferroclip_onnx.json`` or ``*.onnx`` files (or an ``.onnx`` file) is an ONNX model; any
other directory or id is a transformers checkpoint. The preprocessing always comes from the
checkpoint's own image processor config (``preprocessor_config.json``, or the
``image_processor`` nested in ``processor_config.json`` that transformers >= 5.24 saves), so
the Rust preprocessor reproduces the model's reference processor rather than a guess, in
the resize pass order of the installed Pillow.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

from ..config import PreprocessConfig
from ..errors import ConfigError, ModelError, ModelNotFoundError
from .device import resolve_device, resolve_dtype
from .model import EmbeddingModel
from .registry import get_preset, list_models
from .text import rules_for

__all__ = ["load_model"]

BackendName = Literal["auto", "torch", "onnx"]
Alpha = Literal["white", "drop"]

# owner/name, as the hub spells repository ids.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def _looks_like_path(name: str) -> bool:
    """A name only a file system could mean: absolute, relative with ./ or ../, home, Windows
    separators, more than one slash, or a file suffix no hub id carries."""
    return (
        os.path.isabs(name)
        or name.startswith(("./", "../", ".\\", "..\\", "~"))
        or name in (".", "..")
        or "\\" in name
        or name.count("/") > 1
        or name.lower().endswith((".onnx", ".json", ".safetensors", ".bin", ".pt"))
    )


def resolve_source(name_or_path: str | os.PathLike[str]) -> tuple[str, Any]:
    """``(source, preset or None)``: what :func:`load_model` will read, or why nothing can be.

    A mistyped preset must not turn into a hub request that fails with a connection error,
    and a missing local directory must not be reported as a malformed repo id: both are
    answered here, before any download is tried.
    """
    from_path = not isinstance(name_or_path, str)
    name = os.fspath(name_or_path)
    preset = get_preset(name)
    if preset is not None:
        return preset.source, preset
    expanded = os.path.expanduser(name)
    if Path(expanded).exists():
        return expanded, None
    if from_path or _looks_like_path(name):
        raise ModelNotFoundError(f"{name}: no such model file or directory", name)
    if "/" not in name:
        names = [m.name for m in list_models()]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(
            f"{name!r} is not a preset, a local path or a hub id (owner/name): {hint}"
            f"presets: {', '.join(names)} (see `ferroclip models`)"
        )
    if not _HUB_ID.fullmatch(name):
        raise ConfigError(f"{name!r} is neither an existing path nor a valid hub id (owner/name)")
    return name, None


def _is_onnx_source(source: str) -> bool:
    p = Path(source)
    if p.is_file():
        return p.suffix == ".onnx"
    if p.is_dir():
        return (p / "ferroclip_onnx.json").is_file() or (
            not (p / "config.json").is_file() and any(p.glob("*.onnx"))
        )
    return False


def load_model(
    name_or_path: str | os.PathLike[str],
    backend: BackendName = "auto",
    device: str = "auto",
    dtype: str | None = None,
    *,
    revision: str | None = None,
    local_files_only: bool = False,
    preprocess: PreprocessConfig | None = None,
    num_threads: int | None = None,
    fast: bool = False,
    use_safetensors: bool | None = True,
    torch_dtype: Any = None,
    exif_transpose: bool = True,
    alpha: Alpha | None = None,
) -> EmbeddingModel:
    """Load a CLIP, SigLIP or SigLIP2 (fixed resolution) model, or an ONNX export.

    Also the CLIP-architecture dual encoders transformers ships (``altclip``,
    ``chinese_clip``, ``metaclip_2``: the multilingual ones among them).

    Args:
        name_or_path: a preset from :func:`list_models`, a Hugging Face hub id, a local
            checkpoint directory, or an ONNX directory / ``.onnx`` image encoder.
        backend: ``"torch"`` (transformers), ``"onnx"`` (ONNX Runtime) or ``"auto"``.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda[:N]"``, ``"mps"``.
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``; default float16 on CUDA and
            float32 elsewhere.
        torch_dtype: the same as ``dtype`` (transformers' and seed 003's name; a string or
            a ``torch.dtype``). Give one of the two, or both equal.
        preprocess: override the checkpoint's preprocessing (needed for a bare ``.onnx``).
        num_threads: preprocessing threads (default: all cores with an accelerator, 1 when
            the model runs on CPU, where the model needs the cores). On the ONNX backend
            this also sets ONNX Runtime's intra-op threads.
        fast: DCT-domain JPEG downscaling (faster, not bit-exact; see :class:`Preprocessor`).
        use_safetensors: ``True`` loads safetensors weights only; ``None`` or ``False``
            prefer safetensors and fall back to a ``.bin`` checkpoint (read by transformers
            with ``weights_only=True``). ``False`` means "pickle allowed", as in seed 003's
            config, never "safetensors forbidden".
        exif_transpose: apply EXIF orientation before preprocessing (as the
            :class:`Preprocessor` option).
        alpha: ``"white"`` composites transparency onto white, ``"drop"`` discards it;
            default ``None`` follows the preprocessing config (``"drop"`` for MobileCLIP,
            whose reference pipeline calls ``convert("RGB")``, ``"white"`` otherwise).

    Raises:
        ModelNotFoundError: a path-like name (``./m``, ``/abs``, ``a/b/c``, ``x.onnx``)
            that does not exist; also a ``FileNotFoundError``.
        ConfigError: a name that is neither a preset, a path nor an ``owner/name`` hub id
            (the message lists the closest presets), or impossible options.
    """
    if backend not in ("auto", "torch", "onnx"):
        raise ConfigError(f"unknown backend {backend!r}: use 'auto', 'torch' or 'onnx'")
    dtype = _merge_dtype(dtype, torch_dtype)
    if use_safetensors is False:
        use_safetensors = None
    if alpha not in (None, "white", "drop"):
        raise ConfigError(f"alpha must be 'white', 'drop' or None, got {alpha!r}")
    name = os.fspath(name_or_path)
    source, preset = resolve_source(name_or_path)
    image_options = {"exif_transpose": bool(exif_transpose), "alpha": alpha}
    if not local_files_only and not os.path.exists(source):
        from .hub import prefer_cache_when_offline

        local_files_only = prefer_cache_when_offline(source, revision)
    is_onnx = _is_onnx_source(source)
    if backend == "auto":
        backend = "onnx" if is_onnx or (preset is not None and preset.backend == "onnx") else "torch"
    if backend == "onnx":
        from .onnx_backend import load_onnx_model

        return load_onnx_model(
            source,
            name=name,
            device=device,
            dtype=dtype,
            preprocess=preprocess,
            revision=revision,
            local_files_only=local_files_only,
            num_threads=num_threads,
            fast=fast,
            family_hint=preset.family if preset is not None else None,
            image_options=image_options,
        )
    if is_onnx:
        raise ConfigError(f"{source} holds an ONNX model: load it with backend='onnx' (or 'auto')")
    return _load_torch(
        source, name, device, dtype, revision, local_files_only, preprocess, num_threads, fast, use_safetensors, image_options
    )


def _merge_dtype(dtype: Any, torch_dtype: Any) -> str | None:
    def norm(v: Any) -> str | None:
        return None if v is None else str(v).removeprefix("torch.")

    a, b = norm(dtype), norm(torch_dtype)
    if a is not None and b is not None and a != b:
        raise ConfigError(f"dtype={a!r} and torch_dtype={b!r} disagree: give one of them")
    return a if a is not None else b


def _load_torch(
    source: str,
    name: str,
    device: str,
    dtype: str | None,
    revision: str | None,
    local_files_only: bool,
    preprocess: PreprocessConfig | None,
    num_threads: int | None,
    fast: bool,
    use_safetensors: bool | None,
    image_options: dict[str, Any],
) -> EmbeddingModel:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ModelError(f"the torch backend needs torch and transformers: pip install 'ferroclip[torch]' ({exc})") from None
    from transformers import AutoTokenizer

    from .torch_backend import TorchBackend, load_hf_model

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    model = load_hf_model(
        source, dtype=dt, revision=revision, local_files_only=local_files_only, use_safetensors=use_safetensors
    )
    if preprocess is None:
        preprocess = PreprocessConfig.from_pretrained(source, revision=revision, local_files_only=local_files_only)
    try:
        tokenizer: Any = AutoTokenizer.from_pretrained(source, revision=revision, local_files_only=local_files_only)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer of {source}: {exc}") from None
    family = _family(model.config.model_type, tokenizer)
    rules = rules_for(family, _text_limit(model.config, tokenizer))
    backend = TorchBackend(model, device=dev, dtype=dt)
    return EmbeddingModel(
        backend, preprocess, tokenizer, rules, family=family, name=name, num_threads=num_threads, fast=fast, **image_options
    )


def _text_limit(config: Any, tokenizer: Any) -> int | None:
    """The longest token sequence the text tower takes: its position table, cut to what the
    tokenizer declares (XLM-R towers such as AltCLIP's hold 514 positions for 512 tokens)."""
    limit = getattr(config.text_config, "max_position_embeddings", None)
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < (limit or 1 << 30):
        return declared
    if limit is not None and getattr(config, "model_type", "") == "altclip":
        return int(limit) - 2
    return limit


def _family(model_type: str, tokenizer: Any) -> str:
    if model_type == "siglip":
        # Fixed-resolution SigLIP2 checkpoints are SigLIP weights with a Gemma tokenizer.
        cls = type(tokenizer).__name__
        return "siglip2" if ("Gemma" in cls or "Siglip2" in cls) else "siglip"
    return model_type
