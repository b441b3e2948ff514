"""``ferroclip score``: seed 003's ``benchmaker postprocess similarity`` as one command.

Reads ``query, image_url[, query_id, image_id]`` rows from a CSV or JSONL file, scores
them with the model a ``[similarity_config]`` table names, and writes every input row
back with the score column (``col_name``) and an ``error`` column, in input order; rows
that cannot be scored keep an empty score and say why.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from ._atomic import atomic_write
from .errors import DataError

__all__ = ["read_rows", "register", "write_rows"]

_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _format(path: Path) -> str:
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: use a .csv or .jsonl file", str(path))
    return fmt


def read_rows(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """``(rows, field names in file order)`` of a CSV (header row) or JSONL file."""
    p = Path(path)
    fmt = _format(p)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{p}: no such input file", str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read: {exc}", str(p)) from None
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = [dict(r) for r in reader]
        names = list(reader.fieldnames or [])
    else:
        rows, names = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{p}:{n}: not a JSON object: {exc}", str(p)) from None
            if not isinstance(row, dict):
                raise DataError(f"{p}:{n}: each line must be a JSON object, got {type(row).__name__}", str(p))
            rows.append(row)
            names.extend(k for k in row if k not in names)
    if "query" not in names or not ({"image_url", "image"} & set(names)):
        raise DataError(f"{p}: needs 'query' and 'image_url' (or 'image') fields, has {names}", str(p))
    return rows, names


def write_rows(path: str | Path, rows: list[dict[str, Any]], names: list[str]) -> None:
    p = Path(path)
    fmt = _format(p)
    with atomic_write(p) as fh:
        if fmt == "csv":
            text = io.StringIO(newline="")
            writer = csv.DictWriter(text, fieldnames=names, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in names})
            fh.write(text.getvalue().encode("utf-8"))
        else:
            for row in rows:
                fh.write((json.dumps({k: row.get(k) for k in names}, ensure_ascii=False) + "\n").encode("utf-8"))


def _cmd_score(args: argparse.Namespace) -> int:
    from .scoring import SimilarityConfig, SimilarityScorer

    config = SimilarityConfig.from_toml(args.config) if args.config else SimilarityConfig()
    overrides = {
        "model": args.model,
        "device": args.device,
        "torch_dtype": args.dtype,
        "col_name": args.col_name,
        "batch_size": args.batch_size,
        "backend": args.backend,
    }
    if args.allow_pickle:
        overrides["use_safetensors"] = False
    rows, names = read_rows(args.input)
    if args.quiet:
        from ._cli_models import _quiet_transformers

        _quiet_transformers()
    scorer = SimilarityScorer(config, **overrides)
    col = scorer.col_name
    results = scorer.score_batch(rows, progress=False if args.quiet else None)
    out_rows = []
    for row, res in zip(rows, results):
        out = dict(row)
        # float32 cosines hold ~7 digits: 6 decimals, not 1.0000001192092896.
        out[col] = None if res.score is None else round(float(res.score), 6)
        out["error"] = res.error
        out_rows.append(out)
    out_names = names + [n for n in (col, "error") if n not in names]
    write_rows(args.out, out_rows, out_names)
    failed = [r for r in results if not r.ok]
    for r in failed[:20]:
        print(f"error: row {r.index + 1}: {r.error}", file=sys.stderr)
    if len(failed) > 20:
        print(f"... and {len(failed) - 20} more (see the 'error' column)", file=sys.stderr)
    print(
        f"scored {len(results) - len(failed)} of {len(results)} rows with {scorer.model.name} into column "
        f"{col!r} -> {args.out}",
        file=sys.stderr,
    )
    return 1 if failed and args.strict else 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "score",
        help="score query-image rows of a CSV/JSONL file into a similarity column",
        description="Score each (query, image_url) row of INPUT (.csv with a header, or .jsonl) with a CLIP-family "
        "model and write the rows to OUT with the score column and an 'error' column. The model and column come "
        "from the [similarity_config] table of --config (seed 003's config.toml), overridden by the flags.",
    )
    p.add_argument("input", help="rows: query, image_url (or image), optionally query_id, image_id")
    p.add_argument("--out", "-o", required=True, help="output .csv or .jsonl (written atomically)")
    p.add_argument("--config", "-c", default=None, help="TOML file with a [similarity_config] table")
    p.add_argument("--model", "-m", default=None, help="model (default: the config's, else openai/clip-vit-base-patch32)")
    p.add_argument("--backend", choices=["auto", "torch", "onnx"], default=None)
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--dtype", "--torch-dtype", choices=["float32", "float16", "bfloat16"], default=None)
    p.add_argument("--col-name", default=None, help="score column (default: the config's, else clip_score)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--allow-pickle", action="store_true", help="allow .bin weights (use_safetensors = false)")
    p.add_argument("--strict", action="store_true", help="exit 1 if any row could not be scored")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_score)
