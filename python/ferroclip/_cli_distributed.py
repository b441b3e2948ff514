"""``ferroclip embed-dataset``, and ``ferroclip search`` over its output directory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _cmd_embed_dataset(args: argparse.Namespace) -> int:
    from .distributed import embed_dataset
    from .distributed.embed import import_ray

    try:
        import_ray()
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    load_kwargs: dict[str, Any] = {"backend": args.backend, "local_files_only": args.offline}
    if args.model_dtype:
        load_kwargs["dtype"] = args.model_dtype
    s = embed_dataset(
        args.model,
        args.source,
        args.out,
        num_actors=args.actors,
        batch_size=args.batch_size,
        num_gpus_per_actor=args.gpus_per_actor,
        num_cpus_per_actor=args.cpus_per_actor,
        address=args.address,
        dtype=args.dtype,
        shard_size=args.shard_size,
        column=args.column,
        text_column=args.text_column,
        load_kwargs=load_kwargs,
        progress=not args.quiet,
    )
    print(
        f"{s.num_items} items in {s.shards_total} shards -> {s.out_dir}: {s.shards_embedded} shards embedded now "
        f"({s.images_embedded} images, {s.images_failed} failed, {s.images_per_second:.1f} img/s), "
        f"{s.shards_skipped} already done",
        file=sys.stderr,
    )
    return 1 if s.images_failed and args.strict else 0


def is_dataset_output(path: str) -> bool:
    """``path`` is an ``embed-dataset`` output (its manifest is there or one level down)."""
    from .distributed.shards import MANIFEST

    p = Path(path)
    return p.is_dir() and ((p / MANIFEST).is_file() or any(p.glob(f"*/{MANIFEST}")))


def search_dataset_output(args: argparse.Namespace, load: Any) -> int:
    """``ferroclip search OUT "text"``: the stored vectors, queried with the model that made them.

    ``--model`` left at its default means the model named in the manifest.
    """
    import pyarrow.parquet as pq

    from ._index_parquet import parquet_files
    from .distributed.shards import find_output_dir, read_manifest
    from .index import EmbeddingIndex

    root = find_output_dir(args.folder)
    manifest = read_manifest(root)
    if args.model == "clip-vit-b-32":
        args.model = manifest["model"]
    model = load(args)
    if model.dim != manifest["dim"]:
        print(f"error: {args.model} gives {model.dim}-d vectors, {root} holds {manifest['dim']}-d ones", file=sys.stderr)
        return 2
    if args.image is not None:
        q = model.encode_images([args.image], progress=False)
        q.raise_for_errors()
        query = q.embeddings[0]
    else:
        query = model.encode_texts([args.text])[0]
    index = EmbeddingIndex.from_parquet(root, dtype="float32")
    if len(index) == 0:
        return 0
    scores, ids = index.search(query, min(args.k, len(index)))
    paths: dict[str, str] = {}
    for f in parquet_files(root):
        t = pq.read_table(f, columns=["id", "path"])
        paths.update(zip(t.column("id").to_pylist(), t.column("path").to_pylist()))
    hits = [(paths.get(i, str(i)), float(s)) for i, s in zip(ids[0], scores[0])]
    if args.json:
        print(json.dumps([{"path": p, "score": s} for p, s in hits], indent=2))
    else:
        for rank, (p, score) in enumerate(hits, 1):
            print(f"{rank:3d}  {score:+.4f}  {p}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "embed-dataset",
        help="embed a large image collection on Ray (local or a cluster) into resumable Parquet shards",
        description="Embed every image of SOURCE (a folder, a .txt/.csv/.parquet list of paths or URLs, "
        "webdataset .tar shards) with a pool of Ray actors, each holding the model once. Output: Parquet "
        "shards plus a manifest under OUT/<model>-<fingerprint>/; a re-run embeds only unfinished shards. "
        "With --text-column the texts are embedded as well (search them with "
        "EmbeddingIndex.from_parquet(OUT, column='text_embedding')). "
        "Needs `pip install 'ferroclip[ray]'`.",
    )
    p.add_argument("source")
    p.add_argument("out")
    p.add_argument("--model", "-m", required=True, help="preset name, hub id or checkpoint dir")
    p.add_argument("--actors", type=int, default=None, help="actors in the pool (default: fill the cluster)")
    p.add_argument("--address", default=None, help='Ray address: "auto", "ray://host:10001" (default: local Ray)')
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="stored embedding dtype")
    p.add_argument("--shard-size", type=int, default=1000, help="items per output shard (the unit of resumption)")
    p.add_argument("--gpus-per-actor", type=float, default=0)
    p.add_argument("--cpus-per-actor", type=float, default=1)
    p.add_argument("--column", default=None, help="path/URL column of a CSV or Parquet list")
    p.add_argument(
        "--text-column",
        default=None,
        help="also embed this text: a CSV/Parquet column, 'caption' for a caption dataset, or the webdataset "
        "member extension (txt); adds text, text_embedding, text_ok and text_error columns",
    )
    p.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto")
    p.add_argument("--model-dtype", choices=["float32", "float16", "bfloat16"], default=None)
    p.add_argument("--offline", action="store_true", help="never contact the hub")
    p.add_argument("--strict", action="store_true", help="exit 1 if any image failed")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_embed_dataset)
