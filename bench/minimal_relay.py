"""The floor for any Python relay on this machine (used by bench/relay.py): the least a
relay can do per message, with the same parts as ours and nothing else.

  app        one Flask route under gunicorn: POST /messages/<portal> inserts the body
             into one table and sends a NOTIFY in one statement, commits, and answers
             the new id as JSON. No key, no validation, no conversation, no ORM.
  deliverer  `python -m bench.minimal_relay`: on each NOTIFY, claims up to 100 new rows
             (marking them delivered before sending: at most once, which no real relay
             may do), signs each with the reference Standard Webhooks package and POSTs
             it to its portal's receiver over a kept-alive connection.

    BENCH_DATABASE_URL=postgresql://… gunicorn bench.minimal_relay:app
    BENCH_DATABASE_URL=postgresql://… BENCH_WEBHOOKS='{"0": [url, secret], …}' \\
        python -m bench.minimal_relay

The webhook id of row n is "floor_<n>"; the table is made by create_table()."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import orjson
import psycopg
import urllib3
from flask import Flask, Response, request
from standardwebhooks.webhooks import Webhook

CHANNEL = "floor_messages"
CLAIM_BATCH = 100

app = Flask(__name__)
_connection: psycopg.Connection | None = None


def create_table(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE floor_messages (id bigserial PRIMARY KEY, portal int NOT NULL,"
            " body text NOT NULL, delivered boolean NOT NULL DEFAULT false)"
        )
        connection.execute("CREATE INDEX ON floor_messages (id) WHERE NOT delivered")


def connection() -> psycopg.Connection:
    """One connection per worker process, opened at its first request (after the fork)."""
    global _connection
    if _connection is None or _connection.closed:
        _connection = psycopg.connect(os.environ["BENCH_DATABASE_URL"])
    return _connection


@app.get("/healthz")
def healthz():
    return Response(b"ok")


@app.post("/messages/<int:portal>")
def accept(portal: int):
    conn = connection()
    (message_id,) = conn.execute(
        "WITH m AS (INSERT INTO floor_messages (portal, body) VALUES (%s, %s) RETURNING id)"
        " SELECT m.id FROM m, pg_notify(%s, '')",
        (portal, orjson.loads(request.get_data())["body"], CHANNEL),
    ).fetchone()
    conn.commit()
    return Response(orjson.dumps({"id": message_id}), status=201, mimetype="application/json")


def deliver_forever(database_url: str, webhooks: dict[int, tuple[str, Webhook]]) -> None:
    http = urllib3.PoolManager(maxsize=4, retries=False, timeout=urllib3.Timeout(3, 10))
    listener = psycopg.connect(database_url, autocommit=True)
    listener.execute(f"LISTEN {CHANNEL}")
    claimer = psycopg.connect(database_url, autocommit=True)
    while True:
        rows = claimer.execute(
            "UPDATE floor_messages SET delivered = true WHERE id IN (SELECT id FROM"
            " floor_messages WHERE NOT delivered ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)"
            " RETURNING id, portal, body",
            (CLAIM_BATCH,),
        ).fetchall()
        for message_id, portal, body in rows:
            url, signer = webhooks[portal]
            webhook_id = f"floor_{message_id}"
            payload = orjson.dumps({"id": message_id, "body": body})
            now = int(time.time())
            signature = signer.sign(
                msg_id=webhook_id,
                timestamp=datetime.fromtimestamp(now, tz=UTC),
                data=payload.decode(),
            )
            http.request(
                "POST",
                url,
                body=payload,
                headers={
                    "webhook-id": webhook_id,
                    "webhook-timestamp": str(now),
                    "webhook-signature": signature,
                    "content-type": "application/json",
                },
            )
        if len(rows) < CLAIM_BATCH:
            for _ in listener.notifies(timeout=1.0, stop_after=1):
                pass


if __name__ == "__main__":
    deliver_forever(
        os.environ["BENCH_DATABASE_URL"],
        {
            int(portal): (url, Webhook(secret))
            for portal, (url, secret) in orjson.loads(os.environ["BENCH_WEBHOOKS"]).items()
        },
    )
