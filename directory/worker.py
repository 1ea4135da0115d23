"""The background worker: periodic housekeeping and, with the Meilisearch engine, the
search index kept in step with the change feed.

Each job runs on its own schedule. A failing job is logged and tried again after a
growing, jittered delay; it never stops the worker nor the other jobs (Meilisearch or
the database restarting is an ordinary event)."""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from directory import Wiring
from directory.db import unit_of_work
from directory.services.housekeeping import close_stale_sync_sessions

log = logging.getLogger("directory.worker")
HOUSEKEEPING_INTERVAL_S = 60
# New and changed ads reach search results within about this long.
INDEXING_INTERVAL_S = 1
# Searches already leave expired ads out: removing their documents only saves space.
EXPIRED_PURGE_INTERVAL_S = 600
# Pages of the feed per indexing round, so a long backlog still lets the other jobs run.
INDEXING_PAGES_PER_ROUND = 20
MAX_BACKOFF_S = 300


@dataclass
class Job:
    name: str
    interval_s: float
    run: Callable[[Wiring], None]
    failures: int = 0
    due_at: float = 0.0  # time.monotonic(): every job runs in the first round

    def run_if_due(self, wiring: Wiring, now: float) -> None:
        if now < self.due_at:
            return
        try:
            self.run(wiring)
        except Exception:
            self.failures += 1
            delay = min(
                self.interval_s * 2 ** (self.failures - 1), max(MAX_BACKOFF_S, self.interval_s)
            )
            # Jitter: workers that failed together do not all retry together.
            delay *= random.uniform(0.75, 1.25)
            log.exception(
                "%s failed (%d in a row); next try in %.0f s", self.name, self.failures, delay
            )
            self.due_at = time.monotonic() + delay
        else:
            self.failures = 0
            self.due_at = time.monotonic() + self.interval_s


def housekeeping(wiring: Wiring) -> None:
    with unit_of_work(wiring.session_factory) as session:
        report = close_stale_sync_sessions(session)
    if report.expired_sync_sessions or report.purged_sync_items:
        log.info("housekeeping: %s", report)


def search_indexing(wiring: Wiring) -> None:
    from directory.search import indexing

    applied = indexing.catch_up(wiring, max_pages=INDEXING_PAGES_PER_ROUND)
    if applied:
        log.info("search index: %d changes applied", applied)


def expired_purge(wiring: Wiring) -> None:
    from directory.search import indexing

    indexing.purge_expired(wiring)


def jobs_for(wiring: Wiring) -> list[Job]:
    jobs = [Job("housekeeping", HOUSEKEEPING_INTERVAL_S, housekeeping)]
    if wiring.settings.search_engine == "meilisearch":
        jobs.append(Job("search indexing", INDEXING_INTERVAL_S, search_indexing))
        jobs.append(Job("expired ads purge", EXPIRED_PURGE_INTERVAL_S, expired_purge))
    return jobs


def run(wiring: Wiring, *, once: bool = False) -> bool:
    """Run until stopped (or one round of every job with `once`); False when the last
    run of some job failed."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("worker started")
    jobs = jobs_for(wiring)
    while not stop.is_set():
        for job in jobs:
            if stop.is_set():
                break
            job.run_if_due(wiring, time.monotonic())
        if once:
            break
        stop.wait(max(0.0, min(job.due_at for job in jobs) - time.monotonic()))
    log.info("worker stopped")
    return all(job.failures == 0 for job in jobs)
