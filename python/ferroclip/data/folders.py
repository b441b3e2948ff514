"""The seed's two directory layouts: one ``captions.txt`` index, or a ``.txt`` beside each image.

``captions.txt`` holds ``name<TAB>caption`` lines; a name may repeat (several captions of one
image) and is relative to the directory. In the other layout ``cat.txt`` captions ``cat.jpg``,
one caption per non-empty line. Images with no caption file and caption files with no image
are reported as bad rows, since either usually means a renamed or missing file.
"""

from __future__ import annotations

from pathlib import Path

from ._collect import PairCollector
from .tables import read_text, text_lines

__all__ = ["CAPTIONS_FILE", "IMAGE_SUFFIXES", "image_files", "read_captions_file", "read_sidecar_folder"]

CAPTIONS_FILE = "captions.txt"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".hif"})


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (so the pair order is stable)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_captions_file(path: Path, out: PairCollector) -> None:
    """``name<TAB>caption`` lines; blank lines are skipped."""
    where, base = str(path), str(path.parent)
    for line, raw in enumerate(text_lines(read_text(path)), start=1):
        if not raw.strip():
            continue
        name, tab, caption = raw.partition("\t")
        if not tab:
            out.bad(where, line, "no tab between the image name and the caption")
            continue
        out.add_path(name, base, caption, where, line)


def read_sidecar_folder(folder: Path, out: PairCollector) -> None:
    """Each image with the captions of the ``.txt`` of the same stem, one per non-empty line."""
    images = image_files(folder)
    stems = {p.stem for p in images}
    for img in images:
        txt = img.with_suffix(".txt")
        if not txt.is_file():
            out.bad(str(img), None, f"no caption file {txt.name}")
            continue
        where = str(txt)
        lines = [(n, s) for n, s in enumerate(text_lines(read_text(txt)), start=1) if s.strip()]
        if not lines:
            out.bad(where, None, "caption file is empty")
        for n, caption in lines:
            out.add_path(str(img), str(folder), caption, where, n)
    for txt in sorted(folder.glob("*.txt")):
        if txt.stem not in stems and txt.name != CAPTIONS_FILE:
            out.bad(str(txt), None, f"no image named {txt.stem}.* beside this caption file")
