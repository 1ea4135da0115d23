"""Failures of the database itself still answer with the error envelope, never a bare 500."""

from __future__ import annotations

import dataclasses

from sqlalchemy import text

from directory import create_app
from directory.api.db import transaction


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
