"""The floor for any Python search API on this machine (used by bench/search.py): one
Flask route that runs the statements our search engine sends for a query (captured by
the bench with their parameters) on a per-worker psycopg connection set up as the
engine's, and answers orjson of the rows. No validation, no ORM, no rendering.

    BENCH_DATABASE_URL=postgresql://… BENCH_VARIANTS_FILE=variants.json \\
        gunicorn bench.minimal_app:app

GET /search/<query>/<n> runs variant n of that query (see bench/search.py)."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import psycopg
from flask import Flask, Response

CAPTURED = orjson.loads(Path(os.environ["BENCH_VARIANTS_FILE"]).read_bytes())
QUERIES = CAPTURED["queries"]
DATABASE_URL = os.environ["BENCH_DATABASE_URL"]

app = Flask(__name__)
_connection: psycopg.Connection | None = None


def connection() -> psycopg.Connection:
    """One connection per worker process, opened at its first request (after the fork)."""
    global _connection
    if _connection is None or _connection.closed:
        _connection = psycopg.connect(
            DATABASE_URL, options=CAPTURED["options"], autocommit=CAPTURED["autocommit"]
        )
    return _connection


def _default(value):
    return str(value)  # Decimal prices


@app.get("/healthz")
def healthz():
    return Response(b"ok")


@app.get("/search/<query>/<int:index>")
def search(query: str, index: int):
    conn = connection()
    results = []
    with conn.cursor() as cursor:
        for statement, parameters in QUERIES[query][index]:
            cursor.execute(statement, parameters)
            results.append(cursor.fetchall())
    if not conn.autocommit:
        conn.commit()
    body = {"rows": results[0], "facets": results[1] if len(results) > 1 else None}
    return Response(orjson.dumps(body, default=_default), mimetype="application/json")
