"""embed_dataset on a local Ray (2 CPUs, one cluster for the module): the same vectors as
embed_folder, bad files as ok=false rows, a killed driver resumed shard by shard, a killed
actor restarted by Ray, text columns embedded like encode_texts, and
EmbeddingIndex.from_parquet searching like topk.

The killed-actor test uses the private test hook of ferroclip.distributed.embed: the env var
_FERROCLIP_TEST_KILL_ACTOR_FILE names a file; while it exists, the first actor to reach the
batch number written in it renames it to <file>.fired and SIGKILLs itself. The module's Ray
cluster is started with that variable set (workers inherit the environment of ray.init), and
the file only exists during that one test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ferroclip
from ferroclip.distributed.embed import _KILL_HOOK_ENV
from ferroclip.distributed.shards import OutputDir

from ._images import smooth_rgb
from ._models import tiny_clip

# Ray Data warns about its own deprecated settings when it reads its context.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),
    pytest.mark.filterwarnings("ignore::FutureWarning:ray.*"),
]

SHARD = 3  # 11 images + 1 broken file: 4 shards


@pytest.fixture(scope="module")
def kill_trigger(tmp_path_factory) -> Path:
    """Where the killed-actor test writes the trigger file (absent otherwise: the hook is idle)."""
    return tmp_path_factory.mktemp("hook") / "kill-actor"


@pytest.fixture(scope="module")
def ray_address(kill_trigger):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    os.environ[_KILL_HOOK_ENV] = str(kill_trigger)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        del os.environ[_KILL_HOOK_ENV]
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_clip(tmp_path_factory.mktemp("model") / "clip", image_size=32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    rng = np.random.default_rng(5)
    for i in range(11):
        where = root / "sub" if i % 4 == 0 else root
        Image.fromarray(smooth_rgb(rng, 40 + 5 * i, 36 + i)).save(where / f"p{i:02d}.{'png' if i % 2 else 'jpg'}")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def clean(ray_address, ckpt, folder, tmp_path_factory):
    from ferroclip.distributed import embed_dataset

    out = tmp_path_factory.mktemp("clean")
    return embed_dataset(ckpt, folder, out, num_actors=2, batch_size=2, shard_size=SHARD, progress=False)


def _rows(root: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    rows = {}
    for f in sorted(root.glob("shard-*.parquet")):
        for r in pq.read_table(f).to_pylist():
            rows[r["id"]] = r
    return rows


def test_same_vectors_and_ids_as_embed_folder(clean, ckpt, folder, tmp_path):
    model = ferroclip.load_model(ckpt, device="cpu")
    ref = ferroclip.embed_folder(model, folder, tmp_path / "cache", progress=False)
    rows = _rows(clean.out_dir)
    good = sorted(k for k, r in rows.items() if r["ok"])
    assert good == ref.paths
    got = np.array([rows[k]["embedding"] for k in good], dtype=np.float32)
    cos = (got * ref.embeddings).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref.embeddings, axis=1)
    assert cos.min() >= 0.99999
    assert clean.num_items == 12 and clean.shards_total == 4 and clean.shards_embedded == 4
    assert clean.images_failed == 1


def test_bad_files_are_rows_with_the_error(clean, ckpt, folder, tmp_path):
    model = ferroclip.load_model(ckpt, device="cpu")
    ref = ferroclip.embed_folder(model, folder, tmp_path / "cache", progress=False)
    bad = _rows(clean.out_dir)["broken.jpg"]
    assert bad["ok"] is False and bad["embedding"] is None
    assert bad["error"] == ref.errors["broken.jpg"] and bad["error"]
    assert bad["path"] == str((folder / "broken.jpg").resolve())


def test_parquet_metadata_and_manifest(clean):
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = json.loads((clean.out_dir / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_items"] == 12 and len(manifest["shards"]) == 4
    schema = pq.read_schema(clean.out_dir / "shard-00000.parquet")
    meta = json.loads(schema.metadata[b"ferroclip"])
    assert meta["fingerprint"] == manifest["fingerprint"] and meta["identity"]["preprocess"]
    typ = schema.field("embedding").type
    assert pa.types.is_fixed_size_list(typ) and typ.list_size == manifest["dim"] and pa.types.is_float32(typ.value_type)


def test_rerun_does_nothing(clean, ckpt, folder):
    from ferroclip.distributed import embed_dataset

    before = {f.name: f.stat().st_mtime_ns for f in clean.out_dir.glob("shard-*.parquet")}
    again = embed_dataset(ckpt, folder, clean.out_dir.parent, shard_size=SHARD, progress=False)
    assert again.out_dir == clean.out_dir and again.shards_embedded == 0 and again.shards_skipped == 4
    assert {f.name: f.stat().st_mtime_ns for f in clean.out_dir.glob("shard-*.parquet")} == before


def test_changed_setting_writes_elsewhere(clean):
    manifest = json.loads((clean.out_dir / "manifest.json").read_text())
    ident = manifest["identity"]
    same = OutputDir(clean.out_dir.parent, "m", ident, dtype="float32", shard_size=SHARD)
    assert same.root == clean.out_dir
    assert OutputDir(clean.out_dir.parent, "m", ident, dtype="float16", shard_size=SHARD).root != clean.out_dir
    assert OutputDir(clean.out_dir.parent, "m", ident, dtype="float32", shard_size=SHARD + 1).root != clean.out_dir
    other = dict(ident, preprocess=dict(ident["preprocess"], crop_size=[16, 16]))
    assert OutputDir(clean.out_dir.parent, "m", other, dtype="float32", shard_size=SHARD).root != clean.out_dir
    texts = {OutputDir(clean.out_dir.parent, "m", ident, dtype="float32", shard_size=SHARD, text_column=c).root
             for c in ("caption", "txt")}
    assert len(texts) == 2 and clean.out_dir not in texts  # each text column has its own directory


_DRIVER = textwrap.dedent(
    """
    import sys, time
    from ferroclip.distributed import embed_dataset, shards

    write = shards.OutputDir.write_shard
    def slow_write(self, *a, **kw):  # a slow driver: time to kill it between two shards
        write(self, *a, **kw)
        time.sleep(3)
    shards.OutputDir.write_shard = slow_write
    embed_dataset(sys.argv[1], sys.argv[2], sys.argv[3], address=sys.argv[4], num_actors=1,
                  batch_size=2, shard_size=%d, progress=False)
    """
    % SHARD
)


def test_killed_driver_resumes_only_missing_shards(clean, ray_address, ckpt, folder, tmp_path):
    from ferroclip.distributed import embed_dataset

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER, str(ckpt), str(folder), str(out), ray_address])
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("*/shard-*.parquet")):
            assert proc.poll() is None, "the driver ended before writing a shard"
            assert time.monotonic() < deadline, "no shard written in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    root = next(out.glob("*/"))
    kept = {f.name: f.stat().st_mtime_ns for f in root.glob("shard-*.parquet")}
    assert 1 <= len(kept) < 4
    assert not json.loads((root / "manifest.json").read_text())["complete"]

    resumed = embed_dataset(ckpt, folder, out, num_actors=2, batch_size=2, shard_size=SHARD, progress=False)
    assert resumed.out_dir == root
    assert resumed.shards_embedded == 4 - len(kept) and resumed.shards_skipped == len(kept)
    assert {n: (root / n).stat().st_mtime_ns for n in kept} == kept  # untouched
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["runs"]) == 2
    assert sorted(manifest["runs"][1]["todo"]) == sorted(int(n[6:11]) for n in {f"shard-{i:05d}.parquet" for i in range(4)} - set(kept))

    got, want = _rows(root), _rows(clean.out_dir)
    assert sorted(got) == sorted(want)
    for k, r in want.items():
        assert (got[k]["ok"], got[k]["error"], got[k]["path"]) == (r["ok"], r["error"], r["path"])
        if r["ok"]:
            np.testing.assert_allclose(got[k]["embedding"], r["embedding"], atol=1e-6)


def test_from_parquet_search_equals_topk(clean, tmp_path):
    rows = _rows(clean.out_dir)
    ids = sorted(k for k, r in rows.items() if r["ok"])
    vecs = np.array([rows[k]["embedding"] for k in ids], dtype=np.float32)
    index = ferroclip.EmbeddingIndex.from_parquet(clean.out_dir.parent)  # finds its one model directory
    assert index.ids == ids and len(index) == 11
    q = np.random.default_rng(0).standard_normal((4, vecs.shape[1])).astype(np.float32)
    scores, got = index.search(q, 5)
    ref_scores, ref_idx = ferroclip.topk(q, vecs, 5)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-6)
    assert got.tolist() == [[ids[i] for i in row] for row in ref_idx]

    half = ferroclip.EmbeddingIndex.from_parquet(clean.out_dir, dtype="float16")
    assert half.dtype == "float16" and half.ids == ids
    half.to_parquet(tmp_path / "index.parquet")
    back = ferroclip.EmbeddingIndex.from_parquet(tmp_path / "index.parquet")
    assert back.dtype == "float16" and back.ids == ids
    np.testing.assert_array_equal(back.vectors, half.vectors)


def test_missing_ray_names_the_extra(monkeypatch):
    from ferroclip.distributed.embed import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"ferroclip\[ray\]"):
        import_ray()


def test_cli_embed_dataset_then_search(clean, ckpt, folder, capsys):
    from ferroclip.cli import main as cli_main

    out = str(clean.out_dir.parent)
    rc = cli_main(["embed-dataset", str(folder), out, "--model", str(ckpt), "--batch-size", "2", "--shard-size", str(SHARD), "--quiet"])
    assert rc == 0 and "4 already done" in capsys.readouterr().err
    assert cli_main(["search", out, "a photo of a cat", "-k", "3", "--json", "--quiet"]) == 0  # model from the manifest
    hits = json.loads(capsys.readouterr().out)
    model = ferroclip.load_model(ckpt, device="cpu")
    index = ferroclip.EmbeddingIndex.from_parquet(out)
    _, ids = index.search(model.encode_texts(["a photo of a cat"]), 3)
    assert [h["path"] for h in hits] == [str((folder / i).resolve()) for i in ids[0]]


def test_webdataset_bytes_are_embedded_like_encode_images(ray_address, ckpt, tmp_path):
    import io
    import tarfile

    from ferroclip.distributed import embed_dataset

    blobs = {}
    for i in range(3):
        buf = io.BytesIO()
        Image.fromarray(smooth_rgb(np.random.default_rng(i), 30 + i, 34)).save(buf, "JPEG")
        blobs[f"s{i}"] = buf.getvalue()
    blobs["s3"] = b"\xff\xd8 truncated"
    shard = tmp_path / "train-000.tar"
    with tarfile.open(shard, "w") as tar:
        for key, data in blobs.items():
            for name, payload in ((f"{key}.jpg", data), (f"{key}.txt", b"a caption")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    s = embed_dataset(ckpt, shard, tmp_path / "out", num_actors=1, batch_size=2, shard_size=2, progress=False)
    rows = _rows(s.out_dir)
    assert sorted(rows) == [f"{shard}#s{i}" for i in range(4)] and s.images_failed == 1
    model = ferroclip.load_model(ckpt, device="cpu")
    ref = model.encode_images([blobs[f"s{i}"] for i in range(4)], progress=False)
    for i in range(3):
        np.testing.assert_allclose(rows[f"{shard}#s{i}"]["embedding"], ref.embeddings[i], atol=1e-5)
    bad = rows[f"{shard}#s3"]
    assert bad["ok"] is False and bad["error"] == ref.errors[0].reason


def test_killed_actor_is_restarted_and_the_output_equals_a_clean_run(clean, kill_trigger, ckpt, folder, tmp_path):
    from ferroclip.distributed import embed_dataset

    kill_trigger.write_text("2")  # the first actor to reach its 2nd batch SIGKILLs itself, once
    try:
        s = embed_dataset(ckpt, folder, tmp_path / "out", num_actors=2, batch_size=2, shard_size=SHARD, progress=False)
    finally:
        kill_trigger.unlink(missing_ok=True)
    assert Path(str(kill_trigger) + ".fired").exists(), "no actor was killed: the test proved nothing"
    assert s.shards_embedded == 4 and s.images_failed == 1
    got, want = _rows(s.out_dir), _rows(clean.out_dir)
    assert sorted(got) == sorted(want)
    for k, r in want.items():
        assert (got[k]["ok"], got[k]["error"], got[k]["path"]) == (r["ok"], r["error"], r["path"])
        if r["ok"]:
            np.testing.assert_allclose(got[k]["embedding"], r["embedding"], atol=1e-6)
    assert json.loads((s.out_dir / "manifest.json").read_text())["complete"]


@pytest.fixture(scope="module")
def captions_csv(folder) -> Path:
    """The folder's images listed with captions; p03's caption is empty, the broken file has one."""
    lines = ["path,caption"]
    for f in sorted(folder.rglob("*.jpg")) + sorted(folder.rglob("*.png")):
        rel = f.relative_to(folder).as_posix()
        caption = "" if rel == "p03.png" else f"a photo named {f.stem} number {len(rel)}"
        lines.append(f"{rel},{caption}")
    path = folder / "captions.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def with_text(ray_address, ckpt, captions_csv, tmp_path_factory):
    from ferroclip.distributed import embed_dataset

    out = tmp_path_factory.mktemp("text")
    images_only = embed_dataset(ckpt, captions_csv, out, num_actors=2, batch_size=2, shard_size=SHARD, progress=False)
    texts = embed_dataset(ckpt, captions_csv, out, num_actors=2, batch_size=2, shard_size=SHARD, text_column="caption",
                          progress=False)
    return images_only, texts


def test_text_column_is_embedded_like_encode_texts(with_text, ckpt, captions_csv):
    import csv

    images_only, texts = with_text
    assert texts.out_dir != images_only.out_dir  # the text column is part of the fingerprint
    assert json.loads((texts.out_dir / "manifest.json").read_text())["text_column"] == "caption"
    rows, plain = _rows(texts.out_dir), _rows(images_only.out_dir)
    assert sorted(rows) == sorted(plain) and len(rows) == 12
    with captions_csv.open(newline="") as fh:
        captions = {r["path"]: r["caption"] for r in csv.DictReader(fh)}
    model = ferroclip.load_model(ckpt, device="cpu")
    for k, r in rows.items():
        assert r["text"] == captions[k]
        # image columns are exactly the image-only run's, failures included
        assert (r["ok"], r["error"]) == (plain[k]["ok"], plain[k]["error"])
        if r["ok"]:
            np.testing.assert_allclose(r["embedding"], plain[k]["embedding"], atol=1e-6)
        if captions[k]:
            assert r["text_ok"] is True and r["text_error"] is None
            got = np.asarray(r["text_embedding"], np.float32)
            want = model.encode_texts([captions[k]])[0]
            assert float(got @ want / np.linalg.norm(got) / np.linalg.norm(want)) >= 0.99999
        else:
            assert r["text_ok"] is False and r["text_embedding"] is None and r["text_error"]
    assert rows["p03.png"]["ok"] is True and rows["p03.png"]["text_ok"] is False
    assert rows["broken.jpg"]["ok"] is False and rows["broken.jpg"]["text_ok"] is True


def test_text_embeddings_are_searchable_like_topk(with_text, ckpt):
    _, texts = with_text
    rows = _rows(texts.out_dir)
    ids = sorted(k for k, r in rows.items() if r["text_ok"])
    assert len(ids) == 11
    model = ferroclip.load_model(ckpt, device="cpu")
    vecs = model.encode_texts([rows[k]["text"] for k in ids])
    index = ferroclip.EmbeddingIndex.from_parquet(texts.out_dir, column="text_embedding")
    assert index.ids == ids
    q = model.encode_texts(["a photo named p05", "number 7"])
    scores, got = index.search(q, 4)
    ref_scores, ref_idx = ferroclip.topk(q, vecs, 4)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert got.tolist() == [[ids[i] for i in row] for row in ref_idx]
    images = ferroclip.EmbeddingIndex.from_parquet(texts.out_dir)  # the default column: the images
    assert len(images) == 11 and "broken.jpg" not in images.ids


def test_webdataset_txt_members_are_embedded(ray_address, ckpt, tmp_path):
    import io
    import tarfile

    from ferroclip.distributed import embed_dataset

    shard = tmp_path / "pairs-000.tar"
    captions = {"s0": "a red square", "s1": "", "s2": "two blue circles"}
    with tarfile.open(shard, "w") as tar:
        for i, (key, text) in enumerate(captions.items()):
            buf = io.BytesIO()
            Image.fromarray(smooth_rgb(np.random.default_rng(i), 30 + i, 34)).save(buf, "JPEG")
            for name, payload in ((f"{key}.jpg", buf.getvalue()), (f"{key}.txt", text.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    s = embed_dataset(ckpt, shard, tmp_path / "out", num_actors=1, batch_size=2, shard_size=2, text_column="txt",
                      progress=False)
    rows = _rows(s.out_dir)
    model = ferroclip.load_model(ckpt, device="cpu")
    for key, text in captions.items():
        r = rows[f"{shard}#{key}"]
        assert r["ok"] is True and r["text"] == text and r["text_ok"] is bool(text)
        if text:
            got, want = np.asarray(r["text_embedding"], np.float32), model.encode_texts([text])[0]
            assert float(got @ want / np.linalg.norm(got) / np.linalg.norm(want)) >= 0.99999
