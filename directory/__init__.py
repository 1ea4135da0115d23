"""Commons Directory: the offers-and-wants directory for mutual-credit communities.

`create_app` is the one place where things are wired together; importing any module
of this package connects to nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from flask import Flask
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from directory.db import make_engine, make_session_factory
from directory.services.ads import Lifetimes
from directory.settings import Settings


@dataclass(frozen=True)
class Wiring:
    """What the request handlers need, built once per app."""

    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    lifetimes: Lifetimes
    sync_session_ttl: timedelta


def build_wiring(settings: Settings) -> Wiring:
    engine = make_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        statement_timeout_ms=settings.db_statement_timeout_ms,
    )
    return Wiring(
        settings=settings,
        engine=engine,
        session_factory=make_session_factory(engine),
        lifetimes=Lifetimes(
            default=timedelta(days=settings.ad_default_ttl_days),
            maximum=timedelta(days=settings.ad_max_ttl_days),
        ),
        sync_session_ttl=timedelta(hours=settings.sync_session_ttl_hours),
    )


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(message)s")
    # Alembic narrates its plugin set-up at INFO each time readiness reads the head.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def create_app(settings: Settings | None = None) -> Flask:
    from directory.api import create_api

    settings = settings or Settings.from_env()
    app = Flask("directory")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    # Responses keep the order of the schemas' fields; sorting would cost every request.
    app.json.sort_keys = False
    app.extensions["directory"] = build_wiring(settings)
    create_api(app)
    return app
