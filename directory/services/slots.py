"""Bounds on requests that hold an API process while an outside server answers (a
portal's website for its token, its webhook for a test): each portal takes a turn at
most once in a while, and the directory serves a few at a time, so that neither slow
servers nor a portal's repeats can hold every process, and the directory never becomes a
way to send a stream of requests to someone else's server."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import InstrumentedAttribute, Session

from directory.db import first_free_advisory_lock
from directory.errors import TooManyRequests
from directory.models import Portal


def take_turn(
    session: Session,
    *,
    portal_id: int,
    taken_at: InstrumentedAttribute,
    interval: timedelta,
    refusal: Callable[[int], TooManyRequests],
) -> None:
    """The portal's turn, when its last (the Portal column `taken_at`) is `interval` ago
    or more; else `refusal(seconds to wait)` is raised. One statement: of two requests at
    once, the second waits for the first's row lock, then finds the turn taken."""
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
    raise refusal(max(1, math.ceil(wait_s or 0)))


@contextmanager
def held(engine: Engine, *, namespace: int, slots: int, busy: TooManyRequests) -> Iterator[None]:
    """One of the directory's `slots` (advisory locks in `namespace`) for as long as the
    block runs; `busy` is raised when all are taken. Held by a connection outside any
    transaction, and let go by the server if the process dies."""
    with first_free_advisory_lock(engine, namespace, range(slots)) as slot:
        if slot is None:
            raise busy
        yield
