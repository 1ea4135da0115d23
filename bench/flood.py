"""One client flooding search: what it gets, and what it costs everyone else.

A flooder searches as fast as several threads allow from one address; meanwhile a
well-behaved client (another address) searches one request at a time. Its latency is
measured alone first, then during the flood. Everything runs on 127.0.0.1; the API
sits behind one trusted proxy so that X-Forwarded-For can stand for two addresses.

    .venv/bin/python -m bench.flood [--seconds 10] [--flooders 4] [--workers 3]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

from bench.common import ROOT, database, gunicorn

QUERY = "/v1/search?lat=45.764&lon=4.8357&radius_km=25&category=food&limit=20"
ANONYMOUS_LIMIT = "10 per second"


def _get(connection: http.client.HTTPConnection, address: str) -> int:
    connection.request("GET", QUERY, headers={"X-Forwarded-For": address})
    response = connection.getresponse()
    response.read()
    return response.status


def _connect(base_url: str) -> http.client.HTTPConnection:
    parts = urlsplit(base_url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)


def measure_client(base_url: str, seconds: float) -> tuple[list[float], Counter]:
    """Latencies (ms) and statuses of one client searching one request at a time."""
    latencies, statuses = [], Counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        # gunicorn's sync workers close every connection: a new one per request, as
        # every client of this server pays.
        connection = _connect(base_url)
        started = time.perf_counter()
        status = _get(connection, "198.51.100.20")
        latencies.append((time.perf_counter() - started) * 1000)
        connection.close()
        statuses[status] += 1
        time.sleep(0.15)  # about 6 searches a second: within its limit of 10
    return latencies, statuses


def flood(base_url: str, stop: threading.Event, statuses: Counter) -> None:
    while not stop.is_set():
        connection = _connect(base_url)
        statuses[_get(connection, "203.0.113.66")] += 1
        connection.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(label: str, measured: tuple[list[float], Counter]) -> None:
    latencies, statuses = measured
    print(
        f"{label:<28} {len(latencies):>5} searches  p50 {statistics.median(latencies):6.2f} ms"
        f"  p95 {percentile(latencies, 0.95):6.2f} ms  p99 {percentile(latencies, 0.99):6.2f} ms"
        f"  ({', '.join(f'{count} x {status}' for status, count in sorted(statuses.items()))})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--flooders", type=int, default=4)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    with database() as url:
        subprocess.run(
            [sys.executable, "-m", "directory", "demo"],
            check=True,
            env={**os.environ, "DIRECTORY_DATABASE_URL": url},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        limits = {
            "DIRECTORY_SEARCH_RATE_LIMIT_ANONYMOUS": ANONYMOUS_LIMIT,
            "DIRECTORY_TRUSTED_PROXIES": "1",
        }
        with gunicorn(url, workers=args.workers, env=limits) as server:
            print(
                f"{args.workers} gunicorn workers, anonymous limit {ANONYMOUS_LIMIT!r}, "
                f"{args.flooders} flooding threads from one address"
            )
            report("alone", measure_client(server.base_url, args.seconds))
            stop = threading.Event()
            statuses: Counter = Counter()
            threads = [
                threading.Thread(target=flood, args=(server.base_url, stop, statuses))
                for _ in range(args.flooders)
            ]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            try:
                report("during the flood", measure_client(server.base_url, args.seconds))
            finally:
                stop.set()
                for thread in threads:
                    thread.join()
            elapsed = time.monotonic() - started
            total = sum(statuses.values())
            print(
                f"the flooder: {total / elapsed:.0f} requests/s, "
                + ", ".join(f"{count} x {status}" for status, count in sorted(statuses.items()))
            )


if __name__ == "__main__":
    main()
