"""webdataset tar shards: members sharing a key (the name up to its first dot) form one sample.

The caption is the ``txt`` member (one caption per non-empty line), the image the first of
``jpg``/``jpeg``/``png``/``webp``; other members are ignored and nothing is ever decoded
beyond the text (so no ``.pyd``/``.pickle`` member is unpickled). Shards are read with
webdataset's own tar iteration and grouping, on a plain local file (no ``gopen`` pipes).
A truncated or corrupt shard keeps the samples read before the damage and is reported as
a bad row; it never stops the load.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._collect import PairCollector
from .tables import text_lines

__all__ = ["IMAGE_KEYS", "import_webdataset", "read_shards"]

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def import_webdataset() -> Any:
    try:
        from webdataset import tariterators
    except ImportError as e:
        raise ImportError(
            "reading webdataset tar shards needs the `webdataset` package: pip install 'ferroclip[data]'"
        ) from e
    return tariterators


def read_shards(paths: Sequence[Path], out: PairCollector) -> None:
    tariterators = import_webdataset()
    for shard in paths:
        where = str(shard)
        errors: list[Exception] = []

        def keep_going(exn: Exception, errors: list[Exception] = errors) -> bool:
            errors.append(exn)
            return True

        try:
            fh = open(shard, "rb")
        except OSError as e:
            out.bad(where, None, f"cannot open shard: {e.strerror or e}")
            continue
        with fh:
            members = tariterators.tar_file_expander([{"url": where, "stream": fh}], handler=keep_going)
            for sample in tariterators.group_by_keys(members, handler=keep_going):
                _add_sample(out, sample, where)
        for exn in errors:
            msg = exn.args[0] if exn.args else type(exn).__name__
            out.bad(where, None, f"unreadable shard content ({type(exn).__name__}): {msg}")


def _add_sample(out: PairCollector, sample: dict[str, Any], shard: str) -> None:
    key = sample["__key__"]
    origin = f"{shard}:{key}"
    image_key = next((k for k in IMAGE_KEYS if k in sample), None)
    if image_key is None:
        out.bad(origin, None, f"no image member ({'/'.join(IMAGE_KEYS)})")
        return
    if "txt" not in sample:
        out.bad(origin, None, "no txt member (caption)")
        return
    try:
        text = sample["txt"].decode("utf-8-sig")
    except UnicodeDecodeError as e:
        out.bad(origin, None, f"txt member is not UTF-8 (byte {e.start})")
        return
    captions = [s for s in text_lines(text) if s.strip()] or [""]
    out.add_bytes(sample[image_key], f"{shard}#{key}", captions, origin, None)
