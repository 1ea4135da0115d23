"""The background worker: for now it runs the periodic housekeeping; later issues add
the outbox it drains (search indexing, webhook delivery)."""

from __future__ import annotations

import logging
import signal
import threading

from directory import Wiring
from directory.db import unit_of_work
from directory.services.housekeeping import close_stale_sync_sessions

log = logging.getLogger("directory.worker")
HOUSEKEEPING_INTERVAL_S = 60


def run(wiring: Wiring, *, once: bool = False) -> bool:
    """Run until stopped (or one round with `once`); False when the last round failed."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("worker started")
    succeeded = True
    while not stop.is_set():
        try:
            with unit_of_work(wiring.session_factory) as session:
                report = close_stale_sync_sessions(session)
            succeeded = True
            if report.expired_sync_sessions or report.purged_sync_items:
                log.info("housekeeping: %s", report)
        except Exception:
            # A database restart must not kill the worker: it tries again next round.
            succeeded = False
            log.exception("housekeeping failed")
        if once:
            break
        stop.wait(HOUSEKEEPING_INTERVAL_S)
    log.info("worker stopped")
    return succeeded
