"""Tests run against a real PostgreSQL + PostGIS: a throwaway cluster per test run,
built through the migrations (never create_all), emptied between tests.

Why TRUNCATE rather than a SAVEPOINT per test: the change feed's ordering rests on
transaction visibility (it serves only what every running transaction can no longer
precede), and the concurrency tests race real transactions; both need real commits."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
from marshmallow import ValidationError
from sqlalchemy import text

from directory import localdb, localredis
from directory.__main__ import alembic_config
from directory.api.loading import FastLoader
from directory.db import unit_of_work
from directory.settings import Settings
from tests import factories
from tests.apps import app_with

# Reference data written by migrations survives between tests.
KEEP_TABLES = {"categories", "alembic_version", "spatial_ref_sys"}


@pytest.fixture(scope="session")
def cluster():
    folder = Path(tempfile.mkdtemp(prefix="directory-test-pg-"))
    try:
        yield localdb.start(folder, fsync=False)
    finally:
        localdb.destroy(folder)


@pytest.fixture(scope="session")
def redis_url():
    folder = Path(tempfile.mkdtemp(prefix="directory-test-redis-"))
    try:
        yield localredis.start(folder).url
    finally:
        localredis.destroy(folder)


# Tests search far faster than any client may; tests/api/test_rate_limits.py sets its own.
UNLIMITED = "1000000 per second"


@pytest.fixture(scope="session")
def settings(cluster, redis_url) -> Settings:
    return Settings(
        environment="test",
        database_url=cluster.url,
        rate_limit_storage_url=redis_url,
        search_rate_limit_anonymous=UNLIMITED,
        search_rate_limit_portal=UNLIMITED,
        # Webhook receivers in tests listen on 127.0.0.1.
        webhook_allow_loopback=True,
    )


@pytest.fixture(scope="session")
def migrated(settings):
    from alembic import command

    command.upgrade(alembic_config(settings.database_url), "head")
    return settings


@pytest.fixture(scope="session")
def app(migrated):
    with app_with(migrated) as app:
        yield app


@pytest.fixture(scope="session")
def wiring(app):
    return app.extensions["directory"]


@pytest.fixture
def empty_database_url(make_empty_database):
    """A database of its own for one test, never migrated, dropped afterwards."""
    return make_empty_database()


@pytest.fixture
def make_empty_database(cluster):
    """Makes new, empty databases of the test cluster (their SQLAlchemy URLs), dropped
    after the test."""
    names = []

    def make() -> str:
        names.append(f"scratch_{uuid.uuid4().hex[:12]}")
        with psycopg.connect(cluster.admin_url("postgres"), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{names[-1]}"')
        return cluster.admin_url(names[-1]).replace("postgresql://", "postgresql+psycopg://")

    yield make
    with psycopg.connect(cluster.admin_url("postgres"), autocommit=True) as admin:
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def _empty_database(request):
    uses_database = "app" in request.fixturenames or "wiring" in request.fixturenames
    wiring = request.getfixturevalue("wiring") if uses_database else None
    yield
    if wiring is None:
        return
    with wiring.engine.begin() as connection:
        tables = connection.scalars(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ).all()
        names = ", ".join(f'"{name}"' for name in tables if name not in KEEP_TABLES)
        if names:
            connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(autouse=True)
def _fast_loading_checked(monkeypatch):
    """Everything the API loads through FastLoader (query strings, JSON bodies, batches)
    is loaded again by Schema.load, which must give the same data or the same errors:
    every request of every test checks the fast path against marshmallow."""
    fast_load = FastLoader.load

    def outcome(load, data):
        try:
            return "ok", load(data), None
        except ValidationError as error:
            return "error", error.messages, error

    def checked_load(loader, data):
        fast = outcome(lambda data: fast_load(loader, data), data)
        assert fast[:2] == outcome(loader.schema.load, data)[:2], type(loader.schema).__name__
        if fast[2] is not None:
            raise fast[2]
        return fast[1]

    monkeypatch.setattr(FastLoader, "load", checked_load)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def session(wiring):
    """A unit of work for arranging and checking data directly (committed at the end)."""
    with unit_of_work(wiring.session_factory) as session:
        yield session


@pytest.fixture
def make_portal(wiring):
    def make(**kwargs) -> factories.PortalWithKey:
        with unit_of_work(wiring.session_factory) as session:
            return factories.create_portal(session, **kwargs)

    return make


@pytest.fixture
def portal(make_portal):
    return make_portal()


@pytest.fixture
def other_portal(make_portal):
    return make_portal(slug="other-portal", name="Other Exchange")


# The relay's two portals: an advertiser's, and the one whose member writes to it.
@pytest.fixture
def advertiser(make_portal):
    return make_portal(slug="sel-lyon", name="SEL de Lyon")


@pytest.fixture
def writer_portal(make_portal):
    return make_portal(slug="lets-bristol", name="Bristol LETS")


@pytest.fixture
def conversations(client, advertiser, writer_portal) -> list[str]:
    """Three conversations with the advertiser (its member m-ad-owner), about three of its
    ads (ad-0, 1 and 2), opened by the writer portal's m-writer-0, 1 and 2."""
    opened = []
    for number in range(3):
        published = client.put(
            f"/v1/ads/ad-{number}",
            json=factories.ad_payload(member="m-ad-owner"),
            headers=advertiser.headers,
        )
        assert published.status_code == 201, published.json
        answer = client.post(
            f"/v1/ads/{published.json['id']}/contact",
            json={"member": f"m-writer-{number}", "name": "Anna", "body": "Is it still on?"},
            headers=writer_portal.headers,
        )
        assert answer.status_code == 201, answer.json
        opened.append(answer.json["conversation"]["id"])
    return opened


@pytest.fixture
def strict_client(migrated):
    """A client of an app whose relay lets a member open 2 conversations an hour, and a
    portal's members 3."""
    with app_with(
        migrated,
        relay_conversations_per_member_per_hour=2,
        relay_conversations_per_portal_per_hour=3,
    ) as app:
        yield app.test_client()


def pytest_report_header(config):
    return f"PostgreSQL binaries: {localdb.PG_BIN}; postgis: {shutil.which('shp2pgsql') or 'n/a'}"


os.environ.setdefault("DIRECTORY_ENVIRONMENT", "test")
