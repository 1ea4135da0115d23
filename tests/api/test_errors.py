"""Failures of the database itself still answer with the error envelope, never a bare 500."""

from __future__ import annotations

import dataclasses

import psycopg
from sqlalchemy import text

from directory import create_app
from directory.api.db import transaction
from directory.db import libpq_url


def test_a_query_over_the_statement_timeout_answers_503(migrated):
    app = create_app(dataclasses.replace(migrated, db_statement_timeout_ms=50))

    @app.get("/slow-for-test")
    def slow():  # pg_sleep stands in for any query that runs too long
        with transaction() as session:
            session.execute(text("SELECT pg_sleep(1)"))
        return {}

    response = app.test_client().get("/slow-for-test")
    app.extensions["directory"].close()
    assert response.status_code == 503
    assert response.json["error"] == "busy"


def test_an_unreachable_database_answers_503(migrated):
    app = create_app(
        dataclasses.replace(migrated, database_url="postgresql+psycopg://x@127.0.0.1:1/x")
    )
    response = app.test_client().get("/v1/categories")
    assert response.status_code == 503
    assert response.json["error"] == "unavailable"
    assert "database" in response.json["message"]


def test_a_search_over_the_statement_timeout_answers_503(migrated):
    # Search runs on the pool's psycopg connection itself: its errors must still come
    # out as the envelope, and the connection stay usable. The lock makes the first search
    # wait whatever the timeout; 250 ms leaves the second one room on a busy machine.
    app = create_app(dataclasses.replace(migrated, db_statement_timeout_ms=250))
    client = app.test_client()
    with psycopg.connect(libpq_url(migrated.database_url)) as blocker:
        blocker.execute("LOCK TABLE portals IN ACCESS EXCLUSIVE MODE")
        response = client.get("/v1/search?q=bike")
        blocker.rollback()
    assert response.status_code == 503
    assert response.json["error"] == "busy"
    assert client.get("/v1/search?q=bike").status_code == 200
    app.extensions["directory"].close()


def test_a_search_after_its_connection_was_lost_recovers(migrated):
    app = create_app(migrated)
    client = app.test_client()
    assert client.get("/v1/search?q=bike").status_code == 200
    with app.extensions["directory"].search_db.connect() as connection:
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()  # the pool's only
    with psycopg.connect(libpq_url(migrated.database_url), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))  # as a database restart would
    first = client.get("/v1/search?q=bike")
    assert first.status_code == 503
    assert first.json["error"] == "unavailable"
    # The lost connection left the pool: the next search gets a fresh one.
    assert client.get("/v1/search?q=bike").status_code == 200
    app.extensions["directory"].close()


def test_a_search_with_the_database_unreachable_answers_503(migrated):
    app = create_app(
        dataclasses.replace(migrated, database_url="postgresql+psycopg://x@127.0.0.1:1/x")
    )
    response = app.test_client().get("/v1/search?q=bike")
    assert response.status_code == 503
    assert response.json["error"] == "unavailable"
