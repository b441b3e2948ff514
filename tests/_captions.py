"""A planted image–caption task: coloured shapes whose captions name colour, shape, size and place.

Every image has a unique combination and two differently worded captions, so retrieval can
only succeed by reading the pixels; a random model sits at chance (about 1 / images).
"""

from __future__ import annotations

import csv
from pathlib import Path

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 220, 40)}
SHAPES = ("square", "circle", "triangle")
PLACES = {"top left": (0, 0), "top right": (1, 0), "bottom left": (0, 1), "bottom right": (1, 1)}
SIZES = {"small": 9, "large": 15}


def shapes_dataset(root: Path, *, limit: int | None = None) -> Path:
    """Write the images and ``data.csv`` (``image_path,caption``, two rows per image) under ``root``."""
    from PIL import Image, ImageDraw

    root.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []
    for c, rgb in COLOURS.items():
        for s in SHAPES:
            for p, (px, py) in PLACES.items():
                for z, r in SIZES.items():
                    im = Image.new("RGB", (64, 64), (245, 245, 245))
                    d = ImageDraw.Draw(im)
                    cx, cy = 16 + 32 * px, 16 + 32 * py
                    if s == "square":
                        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=rgb)
                    elif s == "circle":
                        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)
                    else:
                        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=rgb)
                    name = f"{c}_{s}_{p.replace(' ', '_')}_{z}.png"
                    im.save(root / name)
                    rows += [(name, f"a {z} {c} {s} at the {p}"), (name, f"{p}: {z} {s}, {c}")]
    if limit is not None:
        rows = rows[: 2 * limit]
    with open(root / "data.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image_path", "caption"])
        w.writerows(rows)
    return root / "data.csv"
