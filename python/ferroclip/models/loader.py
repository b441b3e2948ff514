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

import os
from pathlib import Path
from typing import Any, Literal

from ..config import PreprocessConfig
from ..errors import ConfigError, ModelError
from .device import resolve_device, resolve_dtype
from .model import EmbeddingModel
from .registry import get_preset
from .text import rules_for

__all__ = ["load_model"]

BackendName = Literal["auto", "torch", "onnx"]


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
) -> EmbeddingModel:
    """Load a CLIP, SigLIP or SigLIP2 (fixed resolution) model, or an ONNX export.

    Args:
        name_or_path: a preset from :func:`list_models`, a Hugging Face hub id, a local
            checkpoint directory, or an ONNX directory / ``.onnx`` image encoder.
        backend: ``"torch"`` (transformers), ``"onnx"`` (ONNX Runtime) or ``"auto"``.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda[:N]"``, ``"mps"``.
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``; default float16 on CUDA and
            float32 elsewhere.
        preprocess: override the checkpoint's preprocessing (needed for a bare ``.onnx``).
        num_threads: preprocessing threads (default: all cores with an accelerator, 1 when
            the model runs on CPU, where the model needs the cores). On the ONNX backend
            this also sets ONNX Runtime's intra-op threads.
        fast: DCT-domain JPEG downscaling (faster, not bit-exact; see :class:`Preprocessor`).
        use_safetensors: ``True`` loads safetensors weights only; ``None`` falls back to a
            ``.bin`` checkpoint (read by transformers with ``weights_only=True``).
    """
    if backend not in ("auto", "torch", "onnx"):
        raise ConfigError(f"unknown backend {backend!r}: use 'auto', 'torch' or 'onnx'")
    name = os.fspath(name_or_path)
    preset = get_preset(name)
    source = preset.source if preset is not None else name
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
        )
    if is_onnx:
        raise ConfigError(f"{source} holds an ONNX model: load it with backend='onnx' (or 'auto')")
    return _load_torch(
        source, name, device, dtype, revision, local_files_only, preprocess, num_threads, fast, use_safetensors
    )


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
    rules = rules_for(family, getattr(model.config.text_config, "max_position_embeddings", None))
    backend = TorchBackend(model, device=dev, dtype=dt)
    return EmbeddingModel(backend, preprocess, tokenizer, rules, family=family, name=name, num_threads=num_threads, fast=fast)


def _family(model_type: str, tokenizer: Any) -> str:
    if model_type == "siglip":
        # Fixed-resolution SigLIP2 checkpoints are SigLIP weights with a Gemma tokenizer.
        cls = type(tokenizer).__name__
        return "siglip2" if ("Gemma" in cls or "Siglip2" in cls) else "siglip"
    return model_type
