"""directory-sync's speed beside the raw API's: 100,000 ads pushed by bench/ingest.py's
bare HTTP client, then the same ads pushed from a JSON Lines file by `directory-sync` (the
whole command: start-up, reading, digesting, batches, state file, report), on the same
server in the same run. The goal is a ratio of at least 0.80.

    .venv/bin/python bench/sync.py [--ads 100000] [--clients 4] [--workers N]

Each push goes to a portal of its own. Whichever runs second writes into a fuller table, so
both orders run, each on a fresh database, and the ratio is taken over both. Prints
figures; asserts nothing."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text

from bench.common import database, gunicorn
from bench.ingest import BATCH, make_batches, push
from directory import build_wiring
from directory.__main__ import DEFAULT_WORKERS
from directory.db import unit_of_work
from directory.services import portals
from directory.settings import Settings


def write_input(path: Path, batches) -> None:
    """The bench ads as directory-sync reads them: one JSON object a line."""
    with path.open("w") as file:
        for items, _ in batches:
            for item in items:
                file.write(json.dumps({"external_id": item["external_id"], **item["ad"]}) + "\n")


def run_sync(base_url: str, key: str, source: Path, concurrency: int) -> tuple[float, str]:
    """Wall time of one directory-sync run, and its summary."""
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable, "-m", "directory_client.sync_cli", str(source),
            "--directory", base_url, "--concurrency", str(concurrency),
        ],
        env={**os.environ, "DIRECTORY_PORTAL_KEY": key},
        capture_output=True,
        text=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"directory-sync failed ({result.returncode}):\n{result.stderr}")
    return elapsed, result.stdout.splitlines()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ads", type=int, default=100_000)
    parser.add_argument(
        "--clients", type=int, default=4, help="concurrent HTTP clients, and sync's --concurrency"
    )
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="gunicorn workers (as `serve`)"
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    batches = make_batches(args.ads, args.seed)
    folder = Path(tempfile.mkdtemp(prefix="directory-bench-sync-"))
    try:
        measure(args, batches, folder)
    finally:
        shutil.rmtree(folder)


def measure(args: argparse.Namespace, batches, folder: Path) -> None:
    source = folder / "ads.jsonl"
    write_input(source, batches)
    print(f"ads:                   {args.ads:,} in batches of {BATCH}, {args.clients} clients, "
          f"{args.workers} gunicorn workers")  # fmt: skip
    # Whichever push runs second writes into a table that holds the first one's ads: each
    # order runs once, on a fresh database, and the ratio is taken over both.
    totals = {"raw": 0.0, "sync": 0.0}
    for order in (("raw", "sync"), ("sync", "raw")):
        elapsed, summary, rerun = push_both(args, batches, source, order)
        for name in order:
            totals[name] += elapsed[name]
        print(f"{' then '.join(order)}:")
        print(f"  raw API (ingest.py): {args.ads / elapsed['raw']:,.0f} ads/s  "
              f"({elapsed['raw']:.1f} s)")  # fmt: skip
        print(f"  directory-sync:      {args.ads / elapsed['sync']:,.0f} ads/s  "
              f"({elapsed['sync']:.1f} s, the whole command: {summary})")  # fmt: skip
        print(f"  sync / raw:          {elapsed['raw'] / elapsed['sync']:.2f}")
        print(f"  unchanged rerun:     {rerun[0]:.1f} s  ({rerun[1]})")
    print(f"sync / raw, both orders: {totals['raw'] / totals['sync']:.2f}  (goal: at least 0.80)")


def push_both(args, batches, source: Path, order: tuple[str, str]):
    """Both pushes, in `order`, on a fresh database: their times, sync's summary, and the
    time and summary of an unchanged sync rerun."""
    with database() as url:
        wiring = build_wiring(Settings(database_url=url))
        with unit_of_work(wiring.session_factory) as session:
            _, raw_key = portals.create_portal(
                session, slug="bench-raw", name="Bench (raw API)", default_currencies=["EUR"]
            )
            _, sync_key = portals.create_portal(
                session,
                slug="bench-sync",
                name="Bench (directory-sync)",
                default_currencies=["EUR"],
            )
        elapsed, summary = {}, ""
        # Each portal's ads up to its limit, counted at each batch, as in production.
        limit = {"DIRECTORY_PORTAL_MAX_ADS": str(max(args.ads, 1))}
        with gunicorn(url, workers=args.workers, env=limit) as server:
            for name in order:
                if name == "raw":
                    elapsed["raw"], _ = push(server.base_url, raw_key.key, batches, args.clients)
                else:
                    elapsed["sync"], summary = run_sync(
                        server.base_url, sync_key.key, source, args.clients
                    )
            rerun = run_sync(server.base_url, sync_key.key, source, args.clients)
        with wiring.engine.connect() as connection:
            stored = connection.scalar(
                text(
                    "SELECT count(*) FROM ads JOIN portals ON portals.id = ads.portal_id "
                    "WHERE portals.slug = 'bench-sync'"
                )
            )
        wiring.close()
    if stored != args.ads:
        raise SystemExit(f"directory-sync stored {stored:,} ads, not {args.ads:,}")
    # A fresh state file for the next order's first sync.
    for leftover in source.parent.glob(source.name + ".sync-*"):
        leftover.unlink()
    return elapsed, summary, rerun


if __name__ == "__main__":
    main()
