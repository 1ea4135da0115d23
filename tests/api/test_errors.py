"""Failures of the database itself still answer with the error envelope, never a bare 500."""

from __future__ import annotations

import dataclasses
import time

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


def test_the_search_timeout_bounds_searches_only(migrated):
    # Searches are anyone's: theirs is short, while a sync commit may need the long one.
    app = create_app(
        dataclasses.replace(
            migrated, db_statement_timeout_ms=60_000, search_statement_timeout_ms=50
        )
    )

    @app.get("/slow-for-test")
    def slow():
        with transaction() as session:
            session.execute(text("SELECT pg_sleep(0.2)"))
        return {}

    response = app.test_client().get("/slow-for-test")
    wiring = app.extensions["directory"]
    with wiring.search_db.connect() as connection:
        search_timeout = connection.exec_driver_sql("SHOW statement_timeout").scalar()
    wiring.close()
    assert response.status_code == 200, response.json
    assert search_timeout == "50ms"


def test_a_value_the_database_refuses_answers_400_not_500(migrated):
    app = create_app(migrated)

    @app.get("/out-of-range-for-test")
    def out_of_range():  # stands in for a value validation let through
        with transaction() as session:
            session.execute(text("SELECT CAST(:value AS smallint)"), {"value": 99999})
        return {}

    response = app.test_client().get("/out-of-range-for-test")
    app.extensions["directory"].close()
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.json["error"] == "invalid_value"
    assert "out of range" in response.json["message"]


def test_a_deadlock_answers_busy_not_unavailable(migrated, caplog):
    app = create_app(migrated)

    @app.get("/deadlock-for-test")
    def deadlock():  # the error PostgreSQL raises in the transaction it rolls back
        with transaction() as session:
            session.execute(text("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40P01'; END $$"))
        return {}

    response = app.test_client().get("/deadlock-for-test")
    app.extensions["directory"].close()
    assert response.status_code == 503
    assert response.json["error"] == "busy"
    assert "nothing of it was written" in response.json["message"]
    assert "database unavailable" not in caplog.text


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
    app = create_app(dataclasses.replace(migrated, search_statement_timeout_ms=250))
    client = app.test_client()
    with psycopg.connect(libpq_url(migrated.database_url)) as blocker:
        blocker.execute("LOCK TABLE portals IN ACCESS EXCLUSIVE MODE")
        response = client.get("/v1/search?q=bike")
        blocker.rollback()
    assert response.status_code == 503
    assert response.json["error"] == "busy"
    assert client.get("/v1/search?q=bike").status_code == 200
    app.extensions["directory"].close()


def _end_sessions_as_a_restart_would(database_url: str, engine) -> None:
    """Terminates the pool's connections from the server's side, and waits until they
    are gone (pg_terminate_backend only signals)."""
    with engine.connect() as connection:
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    with psycopg.connect(libpq_url(database_url), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(200):
            gone = admin.execute(
                "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s)", (pid,)
            )
            if gone.fetchone()[0]:
                return
            time.sleep(0.01)
    raise AssertionError(f"backend {pid} still there")


def test_a_search_after_its_connection_was_ended_by_the_server_succeeds(migrated):
    app = create_app(migrated)
    client = app.test_client()
    assert client.get("/v1/search?q=bike").status_code == 200
    wiring = app.extensions["directory"]
    _end_sessions_as_a_restart_would(migrated.database_url, wiring.search_db)
    # The pool sees the server's farewell on the socket and takes a new connection.
    assert client.get("/v1/search?q=bike").status_code == 200
    assert wiring.search_db.pool.checkedin() == 1  # the ended one left the pool
    wiring.close()


def test_a_write_after_its_connection_was_ended_by_the_server_succeeds(migrated, portal):
    # An app of its own, whose pool holds just the one connection ended here.
    app = create_app(migrated)
    client = app.test_client()
    assert client.get("/v1/portals/me", headers=portal.headers).status_code == 200
    wiring = app.extensions["directory"]
    _end_sessions_as_a_restart_would(migrated.database_url, wiring.engine)
    response = client.get("/v1/portals/me", headers=portal.headers)
    assert response.status_code == 200, response.json
    wiring.close()


def test_a_connection_that_only_got_a_message_while_idle_is_kept(migrated):
    # Not every byte an idle connection receives is a farewell: here a notification.
    # The pool pings it rather than throwing it away.
    app = create_app(migrated)
    client = app.test_client()
    wiring = app.extensions["directory"]
    with wiring.search_db.connect() as connection:
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        connection.exec_driver_sql("LISTEN idle_test")
    with psycopg.connect(libpq_url(migrated.database_url), autocommit=True) as other:
        other.execute("NOTIFY idle_test")
    time.sleep(0.2)  # for the notification to reach the idle connection's socket
    assert client.get("/v1/search?q=bike").status_code == 200
    with wiring.search_db.connect() as connection:
        assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar() == pid
    wiring.close()


def test_a_search_with_the_database_unreachable_answers_503(migrated):
    app = create_app(
        dataclasses.replace(migrated, database_url="postgresql+psycopg://x@127.0.0.1:1/x")
    )
    response = app.test_client().get("/v1/search?q=bike")
    assert response.status_code == 503
    assert response.json["error"] == "unavailable"


def test_a_search_with_its_replica_unreachable_answers_503(migrated):
    # The primary answers (the taxonomy is read from it); the replica that searches read
    # is down, so the search's own connection fails.
    app = create_app(
        dataclasses.replace(migrated, search_database_url="postgresql+psycopg://x@127.0.0.1:1/x")
    )
    response = app.test_client().get("/v1/search?q=bike")
    app.extensions["directory"].close()
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.json["error"] == "unavailable"
