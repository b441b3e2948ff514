"""Loading frozen embeddings and the metadata that ties captions to images, without unpickling.

Embedding files are ``.npy``/``.npz`` (read with ``allow_pickle=False``), ``.pt``/``.pth``
(``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary
objects) or ``.safetensors``. A file may hold one array or a mapping; a mapping needs
``key=`` unless it holds exactly one array.

Captions are tied to images by a JSON metadata file, in one of two layouts:

- paired (the seed's layout): image and text files have the same number of rows, row ``i``
  of each is one (image, caption) pair, and ``{"image_ids": [...]}`` names the image of
  each row. Repeated image rows are collapsed to the first row with that id.
- separate: the image file has one row per image and the text file one row per caption;
  ``{"image_ids": [...one per image row...], "text_image_ids": [...one per text row...]}``.

Either way the result is :class:`PairedEmbeddings`: unique images, all captions, and for
each caption the index of its image, which is what Recall@K and the splits need.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from ..errors import DataError, ShapeError

__all__ = ["PairedEmbeddings", "load_array", "load_labels_csv", "load_paired", "labels_from_folder"]

_NUMPY = {".npy", ".npz"}
_TORCH = {".pt", ".pth", ".bin"}
_SAFETENSORS = {".safetensors"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".hif"}


@dataclass(frozen=True)
class PairedEmbeddings:
    """Unique image rows, caption rows, and the image each caption describes.

    ``text_to_image[t]`` indexes ``images`` (and ``image_ids``). Arrays are float32.
    """

    images: npt.NDArray[np.float32]
    texts: npt.NDArray[np.float32]
    image_ids: tuple[str, ...]
    text_to_image: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        if self.images.ndim != 2 or self.texts.ndim != 2:
            raise ShapeError(
                f"image and text embeddings must be 2-d, got {self.images.shape} and {self.texts.shape}"
            )
        if len(self.image_ids) != len(self.images):
            raise DataError(f"{len(self.image_ids)} image ids for {len(self.images)} image rows")
        if self.text_to_image.shape != (len(self.texts),):
            raise DataError(f"text_to_image has shape {self.text_to_image.shape}, expected ({len(self.texts)},)")
        if len(self.texts) and (self.text_to_image.min() < 0 or self.text_to_image.max() >= len(self.images)):
            raise DataError("text_to_image points outside the image rows")

    @property
    def image_dim(self) -> int:
        return int(self.images.shape[1])

    @property
    def text_dim(self) -> int:
        return int(self.texts.shape[1])

    def subset(self, ids: Sequence[str]) -> PairedEmbeddings:
        """The images named by ``ids`` (in that order) with all of their captions."""
        pos = {k: i for i, k in enumerate(self.image_ids)}
        missing = [k for k in ids if k not in pos]
        if missing:
            raise DataError(f"{len(missing)} image ids are not in the data, e.g. {missing[:3]}")
        rows = np.fromiter((pos[k] for k in ids), dtype=np.int64, count=len(ids))
        new_index = np.full(len(self.images), -1, dtype=np.int64)
        new_index[rows] = np.arange(len(rows))
        keep = new_index[self.text_to_image] >= 0
        return PairedEmbeddings(
            images=self.images[rows],
            texts=self.texts[keep],
            image_ids=tuple(ids),
            text_to_image=new_index[self.text_to_image[keep]],
        )


def _pick(obj: Any, key: str | None, path: Path) -> Any:
    if isinstance(obj, dict):
        if key is not None:
            if key not in obj:
                raise DataError(f"{path}: no array named {key!r}; it holds {sorted(map(str, obj))}", str(path))
            return obj[key]
        if len(obj) == 1:
            return next(iter(obj.values()))
        raise DataError(f"{path}: holds several arrays {sorted(map(str, obj))}; say which with key=", str(path))
    if key is not None:
        raise DataError(f"{path}: holds a single array, not a mapping; key={key!r} does not apply", str(path))
    return obj


def load_array(path: str | os.PathLike[str], key: str | None = None) -> npt.NDArray[np.float32]:
    """A 2-d float32 array of embeddings from ``.npy``/``.npz``/``.pt``/``.safetensors``.

    Rejects pickled content, non-numeric or non-finite values and arrays that are not 2-d,
    naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file", str(p))
    suffix = p.suffix.lower()
    try:
        if suffix in _NUMPY:
            loaded = np.load(p, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded:
                    obj = _pick({k: loaded[k] for k in loaded.files}, key, p)
            else:
                obj = _pick(loaded, key, p)
        elif suffix in _TORCH:
            import torch

            obj = _pick(torch.load(p, map_location="cpu", weights_only=True), key, p)
        elif suffix in _SAFETENSORS:
            from safetensors.numpy import load_file

            obj = _pick(load_file(str(p)), key, p)
        else:
            raise DataError(
                f"{p}: unknown embedding format {suffix!r} (use .npy, .npz, .pt, .pth or .safetensors)", str(p)
            )
    except DataError:
        raise
    except ValueError as e:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
        raise DataError(f"{p}: cannot be read safely: {e}", str(p)) from e
    except Exception as e:  # torch's UnpicklingError under weights_only, safetensors' header errors
        raise DataError(f"{p}: cannot be read as embeddings: {type(e).__name__}: {e}", str(p)) from e
    arr = _as_numpy(obj, p)
    if arr.ndim != 2:
        raise ShapeError(f"{p}: embeddings must be 2-d (rows, dim), got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ShapeError(f"{p}: embeddings must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        row = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise DataError(f"{p}: holds NaN or Inf (first in row {row})", str(p))
    return arr


def _as_numpy(obj: Any, path: Path) -> np.ndarray:
    if isinstance(obj, np.ndarray):
        return obj
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        return cast("np.ndarray", (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy())
    raise DataError(f"{path}: expected an array or tensor, found {type(obj).__name__}", str(path))


def _read_ids(meta: dict[str, Any], key: str, path: Path) -> list[str]:
    ids = meta.get(key)
    if not isinstance(ids, list):
        raise DataError(f"{path}: {key!r} must be a list of image ids", str(path))
    return [str(x) for x in ids]


def load_paired(
    images: str | os.PathLike[str],
    texts: str | os.PathLike[str],
    metadata: str | os.PathLike[str],
    *,
    image_key: str | None = None,
    text_key: str | None = None,
) -> PairedEmbeddings:
    """Read image and text embeddings and the metadata that ties them (see module docs)."""
    img = load_array(images, image_key)
    txt = load_array(texts, text_key)
    mpath = Path(metadata)
    try:
        meta = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"{mpath}: no such metadata file", str(mpath)) from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{mpath}: not a readable JSON metadata file: {e}", str(mpath)) from e
    if not isinstance(meta, dict) or "image_ids" not in meta:
        raise DataError(f"{mpath}: metadata must be a JSON object with an 'image_ids' list", str(mpath))
    image_ids = _read_ids(meta, "image_ids", mpath)
    if len(image_ids) != len(img):
        raise DataError(
            f"{mpath}: 'image_ids' has {len(image_ids)} entries but {images} has {len(img)} rows", str(mpath)
        )
    if "text_image_ids" in meta:
        text_ids = _read_ids(meta, "text_image_ids", mpath)
        if len(text_ids) != len(txt):
            raise DataError(
                f"{mpath}: 'text_image_ids' has {len(text_ids)} entries but {texts} has {len(txt)} rows",
                str(mpath),
            )
        if len(set(image_ids)) != len(image_ids):
            raise DataError(f"{mpath}: 'image_ids' repeats ids; in the separate layout each image row is unique", str(mpath))
        unique_ids, first = image_ids, np.arange(len(image_ids))
    else:
        if len(txt) != len(img):
            raise DataError(
                f"{mpath}: paired layout needs as many text rows as image rows ({len(txt)} vs {len(img)}); "
                "add 'text_image_ids' for one row per image",
                str(mpath),
            )
        text_ids = image_ids
        seen: dict[str, int] = {}
        for i, k in enumerate(image_ids):
            seen.setdefault(k, i)
        unique_ids, first = list(seen), np.fromiter(seen.values(), dtype=np.int64, count=len(seen))
    pos = {k: i for i, k in enumerate(unique_ids)}
    unknown = sorted({k for k in text_ids if k not in pos})
    if unknown:
        raise DataError(f"{mpath}: {len(unknown)} caption image ids are not image ids, e.g. {unknown[:3]}", str(mpath))
    return PairedEmbeddings(
        images=np.ascontiguousarray(img[first]),
        texts=txt,
        image_ids=tuple(unique_ids),
        text_to_image=np.fromiter((pos[k] for k in text_ids), dtype=np.int64, count=len(text_ids)),
    )


def labels_from_folder(root: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """``(paths, labels)`` for an ImageFolder tree: ``root/<class>/**/<image>``.

    Files are in the order ``ferroclip preprocess ROOT`` reads them (sorted recursive walk),
    so row ``i`` of an embedding file made from ``ROOT`` has label ``labels[i]``.
    """
    r = Path(root)
    if not r.is_dir():
        raise DataError(f"{r}: not a directory of class sub-folders", str(r))
    files = sorted(f for f in r.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    bad = [f for f in files if f.parent == r]
    if bad:
        raise DataError(f"{r}: images must sit in class sub-folders; {bad[0].name} is at the top level", str(r))
    if not files:
        raise DataError(f"{r}: no images found under the class sub-folders", str(r))
    return [str(f) for f in files], [f.relative_to(r).parts[0] for f in files]


def load_labels_csv(path: str | os.PathLike[str]) -> tuple[list[str] | None, list[str]]:
    """``(paths or None, labels)`` from a CSV with a ``label`` column and optionally ``path``."""
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError as e:
        raise DataError(f"{p}: no such labels file", str(p)) from e
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{p}: not a readable CSV: {e}", str(p)) from e
    if not rows or "label" not in rows[0]:
        raise DataError(f"{p}: needs a header with a 'label' column (and optionally 'path')", str(p))
    empty = [i for i, r in enumerate(rows) if not (r.get("label") or "").strip()]
    if empty:
        raise DataError(f"{p}: empty label on data row {empty[0] + 1}", str(p))
    labels = [r["label"].strip() for r in rows]
    paths = [r["path"] for r in rows] if "path" in rows[0] else None
    return paths, labels
