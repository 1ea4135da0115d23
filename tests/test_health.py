"""Liveness and readiness probes: /healthz checks nothing but the process, /readyz the
database and its schema, and neither ever raises."""

from __future__ import annotations

import itertools

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from directory import create_app, db
from directory.__main__ import alembic_config
from directory.settings import Settings
from tests.peers import Trickling


def _client_for(database_url: str):
    app = create_app(Settings(environment="test", database_url=database_url))
    return app, app.test_client()


def test_healthz_answers_ok(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_answers_ok_at_the_head_migration(client, migrated):
    head = ScriptDirectory.from_config(alembic_config(migrated.database_url)).get_current_head()

    response = client.get("/readyz")

    assert response.status_code == 200, response.json
    assert response.json["status"] == "ok"
    assert response.json["database"] == "ok"
    assert response.json["migration"] == response.json["expected_migration"] == head


def test_readyz_reports_pending_migrations_on_an_unmigrated_database(empty_database_url):
    app, client = _client_for(empty_database_url)
    try:
        response = client.get("/readyz")
    finally:
        app.extensions["directory"].close()

    assert response.status_code == 503
    assert response.json["status"] == "migrations pending"
    assert response.json["database"] == "ok"
    assert response.json["migration"] is None
    assert response.json["expected_migration"] is not None


def _readyz_at_revision(database_url: str, revision: str):
    """/readyz on a database that says it is at `revision` (and has nothing else)."""
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE alembic_version (version_num varchar(32))"))
        connection.execute(text("INSERT INTO alembic_version VALUES (:v)"), {"v": revision})
    engine.dispose()
    app, client = _client_for(database_url)
    try:
        return client.get("/readyz")
    finally:
        app.extensions["directory"].close()


def test_readyz_stays_ready_when_a_later_release_has_migrated_the_database(empty_database_url):
    """In a rollout the new release migrates first; the old one goes on serving."""
    response = _readyz_at_revision(empty_database_url, "9999_a_later_release")

    assert response.status_code == 200, response.json
    assert response.json["status"] == "ok"
    assert response.json["migration"] == "9999_a_later_release"
    assert response.json["expected_migration"] != "9999_a_later_release"


def test_readyz_reports_pending_migrations_on_a_database_an_upgrade_behind(
    empty_database_url, migrated
):
    scripts = ScriptDirectory.from_config(alembic_config(migrated.database_url))
    previous = scripts.get_revision(scripts.get_current_head()).down_revision
    response = _readyz_at_revision(empty_database_url, previous)

    assert response.status_code == 503
    assert response.json["status"] == "migrations pending"
    assert response.json["migration"] == previous


def test_readyz_answers_503_when_the_database_is_unreachable():
    app, client = _client_for("postgresql+psycopg://directory@127.0.0.1:1/directory")
    try:
        response = client.get("/readyz")
    finally:
        app.extensions["directory"].close()

    assert response.status_code == 503
    assert response.json["status"] == "database unreachable"


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probe_refuses_query_parameters(client, path):
    response = client.get(path, query_string={"verbose": "1"})

    assert response.status_code == 400
    assert response.json["errors"] == {"query": {"verbose": ["Unknown field."]}}


@pytest.fixture
def silent_database(monkeypatch):
    """A loopback server that takes connections and never says a word, as a database host
    behind a firewall dropping packets, or a server stuck starting, looks to a client;
    connections to it are given up on after a second instead of ten."""
    monkeypatch.setattr(db, "CONNECT_TIMEOUT_S", 1)
    with Trickling(b"", lambda: itertools.repeat(b""), pause_s=0.1) as silent:
        yield f"postgresql+psycopg://directory@127.0.0.1:{silent.port}/directory"


@pytest.mark.timeout(60)  # libpq waits for ever by default: the probe never answered
def test_readyz_answers_503_when_the_database_says_nothing(silent_database):
    app, client = _client_for(silent_database)
    try:
        response = client.get("/readyz")
    finally:
        app.extensions["directory"].close()

    assert response.status_code == 503
    assert response.json["status"] == "database unreachable"
