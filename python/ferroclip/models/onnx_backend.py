"""Running CLIP-family towers with ONNX Runtime.

Two kinds of directories load here: ferroclip's own exports (``ferroclip_onnx.json`` says
which file is which tower, the preprocessing, the tokenizer rules and the logit scale) and
third-party image encoders such as Apple's MobileCLIP ONNX release (seed 004), for which
the towers are found by file name and the preprocessing comes from the folder's image
processor config (``preprocessor_config.json``, or ``processor_config.json`` with a nested
``image_processor`` as transformers >= 5.24 saves it), the ``preprocess=`` argument or the
preset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..config import IMAGE_PROCESSOR_CONFIG, PROCESSOR_CONFIG, PreprocessConfig
from ..errors import ConfigError, ModelError, ModelNotFoundError
from .model import EmbeddingModel
from .registry import offline_miss
from .text import TextRules

__all__ = ["MANIFEST", "OnnxBackend", "load_onnx_model", "preprocess_from_dict", "preprocess_to_dict", "session_options"]

MANIFEST = "ferroclip_onnx.json"
_HUB_PATTERNS = ["*.onnx", "*.onnx_data", "*.onnx.data", "*.json", "*.txt", "*.model"]


def preprocess_to_dict(cfg: PreprocessConfig) -> dict[str, Any]:
    """Everything that decides the pixels, resolved ``pil_version`` included (cache keys)."""
    return cfg.to_dict()


def preprocess_from_dict(d: dict[str, Any]) -> PreprocessConfig:
    """Inverse of :func:`preprocess_to_dict` (JSON turned the tuples into lists)."""
    fixed: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return PreprocessConfig(**fixed)


def session_options(num_threads: int | None = None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if num_threads:
        so.intra_op_num_threads = num_threads
    return so


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    kind = device.split(":", 1)[0]
    if kind == "auto":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in available else ["CPUExecutionProvider"]
    if kind == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ConfigError(
                f"device={device!r} with the ONNX backend needs onnxruntime-gpu (available providers: {', '.join(available)})"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    raise ConfigError(f"device={device!r} is not supported by the ONNX backend: use 'auto', 'cpu' or 'cuda'")


class _Tower:
    """One ONNX graph: feeds by input name, honours a fixed batch size if the graph has one."""

    def __init__(self, path: Path, providers: list[str], num_threads: int | None) -> None:
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(path), session_options(num_threads), providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"{path}: cannot load the ONNX graph: {exc}") from None
        self.path = path
        self.inputs = [i.name for i in self.session.get_inputs()]
        batch = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.output_dim = self.session.get_outputs()[0].shape[-1]

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(feeds.values())))
        step = self.fixed_batch or n or 1
        outs = []
        for start in range(0, n, step):
            chunk = {k: v[start : start + step] for k, v in feeds.items()}
            try:
                out = self.session.run(None, chunk)[0]
            except Exception as exc:  # onnxruntime's own classes (Fail, InvalidArgument, ...), not ours
                shapes = ", ".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in chunk.items())
                expected = ", ".join(f"{i.name} {i.shape}" for i in self.session.get_inputs())
                raise ModelError(
                    f"{self.path}: ONNX Runtime failed on input {shapes} (the graph takes {expected}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            outs.append(np.asarray(out, dtype=np.float32).reshape(len(next(iter(chunk.values()))), -1))
        return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


class OnnxBackend:
    name = "onnx"
    dtype = "float32"

    def __init__(
        self,
        vision: _Tower,
        text: _Tower | None,
        *,
        device: str,
        dim: int,
        logit_scale: float,
        logit_bias: float | None,
    ) -> None:
        self.vision = vision
        self.text = text
        self.device = device
        self.dim = dim
        self.logit_scale = logit_scale
        self.logit_bias = logit_bias

    def pixel_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.empty(shape, dtype=np.float32)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.vision.run({self.vision.inputs[0]: np.ascontiguousarray(pixels, dtype=np.float32)})

    def encode_tokens(self, tokens: dict[str, np.ndarray]) -> np.ndarray:
        if self.text is None:
            raise ModelError("this ONNX model has no text tower")
        missing = [name for name in self.text.inputs if name not in tokens]
        if missing:
            raise ModelError(f"{self.text.path}: the tokenizer gives no {', '.join(missing)}")
        return self.text.run({name: tokens[name] for name in self.text.inputs})


def _resolve_dir(source: str, revision: str | None, local_files_only: bool) -> Path:
    p = Path(source)
    if p.exists():
        return p
    if "/" not in source or source.startswith((".", "/")):
        raise ModelNotFoundError(f"{source}: no such ONNX file or directory", source)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelError(f"{source} looks like a hub id: pip install huggingface_hub to download it") from None
    try:
        return Path(
            snapshot_download(source, revision=revision, allow_patterns=_HUB_PATTERNS, local_files_only=local_files_only)
        )
    except Exception as exc:  # network, auth, missing repo: all reported the same way
        if local_files_only and (miss := offline_miss(source, exc)):
            raise ModelNotFoundError(miss, source) from None
        raise ModelError(f"cannot download {source} from the hub: {exc}") from None


def _has_nested_image_processor(path: Path) -> bool:
    """Whether ``path`` is a ``processor_config.json`` carrying the image processor (transformers >= 5.24)."""
    if not path.is_file():
        return False
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")).get("image_processor"), dict)
    except (OSError, ValueError, AttributeError):
        return False


def _pick(files: list[Path], words: tuple[str, ...]) -> Path | None:
    hits = [f for f in files if any(w in f.stem.lower() for w in words)]
    return hits[0] if len(hits) == 1 else None


def load_onnx_model(
    source: str,
    *,
    name: str,
    device: str,
    dtype: str | None,
    preprocess: PreprocessConfig | None,
    revision: str | None,
    local_files_only: bool,
    num_threads: int | None,
    fast: bool,
    family_hint: str | None,
    image_options: dict[str, Any] | None = None,
) -> EmbeddingModel:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ModelError("the ONNX backend needs onnxruntime: pip install 'ferroclip[onnx]'") from None
    if dtype not in (None, "float32"):
        raise ConfigError(f"dtype={dtype!r}: the ONNX backend runs the exported float32 graphs")
    providers = _providers(device)
    resolved_device = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
    options = dict(image_options or {})
    if family_hint == "mobileclip" and options.get("alpha") is None:
        options["alpha"] = "drop"  # seed 004's reference pipeline: image.convert("RGB")
    root = _resolve_dir(source, revision, local_files_only)
    manifest_path = (root / MANIFEST) if root.is_dir() else None
    if manifest_path is not None and manifest_path.is_file():
        return _load_export(root, manifest_path, name, providers, resolved_device, preprocess, num_threads, fast, options)

    # A third-party ONNX model: find the towers by name.
    files = [root] if root.is_file() else sorted(root.glob("*.onnx"))
    if not files:
        raise ModelError(f"{root}: no .onnx files here")
    vision_path = files[0] if len(files) == 1 else _pick(files, ("image", "vision", "visual"))
    if vision_path is None:
        raise ModelError(f"{root}: cannot tell which of {[f.name for f in files]} is the image encoder")
    text_path = None if len(files) == 1 else _pick(files, ("text",))
    folder = root if root.is_dir() else root.parent
    if preprocess is None:
        if (folder / IMAGE_PROCESSOR_CONFIG).is_file() or _has_nested_image_processor(folder / PROCESSOR_CONFIG):
            preprocess = PreprocessConfig.from_pretrained(folder)
        elif family_hint == "mobileclip":
            preprocess = PreprocessConfig.mobileclip()
        else:
            raise ConfigError(
                f"{root}: no {IMAGE_PROCESSOR_CONFIG} (nor an image processor in {PROCESSOR_CONFIG}); "
                "pass preprocess=PreprocessConfig...(...) to say how images are prepared"
            )
    vision = _Tower(vision_path, providers, num_threads)
    tokenizer = None
    rules = None
    text = None
    has_tokenizer = (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()
    if text_path is not None and has_tokenizer:
        from transformers import AutoTokenizer

        text = _Tower(text_path, providers, num_threads)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        seq = text.session.get_inputs()[0].shape[-1]
        rules = TextRules("max_length", seq) if isinstance(seq, int) else TextRules("longest", 77)
    backend = OnnxBackend(
        vision, text, device=resolved_device, dim=int(vision.output_dim), logit_scale=100.0, logit_bias=None
    )
    return EmbeddingModel(
        backend,
        preprocess,
        tokenizer,
        rules,
        family=family_hint or "clip",
        name=name,
        num_threads=num_threads,
        fast=fast,
        **options,
    )


def _load_export(
    root: Path,
    manifest_path: Path,
    name: str,
    providers: list[str],
    device: str,
    preprocess: PreprocessConfig | None,
    num_threads: int | None,
    fast: bool,
    options: dict[str, Any],
) -> EmbeddingModel:
    try:
        meta = json.loads(manifest_path.read_text(encoding="utf-8"))
        if meta.get("format") != 1:
            raise ConfigError(f"{manifest_path}: unknown export format {meta.get('format')!r}")
        vision = _Tower(root / meta["vision"], providers, num_threads)
        text = _Tower(root / meta["text"], providers, num_threads) if meta.get("text") else None
        if preprocess is None:
            preprocess = preprocess_from_dict(meta["preprocess"])
        rules = TextRules.from_dict(meta["text_rules"]) if text is not None else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{manifest_path}: invalid ferroclip ONNX manifest: {exc}") from None
    tokenizer = None
    if text is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(root)
    backend = OnnxBackend(
        vision,
        text,
        device=device,
        dim=int(meta["dim"]),
        logit_scale=float(meta["logit_scale"]),
        logit_bias=meta.get("logit_bias"),
    )
    return EmbeddingModel(
        backend, preprocess, tokenizer, rules, family=meta["family"], name=name, num_threads=num_threads, fast=fast, **options
    )

