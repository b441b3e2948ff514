"""What embed_dataset reads, listed without Ray: folders as embed_folder lists them, path/URL
lists, webdataset shards (local and pipe:), caption datasets; ids sorted and unique."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferroclip.data import load_pairs
from ferroclip.distributed import collect_items
from ferroclip.distributed.shards import plan_shards
from ferroclip.errors import DataError

from ._images import smooth_rgb


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(smooth_rgb(np.random.default_rng(seed), 20, 18)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    for name in ("b.jpg", "a.jpg", "sub/c.jpg"):
        (root / name).write_bytes(_jpeg(len(name)))
    (root / "notes.txt").write_text("skip me")
    return root


def _tar(path: Path, samples: dict[str, dict[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for key, members in samples.items():
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_folder_ids_are_relative_paths_sorted(folder):
    items = collect_items(folder)
    assert [i.id for i in items] == ["a.jpg", "b.jpg", "sub/c.jpg"]
    assert items[2].path == str((folder / "sub" / "c.jpg").resolve()) and items[2].data is None


def test_lists_of_paths_and_urls(folder, tmp_path):
    (folder / "list.txt").write_text("# a comment\nb.jpg\n\nhttps://example.com/x.jpg\nb.jpg\n")
    items = collect_items(folder / "list.txt")
    assert [i.id for i in items] == ["b.jpg", "https://example.com/x.jpg"]  # sorted, duplicate dropped
    assert items[0].path == str(folder / "b.jpg") and items[1].path == "https://example.com/x.jpg"
    (tmp_path / "l.csv").write_text("url,caption\nimgs/a.jpg,x\nimgs/sub/c.jpg,y\n")
    assert [i.path for i in collect_items(tmp_path / "l.csv")] == [str(folder / "a.jpg"), str(folder / "sub" / "c.jpg")]
    with pytest.raises(DataError, match="no column 'nope'"):
        collect_items(tmp_path / "l.csv", column="nope")


def test_webdataset_shards_local_and_pipe(tmp_path):
    shard = _tar(tmp_path / "s-000.tar", {"k1": {"jpg": _jpeg(1), "txt": b"one"}, "k0": {"png": _jpeg(2)}, "k2": {"txt": b"x"}})
    items = collect_items(shard)
    assert [i.id for i in items] == [f"{shard}#k0", f"{shard}#k1"]  # k2 has no image
    assert items[1].data == _jpeg(1)
    piped = collect_items(f"pipe:cat {shard}")
    assert [i.data for i in piped] == [i.data for i in items]


def test_caption_dataset_gives_one_row_per_image(folder):
    (folder / "pairs.csv").write_text("image_path,caption\na.jpg,a cat\na.jpg,a small cat\nb.jpg,a dog\n")
    ds = load_pairs(folder / "pairs.csv")
    items = collect_items(ds)
    assert [i.path for i in items] == sorted({str((folder / n).resolve()) for n in ("a.jpg", "b.jpg")})
    assert [i.text for i in items] == [None, None]
    with_text = {i.path: i.text for i in collect_items(ds, text_column="caption")}
    assert with_text == {str((folder / "a.jpg").resolve()): "a cat", str((folder / "b.jpg").resolve()): "a dog"}
    with pytest.raises(DataError, match="only text is 'caption'"):
        collect_items(ds, text_column="txt")


def test_shards_are_fixed_by_the_sorted_ids(folder):
    items = collect_items(folder)
    plans = plan_shards(items, 2)
    assert [len(p.items) for p in plans] == [2, 1] and [p.name for p in plans] == ["shard-00000.parquet", "shard-00001.parquet"]
    assert plan_shards(items, 2)[0].digest == plans[0].digest != plans[1].digest


def test_text_columns(folder, tmp_path):
    (tmp_path / "l.csv").write_text("url,caption\nimgs/a.jpg,a cat\nimgs/sub/c.jpg,\n")
    items = collect_items(tmp_path / "l.csv", text_column="caption")
    assert [(i.id, i.text) for i in items] == [("imgs/a.jpg", "a cat"), ("imgs/sub/c.jpg", "")]
    assert collect_items(tmp_path / "l.csv")[0].text is None
    with pytest.raises(DataError, match="no text column 'alt'"):
        collect_items(tmp_path / "l.csv", text_column="alt")
    for no_text in (folder, folder / "list.txt"):
        (folder / "list.txt").write_text("a.jpg\n")
        with pytest.raises(DataError, match="has no text to embed"):
            collect_items(no_text, text_column="caption")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": ["imgs/a.jpg", "imgs/b.jpg"], "alt": ["x", None]}), tmp_path / "l.parquet")
    assert [i.text for i in collect_items(tmp_path / "l.parquet", text_column="alt")] == ["x", None]
    shard = _tar(tmp_path / "s.tar", {"k0": {"jpg": _jpeg(1), "txt": b"caption zero"}, "k1": {"jpg": _jpeg(2)}})
    assert [i.text for i in collect_items(shard, text_column="txt")] == ["caption zero", None]
