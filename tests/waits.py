"""Ordering racing transactions in tests by what the database says, not by sleeps."""

from __future__ import annotations

import time

from sqlalchemy import text


def wait_for_a_lock_wait(
    wiring, *, what: str, wait_event: str | None = None, timeout_s: float = 10.0
) -> None:
    """Returns once a session of the test database waits on a lock (of the kind
    `wait_event` names, e.g. 'advisory', or any): the racing transaction has got as far
    as what the held one holds. `what` says, in the failure, who never got there."""
    condition = "wait_event_type = 'Lock'" + (
        "" if wait_event is None else " AND wait_event = :event"
    )
    deadline = time.monotonic() + timeout_s
    while True:
        # A new transaction each time: pg_stat_activity is read once per transaction.
        with wiring.engine.connect() as connection:
            waiting = connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    f" WHERE datname = current_database() AND {condition}"
                ),
                {"event": wait_event},
            )
        if waiting:
            return
        assert time.monotonic() < deadline, f"{what} never waited on a lock"
        time.sleep(0.01)
