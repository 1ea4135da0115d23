"""Ordering racing transactions in tests by what the database says, not by sleeps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import text


def wait_for_a_lock_wait(
    wiring,
    *,
    what: str,
    wait_event: str | None = None,
    timeout_s: float = 10.0,
    waiting: int = 1,
) -> None:
    """Returns once a session of the test database waits on a lock (of the kind
    `wait_event` names, e.g. 'advisory', or any): the racing transaction has got as far
    as what the held one holds. `what` says, in the failure, who never got there.
    `waiting`: once that many sessions wait (a racer's wait on top of others')."""
    condition = "wait_event_type = 'Lock'" + (
        "" if wait_event is None else " AND wait_event = :event"
    )
    deadline = time.monotonic() + timeout_s
    while True:
        # A new transaction each time: pg_stat_activity is read once per transaction.
        with wiring.engine.connect() as connection:
            waiting_now = connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    f" WHERE datname = current_database() AND {condition}"
                ),
                {"event": wait_event},
            )
        if waiting_now >= waiting:
            return
        assert time.monotonic() < deadline, f"{what} never waited on a lock"
        time.sleep(0.01)


def send_aside(
    wiring, request: Callable[[], Any], *, what: str, waiting: int = 1
) -> Callable[[], Any]:
    """Sends `request` from a thread of its own, and returns once it waits on a lock (one
    the caller's open transaction holds; `waiting`: once that many sessions wait, its
    wait on top of others'). Call what it returns, once that transaction has ended, for
    the request's answer."""
    answers: list[Any] = []
    thread = threading.Thread(target=lambda: answers.append(request()))
    thread.start()
    wait_for_a_lock_wait(wiring, what=what, waiting=waiting)

    def answer() -> Any:
        thread.join(30)
        assert answers, f"{what} never answered"
        return answers[0]

    return answer
