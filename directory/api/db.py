"""The request's transaction: each view opens one unit of work around its service call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import current_app
from sqlalchemy.orm import Session

from directory.db import unit_of_work


def wiring():
    return current_app.extensions["directory"]


@contextmanager
def transaction() -> Iterator[Session]:
    with unit_of_work(wiring().session_factory) as session:
        yield session
