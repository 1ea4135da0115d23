"""Commons Directory: the offers-and-wants directory for mutual-credit communities.

`create_app` is the one place where things are wired together; importing any module
of this package connects to nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property

from flask import Flask
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from directory.db import make_engine, make_session_factory, unit_of_work
from directory.search import SearchEngine
from directory.services.ads import Lifetimes
from directory.services.categories import category_codes
from directory.services.relay import RelayLimits
from directory.settings import Settings


@dataclass(frozen=True)
class Wiring:
    """What the request handlers need, built once per app."""

    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    lifetimes: Lifetimes
    sync_session_ttl: timedelta
    relay_limits: RelayLimits
    search: SearchEngine
    search_db: Engine  # the database searches read: the primary or a replica

    @cached_property
    def category_codes(self) -> frozenset[str]:
        """The taxonomy's codes: they change only through a migration, and a deploy
        restarts every process."""
        with unit_of_work(self.session_factory) as session:
            return frozenset(category_codes(session))

    def close(self) -> None:
        self.engine.dispose()
        self.search_db.dispose()


def build_wiring(settings: Settings) -> Wiring:
    from directory.search.postgres import PostgresSearch, make_search_engine

    engine = make_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        statement_timeout_ms=settings.db_statement_timeout_ms,
    )
    search_db = make_search_engine(
        settings.search_database_url or settings.database_url,
        pool_size=settings.db_pool_size,
        statement_timeout_ms=settings.search_statement_timeout_ms,
    )
    if settings.search_engine == "meilisearch":
        from directory.search.meili import MeiliSearch

        search: SearchEngine = MeiliSearch.from_settings(settings, database=search_db)
    else:
        search = PostgresSearch(search_db)
    return Wiring(
        settings=settings,
        engine=engine,
        session_factory=make_session_factory(engine),
        search=search,
        search_db=search_db,
        lifetimes=Lifetimes(
            default=timedelta(days=settings.ad_default_ttl_days),
            maximum=timedelta(days=settings.ad_max_ttl_days),
        ),
        sync_session_ttl=timedelta(hours=settings.sync_session_ttl_hours),
        relay_limits=RelayLimits(
            conversations_per_member_per_hour=settings.relay_conversations_per_member_per_hour,
            conversations_per_portal_per_hour=settings.relay_conversations_per_portal_per_hour,
            conversations_with_one_member_per_hour=(
                settings.relay_conversations_with_one_member_per_hour
            ),
            unanswered_messages=settings.relay_unanswered_messages,
        ),
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
    if settings.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        # The client address comes from X-Forwarded-For, set by our own proxies only.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)
    app.extensions["directory"] = build_wiring(settings)
    create_api(app)
    return app
