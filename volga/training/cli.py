"""``volga historical``: write a point-in-time training set from the command line.

    volga historical app.py --spine spine.parquet --features user_spent.avg_spent_7d user_stats \\
        --out train.parquet [--timestamp-column timestamp] [--full-names] [--compute] \\
        [--ttl 1h | --ttl user_spent=1h ...] [--key-map user_id=buyer ...] [--args '{"n": 5}']

``app.py`` (or ``app.py:client``, or ``package.module:client``) defines the features and a
``volga.Client`` whose offline store holds their rows, as for ``volga serve``. The spine
and the output are Parquet or CSV files (by extension). ``--features`` takes names
separated by spaces or commas.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl


def add_parser(commands: Any) -> None:
    """Add the ``historical`` subcommand to the ``volga`` CLI's subparsers."""
    p = commands.add_parser("historical", help="write a point-in-time training set for a spine")
    p.add_argument("app", help="the module defining the features and a volga.Client: app.py, app.py:client or pkg.mod:client")
    p.add_argument("--spine", required=True, help="the spine: a Parquet or CSV file with key and timestamp columns")
    p.add_argument("--features", required=True, nargs="+", help="feature names: user_spent, user_spent.avg_spent_7d ...")
    p.add_argument("--out", required=True, help="where to write the training set (.parquet or .csv)")
    p.add_argument("--timestamp-column", default="timestamp", help="the spine's timestamp column (default: timestamp)")
    p.add_argument("--full-names", action="store_true", help="name columns '<feature>.<field>'")
    p.add_argument("--compute", action="store_true", help="backfill the pipelines from their sources first")
    p.add_argument("--ttl", action="append", default=[], metavar="[FEATURE=]DURATION", help="null values older than this (repeatable)")
    p.add_argument("--key-map", action="append", default=[], metavar="[FEATURE:]KEY=COLUMN", help="read a key from another spine column (repeatable)")
    p.add_argument("--args", default=None, help="on-demand arguments as a JSON object, e.g. '{\"n\": 5}'")


def main(args: argparse.Namespace) -> int:
    from volga.serving.run import AppError, load_app

    started = time.perf_counter()
    try:
        options = _options(args)
        spine = _read(Path(args.spine))
        client = load_app(args.app)
        train = client.get_historical_features(spine, options.pop("features"), **options)
        _write(train, Path(args.out))
    except AppError as e:
        print(str(e).replace("volga serve:", "volga historical:", 1), file=sys.stderr)
        return 2
    except (ValueError, TypeError, LookupError, OSError, pl.exceptions.PolarsError) as e:
        print(f"volga historical: {e}", file=sys.stderr)
        return 2
    print(f"volga historical: wrote {train.height:,} rows x {train.width} columns to {args.out} "
          f"in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0


def _options(args: argparse.Namespace) -> dict[str, Any]:
    features = [f for item in args.features for f in item.split(",") if f]
    ttl: Any = None
    for item in args.ttl:
        name, eq, value = item.rpartition("=")
        if not eq:
            if ttl is not None:
                raise ValueError(f"--ttl {item}: give one global ttl, or FEATURE=DURATION per feature")
            ttl = value
        else:
            if isinstance(ttl, str):
                raise ValueError(f"--ttl {item}: give one global ttl, or FEATURE=DURATION per feature, not both")
            ttl = {**(ttl or {}), name: value}
    key_map: dict[str, Any] = {}
    for item in args.key_map:
        left, eq, column = item.partition("=")
        if not eq or not left or not column:
            raise ValueError(f"--key-map {item}: write KEY=COLUMN or FEATURE:KEY=COLUMN")
        feature, colon, key = left.rpartition(":")
        if colon:
            key_map.setdefault(feature, {})[key] = column
        else:
            key_map[key] = column
    extra = None
    if args.args:
        try:
            extra = json.loads(args.args)
        except json.JSONDecodeError as e:
            raise ValueError(f"--args must be a JSON object: {e}") from None
        if not isinstance(extra, dict):
            raise ValueError(f"--args must be a JSON object, got {args.args}")
    return {
        "features": features, "timestamp_column": args.timestamp_column, "key_map": key_map or None, "ttl": ttl,
        "args": extra, "full_names": args.full_names, "compute": args.compute,
    }


def _read(path: Path) -> pl.DataFrame:
    if not path.is_file():
        raise ValueError(f"--spine: no such file {str(path)!r}")
    if path.suffix == ".csv":
        return pl.read_csv(path, try_parse_dates=True)
    return pl.read_parquet(path)


def _write(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
