"""Ingestion speed: 100,000 ads through POST /v1/ads/batch on one local server, beside
a plain COPY of the same rows into the same table (the floor to compare with).

    .venv/bin/python bench/ingest.py [--ads 100000] [--clients 4] [--workers N]

Prints figures; asserts nothing."""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
from sqlalchemy import text

from bench.common import (
    ad,
    children,
    database,
    gunicorn,
    machine_busy_s,
    process_cpu_s,
)
from directory import build_wiring
from directory.__main__ import DEFAULT_WORKERS
from directory.cores import usable_cores
from directory.db import libpq_url, unit_of_work
from directory.geo import Point, Privacy, publishable_point
from directory.services import portals
from directory.settings import Settings

BATCH = 1000


def make_batches(count: int, seed: int) -> list[tuple[list[dict], bytes]]:
    rng = random.Random(seed)
    items = [{"external_id": f"ad-{i}", "ad": ad(rng, i)} for i in range(count)]
    return [
        (items[i : i + BATCH], json.dumps({"items": items[i : i + BATCH]}).encode())
        for i in range(0, count, BATCH)
    ]


def push(base: str, key: str, batches, clients: int) -> tuple[float, list[float]]:
    target = urlparse(base)
    queue = list(enumerate(batches))
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []

    def client() -> None:
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
        while True:
            with lock:
                if not queue:
                    break
                _, (_, body) = queue.pop(0)
            started = time.perf_counter()
            connection.request(
                "POST",
                "/v1/ads/batch",
                body=body,
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
            )
            response = connection.getresponse()
            payload = json.loads(response.read())
            latencies.append(time.perf_counter() - started)
            if response.status != 200 or payload["counts"].get("created") != BATCH:
                failures.append(f"{response.status}: {str(payload)[:300]}")
        connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} batches failed, e.g. {failures[0]}")
    return elapsed, latencies


def copy_rows(database_url: str, portal_id: int, batches) -> float:
    """COPY the same ads (snapped as the API would) into the ads table, then undo."""
    import uuid
    from datetime import UTC, datetime, timedelta

    expires = datetime.now(UTC) + timedelta(days=90)
    rows = []
    for items, _ in batches:
        for item in items:
            body = item["ad"]
            location = body.get("location")
            point = publishable_point(
                Point(location["lat"], location["lon"]) if location else None,
                Privacy(body["privacy"]),
            )
            rows.append(
                (
                    uuid.uuid4(), portal_id, "copy-" + item["external_id"], body["kind"],
                    body["title"], body["body"], body["category"], body["tags"],
                    None if point is None else f"SRID=4326;POINT({point.lon} {point.lat})",
                    body["privacy"], "public", body["currencies"], body["language"], [],
                    expires, body["member"], "0" * 32,
                )
            )  # fmt: skip
    columns = (
        "id, portal_id, external_id, kind, title, body, category, tags, location, privacy, "
        "visibility, currencies, language, images, expires_at, member, content_hash"
    )
    with psycopg.connect(libpq_url(database_url)) as conn:
        started = time.perf_counter()
        with conn.cursor().copy(f"COPY ads ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
        elapsed = time.perf_counter() - started
        conn.execute("DELETE FROM ads WHERE external_id LIKE 'copy-%'")
        conn.commit()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ads", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="gunicorn workers (as `serve`)"
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    batches = make_batches(args.ads, args.seed)
    with database() as url:
        wiring = build_wiring(Settings(database_url=url))
        with unit_of_work(wiring.session_factory) as session:
            portal, key = portals.create_portal(
                session, slug="bench", name="Bench", default_currencies=["EUR"]
            )
            portal_id = portal.id
        # Its ads up to the portal's limit, counted at each batch, as in production.
        limit = {"DIRECTORY_PORTAL_MAX_ADS": str(max(args.ads, 1))}
        with gunicorn(url, workers=args.workers, env=limit) as server:
            workers = children(server.pid)
            api_before = sum(process_cpu_s(pid) for pid in workers)
            client_before, machine_before = time.process_time(), machine_busy_s()
            elapsed, latencies = push(server.base_url, key.key, batches, args.clients)
            api_cpu = sum(process_cpu_s(pid) for pid in workers) - api_before
            client_cpu = time.process_time() - client_before
            machine_cpu = machine_busy_s() - machine_before
        with wiring.engine.connect() as connection:
            stored = connection.scalar(text("SELECT count(*) FROM ads"))
        wiring.close()
        copy_elapsed = copy_rows(url, portal_id, batches)

    api_rate = args.ads / elapsed
    copy_rate = args.ads / copy_elapsed
    latencies.sort()
    print(f"ads pushed:            {args.ads:,} in {len(batches)} batches of {BATCH}")
    print(f"ads stored:            {stored:,}")
    print(f"API (batch upsert):    {api_rate:,.0f} ads/s  ({elapsed:.1f} s, {args.clients} "
          f"clients, {args.workers} gunicorn workers)")  # fmt: skip
    print(f"  batch latency:       p50 {statistics.median(latencies) * 1000:.0f} ms, "
          f"p95 {latencies[int(len(latencies) * 0.95) - 1] * 1000:.0f} ms")  # fmt: skip
    per_batch = 1000 / len(batches)
    print(
        f"CPU per batch:         API {api_cpu * per_batch:.0f} ms, bench client "
        f"{client_cpu * per_batch:.0f} ms, PostgreSQL and the rest "
        f"{(machine_cpu - api_cpu - client_cpu) * per_batch:.0f} ms "
        f"(machine busy {machine_cpu / elapsed / usable_cores():.0%})"
    )
    print(f"COPY floor:            {copy_rate:,.0f} ads/s  ({copy_elapsed:.1f} s)")
    print(f"API / COPY:            {api_rate / copy_rate:.2f}")


if __name__ == "__main__":
    main()
