"""How fast one `directory worker` drains a backlog of relay messages, and what each
delivery costs it and PostgreSQL.

    .venv/bin/python bench/delivery_drain.py [--messages 9000]

The relay of bench/relay.py (its portals, receivers and conversations) takes --messages
messages, about 10 to a request, with its worker stopped; a fresh worker then delivers
them all, every signature checked by the receivers here. Printed: deliveries per second
and CPU per delivery (the worker's, PostgreSQL's, the receivers'), counted from the
first delivery on, past the worker's start-up. The worker's DELIVERY_THREADS and
deliveries.PER_PORTAL_IN_FLIGHT set how many webhooks are in flight, and so how many
deliveries each of its claims and records carries. About a minute. Prints figures;
asserts nothing."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import children, database, postmaster_pid, process_cpu_s
from bench.relay import (
    PORTALS,
    Tally,
    arrivals,
    directory_relay,
    start_worker,
)
from directory.services.deliveries import PER_PORTAL_IN_FLIGHT
from directory.worker import DELIVERY_THREADS

CLIENTS = 8
BATCH = 10
DRAIN_TIMEOUT_S = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--messages", type=int, default=9000, help="the backlog, in messages (default 9000)"
    )
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="directory-bench-drain-") as folder,
        database() as url,
        directory_relay(
            url, clients=CLIENTS, worker_log=Path(folder) / "setup-worker.log", per_client=40
        ) as relay,
    ):
        relay.worker.terminate()
        relay.worker.wait(timeout=60)
        writers = relay.writers(CLIENTS, batch=BATCH)
        backlog = Tally()
        while len(backlog.accepted) < args.messages:
            writers[len(backlog.accepted) % CLIENTS].send(backlog)
        if backlog.errors:
            raise SystemExit(f"sending the backlog failed: {dict(backlog.errors)}")
        for writer in writers:
            writer.api.close()
        count = len(backlog.accepted)

        worker = start_worker(url, Path(folder) / "worker.log")
        postmaster = postmaster_pid(url)

        def reading(delivered: int) -> tuple[float, int, float, float, float]:
            """(now, delivered, CPU seconds of the worker, PostgreSQL, the receivers here)."""
            return (
                time.monotonic(),
                delivered,
                process_cpu_s(worker.pid),
                sum(process_cpu_s(pid) for pid in [postmaster, *children(postmaster)]),
                process_cpu_s(os.getpid()),
            )

        try:
            started = None
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while True:
                delivered = len(arrivals(relay.receivers).keys() & backlog.accepted.keys())
                if delivered and started is None:
                    # From the first delivery on: the worker's start-up is not counted.
                    started = reading(delivered)
                if delivered >= count or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            ended = reading(delivered)
        finally:
            worker.terminate()
            worker.wait(timeout=60)

    if started is None:
        raise SystemExit("nothing was delivered")
    seconds, deliveries, worker_s, postgres_s, receivers_s = (
        end - start for end, start in zip(ended, started, strict=True)
    )
    print(f"setup:       {PORTALS} portals with webhooks (receivers here); 1 worker, "
          f"{DELIVERY_THREADS} threads, at most {PER_PORTAL_IN_FLIGHT} webhooks in flight "
          f"to a portal")  # fmt: skip
    print(f"backlog:     {count:,} messages, about {BATCH} a request")
    print(f"drained:     {deliveries:,} in {seconds:.2f} s after the first: "
          f"{deliveries / seconds:,.0f} deliveries/s"
          + ("" if ended[1] >= count else f" (TIMED OUT: {count - ended[1]:,} not delivered)"))  # fmt: skip
    print(f"CPU per delivery: worker {worker_s / deliveries * 1000:.2f} ms, PostgreSQL "
          f"{postgres_s / deliveries * 1000:.2f} ms, receivers (signatures checked) "
          f"{receivers_s / deliveries * 1000:.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
