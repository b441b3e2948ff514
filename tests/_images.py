"""Test images, generated: every mode, format and EXIF orientation, plus broken variants."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# PIL encoder name and the modes it can store.
FORMATS = {
    "PNG": ["RGB", "RGBA", "L", "LA", "P", "PT", "RGBT", "1", "I;16"],
    "JPEG": ["RGB", "L", "CMYK"],
    "WEBP": ["RGB", "RGBA"],
    "GIF": ["P", "PT", "L"],
    "BMP": ["RGB", "L", "P"],
    "TIFF": ["RGB", "RGBA", "L", "CMYK"],
}


def smooth_rgb(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A photo-like image: low-frequency colour field plus noise (JPEG-friendly, not flat)."""
    gh, gw = max(2, height // 16), max(2, width // 16)
    coarse = rng.integers(0, 256, (gh, gw, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.int16)
    noise = rng.integers(-20, 21, (height, width, 3), dtype=np.int16)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def make_image(rng: np.random.Generator, width: int, height: int, mode: str) -> Image.Image:
    rgb = smooth_rgb(rng, width, height)
    img = Image.fromarray(rgb)
    if mode == "RGB":
        return img
    if mode == "PT":  # palette with a transparent index (tRNS / GIF transparency)
        p = img.convert("P", palette=Image.ADAPTIVE, colors=32)
        p.info["transparency"] = int(np.asarray(p)[0, 0])
        return p
    if mode == "RGBT":  # RGB with a single transparent colour (PNG tRNS)
        img.info["transparency"] = tuple(int(v) for v in rgb[0, 0])
        return img
    if mode in ("RGBA", "LA"):
        alpha = rng.integers(0, 256, (height, width), dtype=np.uint8)
        alpha[: height // 3] = 255
        alpha[-(height // 4) :] = 0
        rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
        if mode == "RGBA":
            return rgba
        return rgba.convert("LA")
    if mode == "P":
        p = img.convert("P", palette=Image.ADAPTIVE, colors=200)
        return p
    if mode == "I;16":
        arr16 = (rgb[..., 0].astype(np.uint16) << 8) | rng.integers(0, 256, (height, width), dtype=np.uint16)
        return Image.fromarray(arr16)  # mode I;16
    return img.convert(mode)


def encode(img: Image.Image, fmt: str, *, orientation: int = 1, **kw) -> bytes:
    buf = io.BytesIO()
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    if fmt == "JPEG":
        kw.setdefault("quality", 90)
    if fmt == "WEBP":
        kw.setdefault("quality", 80)
    img.save(buf, fmt, **kw)
    return buf.getvalue()
