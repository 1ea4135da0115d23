"""Bounds on requests that hold an API process while an outside server answers (a
portal's website for its token, its webhook for a test): each portal takes a turn at
most once in a while, and the directory serves a few at a time, so that neither slow
servers nor a portal's repeats can hold every process, and the directory never becomes a
way to send a stream of requests to someone else's server."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import InstrumentedAttribute, Session

from directory.db import first_free_advisory_lock
from directory.errors import TooManyRequests
from directory.models import Portal

# How soon a request refused for want of a slot may try again: most take well under a second.
BUSY_RETRY_AFTER_S = 2


def take_turn(
    session: Session,
    *,
    portal_id: int,
    taken_at: InstrumentedAttribute,
    interval: timedelta,
    code: str,
    refusal: str,
) -> None:
    """The portal's turn, when its last (the Portal column `taken_at`) is `interval` ago
    or more; else TooManyRequests `code` saying `refusal`, with the wait. One statement:
    of two requests at once, the second waits for the first's row lock, then finds the
    turn taken."""
    taken = session.execute(
        update(Portal)
        .where(
            Portal.id == portal_id,
            or_(taken_at.is_(None), taken_at <= func.now() - interval),
        )
        .values({taken_at: func.now()})
        .returning(Portal.id)
    ).scalar_one_or_none()
    if taken is not None:
        return
    wait_s = session.scalar(
        select(func.extract("epoch", taken_at + interval - func.now())).where(
            Portal.id == portal_id
        )
    )
    raise TooManyRequests(refusal, code=code, retry_after_s=max(1, math.ceil(wait_s or 0)))


@contextmanager
def held(engine: Engine, *, namespace: int, slots: int, code: str, refusal: str) -> Iterator[None]:
    """One of the directory's `slots` (advisory locks in `namespace`) for as long as the
    block runs; TooManyRequests `code` saying `refusal` when all are taken. Held by a
    connection outside any transaction, and let go by the server if the process dies."""
    with first_free_advisory_lock(engine, namespace, range(slots)) as slot:
        if slot is None:
            raise TooManyRequests(refusal, code=code, retry_after_s=BUSY_RETRY_AFTER_S)
        yield
