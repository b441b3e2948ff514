"""ferroclip.data: every format yields the same pairs; bad rows are reported, good rows kept."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferroclip import PreprocessConfig, Preprocessor, decode_image
from ferroclip.data import BadRow, CaptionDataset, ImageCaptionPair, load_pairs
from ferroclip.errors import DataError

from ._images import smooth_rgb

# (image name, caption) in the order every source lists them; img0 has two captions.
PAIRS = [
    ("img0.png", "a red square"),
    ("img0.png", "a square, and it is red"),
    ("img1.png", 'a dog called "Rex"'),
    ("img2.png", "a cat; sitting"),
    ("img3.png", "a bird — flying"),
]
NAMES = sorted({n for n, _ in PAIRS})


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _pixels(image: str | bytes) -> str:
    return hashlib.sha256(decode_image(image).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The same pairs written in every format, under one folder."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(7)
    arrays = {n: smooth_rgb(rng, 12 + 4 * i, 10 + 2 * i) for i, n in enumerate(NAMES)}
    imgs = root / "imgs"
    imgs.mkdir()
    for n, a in arrays.items():
        (imgs / n).write_bytes(_png(a))
    tables = root / "tables"  # image paths are relative to this folder: ../imgs/...
    tables.mkdir()
    rel = [(f"../imgs/{n}", c) for n, c in PAIRS]
    for name, sep, header in [("pairs.csv", ",", ["image_path", "caption"]), ("pairs.tsv", "\t", ["image_path", "caption"]),
                              ("semi.csv", ";", ["id", "file", "text"]), ("seed.csv", ",", ["image", "caption"])]:  # fmt: skip
        with open(tables / name, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, delimiter=sep)
            w.writerow(header)
            for i, (p, c) in enumerate(rel):
                w.writerow([i, p, c] if len(header) == 3 else [p, c])
    records = [{"image": p, "caption": c} for p, c in rel]
    (tables / "list.json").write_text(json.dumps(records, indent=2), encoding="utf-8")
    (tables / "wrapped.json").write_text(json.dumps({"version": 1, "data": records}, indent=1), encoding="utf-8")
    (tables / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    # A caption list in one record: many captions per image, the COCO way.
    grouped = [{"image": "../imgs/img0.png", "caption": [PAIRS[0][1], PAIRS[1][1]]}] + records[2:]
    (tables / "grouped.json").write_text(json.dumps(grouped), encoding="utf-8")
    (imgs / "captions.txt").write_text("".join(f"{n}\t{c}\n" for n, c in PAIRS), encoding="utf-8")
    side = root / "side"
    side.mkdir()
    for n in NAMES:
        (side / n).write_bytes((imgs / n).read_bytes())
        caps = [c for m, c in PAIRS if m == n]
        (side / n).with_suffix(".txt").write_text("\n".join(caps) + "\n", encoding="utf-8")
    shards = root / "shards"
    shards.mkdir()
    for shard, names in [("train-000.tar", NAMES[:2]), ("train-001.tar", NAMES[2:])]:
        with tarfile.open(shards / shard, "w") as tf:
            for n in names:
                key = Path(n).stem
                caps = "\n".join(c for m, c in PAIRS if m == n).encode("utf-8")
                for member, body in [(f"{key}.png", (imgs / n).read_bytes()), (f"{key}.txt", caps),
                                     (f"{key}.json", b'{"ignored": true}')]:  # fmt: skip
                    info = tarfile.TarInfo(member)
                    info.size = len(body)
                    tf.addfile(info, io.BytesIO(body))
    return root


@pytest.fixture(scope="module")
def expected(corpus) -> list[tuple[str, str]]:
    return [(c, _pixels(str(corpus / "imgs" / n))) for n, c in PAIRS]


def _hf(corpus: Path, kind: str):
    datasets = pytest.importorskip("datasets")
    caps = [c for _, c in PAIRS]
    if kind == "paths":  # plain strings, relative to root=
        return datasets.Dataset.from_dict({"image_path": [f"imgs/{n}" for n, _ in PAIRS], "caption": caps})
    # PIL images built from pixels (no file behind them): stored as PNG bytes, one copy per row.
    ims = [Image.fromarray(np.asarray(Image.open(corpus / "imgs" / n))) for n, _ in PAIRS]
    return datasets.Dataset.from_dict({"image": ims, "caption": caps})


def _every_source(corpus: Path, tmp_path: Path):
    t = corpus / "tables"
    yield "csv", load_pairs(t / "pairs.csv")
    yield "tsv", load_pairs(t / "pairs.tsv")
    yield "csv sep/columns", load_pairs(t / "semi.csv", sep=";", image_column="file", caption_column="text")
    yield "csv seed header", load_pairs(t / "seed.csv")
    yield "json list", load_pairs(t / "list.json")
    yield "json data", load_pairs(t / "wrapped.json")
    yield "json caption list", load_pairs(t / "grouped.json")
    yield "jsonl", load_pairs(str(t / "pairs.jsonl"))
    yield "captions.txt", load_pairs(corpus / "imgs")
    yield "captions.txt file", load_pairs(corpus / "imgs" / "captions.txt")
    yield "sidecar txt", load_pairs(corpus / "side")
    yield "webdataset dir", load_pairs(corpus / "shards")
    yield "webdataset glob", load_pairs(str(corpus / "shards" / "train-*.tar"))
    yield "webdataset list", load_pairs(sorted((corpus / "shards").glob("*.tar")))
    datasets = pytest.importorskip("datasets")
    yield "hf paths", load_pairs(_hf(corpus, "paths"), root=corpus)
    pil = _hf(corpus, "pil")
    yield "hf pil", load_pairs(pil, image_column="image")
    yield "hf dict", load_pairs(pil.train_test_split(test_size=1, shuffle=False), hf_split="train")  # 4 of 5 rows
    yield "hf dict, one split", load_pairs(datasets.DatasetDict({"validation": pil}))
    pil.save_to_disk(str(tmp_path / "saved"))
    yield "load_from_disk", load_pairs(tmp_path / "saved")
    datasets.DatasetDict({"train": pil, "test": pil.select([0])}).save_to_disk(str(tmp_path / "saved_dict"))
    yield "load_from_disk dict", load_pairs(tmp_path / "saved_dict")
    pil.to_parquet(str(tmp_path / "pairs.parquet"))
    yield "parquet", load_pairs(tmp_path / "pairs.parquet", cache_dir=tmp_path / "hf-cache")


def test_every_format_yields_the_same_pairs(corpus, expected, tmp_path):
    seen = set()
    for name, ds in _every_source(corpus, tmp_path):
        seen.add(name)
        assert isinstance(ds, CaptionDataset)
        assert ds.bad_rows == (), (name, ds.bad_rows)
        got = [(p.caption, _pixels(p.image)) for p in ds.pairs]
        if name == "hf dict":
            assert got == expected[:4], name
            assert ds.num_images == 3, name
            continue
        assert got == expected, name
        assert ds.num_images == len(NAMES), name
        assert len(ds) == len(PAIRS), name
        # The two captions of img0 share one image id, in every format.
        assert ds.pairs[0].image_id == ds.pairs[1].image_id != ds.pairs[2].image_id, name
    assert len(seen) == 21


def test_path_sources_name_images_by_absolute_path(corpus):
    ds = load_pairs(corpus / "tables" / "pairs.csv")
    img0 = str((corpus / "imgs" / "img0.png").resolve())
    assert ds.pairs[0] == ImageCaptionPair(img0, "a red square", img0, f"{corpus / 'tables' / 'pairs.csv'}:2")
    assert ds.image_ids == tuple(str((corpus / "imgs" / n).resolve()) for n in NAMES)
    shard = load_pairs(corpus / "shards" / "train-000.tar")
    assert shard.pairs[0].origin == f"{corpus / 'shards' / 'train-000.tar'}:img0"
    assert shard.image_ids[0] == f"{corpus / 'shards' / 'train-000.tar'}#img0"


def test_relative_paths_follow_the_file_not_the_cwd(corpus, tmp_path, monkeypatch):
    elsewhere = tmp_path / "a" / "b"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    rel_csv = os.path.relpath(corpus / "tables" / "pairs.csv", elsewhere)
    assert rel_csv.startswith("..")
    ds = load_pairs(rel_csv)
    assert ds.bad_rows == ()
    assert {Path(p.image) for p in ds.pairs} == {(corpus / "imgs" / n).resolve() for n in NAMES}


def test_wrong_column_is_a_data_error_naming_the_closest(corpus, tmp_path):
    t = corpus / "tables"
    with pytest.raises(DataError, match=r"no caption column 'captoin'.*'caption'.*did you mean 'caption'") as e:
        load_pairs(t / "pairs.csv", caption_column="captoin")
    assert e.value.path == str(t / "pairs.csv")
    with pytest.raises(DataError, match=r"no image column 'image_path'.*'id', 'file', 'text'"):
        load_pairs(t / "semi.csv", sep=";")
    with pytest.raises(DataError, match=r"no image column 'img'.*did you mean 'image'"):
        load_pairs(t / "list.json", json_image_key="img")
    with pytest.raises(DataError, match=r"no image column 'Image_Path'.*did you mean 'image_path'"):
        load_pairs(t / "pairs.csv", image_column="Image_Path")
    pytest.importorskip("datasets")
    pil = _hf(corpus, "pil")
    with pytest.raises(DataError, match=r"no image column 'imgae'.*did you mean 'image'"):
        load_pairs(pil, image_column="imgae")
    with pytest.raises(DataError, match=r"no split 'trian'.*did you mean 'train'"):
        load_pairs(pil.train_test_split(test_size=1), hf_split="trian")


def test_bad_rows_are_reported_with_file_and_line_and_good_rows_kept(corpus, tmp_path):
    imgs = corpus / "imgs"
    (tmp_path / "empty.png").write_bytes(b"")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text(
        "image_path,caption\n"                       # 1
        f"{imgs / 'img0.png'},a red square\n"        # 2 good
        "missing.png,a ghost\n"                      # 3 no such file
        f"{imgs / 'img1.png'},   \n"                 # 4 empty caption
        "\n"                                         # 5 blank: skipped quietly
        f"{imgs / 'img2.png'}\n"                     # 6 short row
        'x.png,"a caption\nover two lines"\n'        # 7-8 no such file (quoted newline)
        "empty.png,nothing inside\n"                 # 9 empty file
        f"{imgs / 'img2.png'},a cat,extra\n"         # 10 long row
        f"{imgs / 'img3.png'},a bird\n",             # 11 good
        encoding="utf-8",
    )  # fmt: skip
    with open(bad_csv, "ab") as fh:
        fh.write(f"{imgs / 'img3.png'},caf".encode() + b"\xe9 latin-1\n")  # 12 not UTF-8
    ds = load_pairs(bad_csv)
    assert [p.caption for p in ds.pairs] == ["a red square", "a bird"]
    where = str(bad_csv)
    assert [(b.origin, b.line) for b in ds.bad_rows] == [(where, n) for n in (3, 4, 6, 7, 9, 10, 12)]
    reasons = [b.reason for b in ds.bad_rows]
    assert "no image file" in reasons[0] and str(tmp_path / "missing.png") in reasons[0]
    assert reasons[1] == "caption is empty"
    assert reasons[2] == "1 fields where the header has 2"
    assert "empty (0 bytes)" in reasons[4]
    assert "unquoted separator" in reasons[5]
    assert reasons[6] == "caption is not UTF-8 text"
    assert str(ds.bad_rows[1]) == f"{where}:4: caption is empty"
    assert ds.summary() == f"2 pairs of 2 images from {where}; 7 bad rows skipped"

    bad_json = tmp_path / "bad.json"
    bad_json.write_text(
        '{"data": [\n'
        f'  {{"image": "{imgs / "img0.png"}", "caption": "ok"}},\n'  # 2
        '  {"image": "img1.png"},\n'  # 3 no caption field (and no such file here)
        f'  {{"image": "{imgs / "img1.png"}", "caption": ["fine", ""]}},\n'  # 4 one of two empty
        '  "not a record",\n'  # 5
        f'  {{"image": "{imgs / "img2.png"}",\n   "caption": 7}}\n'  # 6
        "]}\n",
        encoding="utf-8",
    )
    ds = load_pairs(bad_json)
    assert [p.caption for p in ds.pairs] == ["ok", "fine"]
    assert ds.pairs[1].origin == f"{bad_json}:4"
    assert [(b.line, b.reason) for b in ds.bad_rows] == [
        (3, "no 'caption' field"),
        (4, "caption 2 of 2 is empty"),
        (5, "record is a str, not an object"),
        (6, "caption is a int, not text"),
    ]

    caps = tmp_path / "captions.txt"
    caps.write_text(f"{imgs / 'img0.png'}\tok\nno tab here\n\n{imgs / 'img1.png'}\t\n", encoding="utf-8")
    ds = load_pairs(caps)
    assert len(ds) == 1
    assert [(b.line, b.reason) for b in ds.bad_rows] == [(2, "no tab between the image name and the caption"),
                                                          (4, "caption is empty")]  # fmt: skip

    shard = tmp_path / "bad.tar"
    with tarfile.open(shard, "w") as tf:
        for member, body in [("a.png", (imgs / "img0.png").read_bytes()), ("a.txt", b"ok"),
                             ("b.png", (imgs / "img1.png").read_bytes()),  # no caption
                             ("c.txt", b"no image"), ("d.png", b""), ("d.txt", b"empty image"),
                             ("e.png", (imgs / "img2.png").read_bytes()), ("e.txt", b"  \n")]:  # fmt: skip
            info = tarfile.TarInfo(member)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
    ds = load_pairs(shard)
    assert [p.caption for p in ds.pairs] == ["ok"]
    assert [(b.origin, b.reason) for b in ds.bad_rows] == [
        (f"{shard}:b", "no txt member (caption)"),
        (f"{shard}:c", "no image member (jpg/jpeg/png/webp)"),
        (f"{shard}:d", "image is empty (0 bytes)"),
        (f"{shard}:e", "caption is empty"),
    ]
    # A truncated shard keeps what came before the damage and says so; nothing is raised.
    cut = tmp_path / "cut.tar"
    cut.write_bytes((corpus / "shards" / "train-000.tar").read_bytes()[:1536 + 512 + 700])
    ds = load_pairs(cut)
    assert [p.caption for p in ds.pairs] == [PAIRS[0][1], PAIRS[1][1]]
    assert len(ds.bad_rows) == 1 and ds.bad_rows[0].origin == str(cut) and "unreadable" in ds.bad_rows[0].reason


def test_good_rows_reach_preprocessing(corpus, tmp_path):
    """Skipped rows never reach the image pipeline, and every kept image preprocesses."""
    (tmp_path / "mixed.jsonl").write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [{"image": str(corpus / "imgs" / "img0.png"), "caption": "ok"}, {"image": "gone.png", "caption": "x"},
                      {"image": str(corpus / "imgs" / "img1.png"), "caption": ""}, {"caption": "no image"}]  # fmt: skip
        )
        + "{not json\n",
        encoding="utf-8",
    )
    ds = load_pairs(tmp_path / "mixed.jsonl")
    assert sorted(b.line for b in ds.bad_rows) == [2, 3, 4, 5]
    for source in (ds, load_pairs(corpus / "shards")):
        res = Preprocessor(PreprocessConfig.clip(32), num_threads=1).preprocess([p.image for p in source.pairs])
        assert not res.errors
        assert res.pixel_values.shape == (len(source), 3, 32, 32)


def test_split_keeps_each_image_whole(tmp_path):
    rng = np.random.default_rng(1)
    lines = ["image_path,caption"]
    for i in range(30):
        (tmp_path / f"{i}.png").write_bytes(_png(smooth_rgb(rng, 8, 8)))
        lines += [f"{i}.png,caption {k} of {i}" for k in range(1 + i % 3)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds = load_pairs(tmp_path / "d.csv")
    parts = ds.split(val=0.2, test=0.1, seed=3)
    assert set(parts) == {"train", "val", "test"}
    ids = [set(p.image_ids) for p in parts.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert (len(ids[1]), len(ids[2])) == (6, 3)
    assert sum(len(p) for p in parts.values()) == len(ds)
    groups = ds.by_image()
    for part in parts.values():
        for image_id, idx in part.by_image().items():
            assert len(idx) == len(groups[image_id])  # all captions of an image go together
        assert [ds.image_ids[i] for i in part.text_to_image] != []
    assert parts == ds.split(val=0.2, test=0.1, seed=3)
    assert list(ds.text_to_image[:4]) == [0, 1, 1, 2]


def test_optional_libraries_are_imported_only_when_needed(corpus, monkeypatch):
    code = "import sys, ferroclip.data; assert 'datasets' not in sys.modules and 'webdataset' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    monkeypatch.setitem(sys.modules, "datasets", None)
    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(ImportError, match=r"ferroclip\[data\]"):
        load_pairs(corpus / "shards")
    (corpus / "x.parquet").write_bytes(b"PAR1")
    try:
        with pytest.raises(ImportError, match=r"`datasets`.*ferroclip\[data\]"):
            load_pairs(corpus / "x.parquet")
    finally:
        (corpus / "x.parquet").unlink()


def test_unknown_sources_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_pairs(tmp_path / "nope.csv")
    (tmp_path / "x.xlsx").write_bytes(b"")
    with pytest.raises(DataError, match="cannot tell the format"):
        load_pairs(tmp_path / "x.xlsx")
    with pytest.raises(DataError, match="found no captions.txt"):
        load_pairs(tmp_path)
    with pytest.raises(DataError, match="no files match"):
        load_pairs(str(tmp_path / "*.tar"))
    with pytest.raises(ValueError, match="unknown format"):
        load_pairs(tmp_path / "x.xlsx", format="excel")
    with pytest.raises(TypeError):
        load_pairs(42)
    assert BadRow("f.csv", None, "why").__str__() == "f.csv: why"
