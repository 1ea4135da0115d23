"""The relay's hot route, bare (used by bench/relay_layers.py): POST
/v1/conversations/<id>/messages with the directory's own statements and rules on Flask
and psycopg alone, without flask-smorest, marshmallow, SQLAlchemy or the API's request
hooks. What the layers cost is the difference between this and the directory.

Its work per message is the directory's: the key looked up by digest, the conversation
locked with both communities, the sender's party, the other party's erasure, the block,
the communities' blocks of each other, the other community's status and the messages in
a row checked, APPEND_MESSAGES (message, count, delivery, NOTIFY) in the same transaction,
and the same answer. Left out: the fields' validation beyond their presence, idempotency
keys, the request id and log line, and the key's last-use stamp.

    BENCH_DATABASE_URL=postgresql://… gunicorn bench.bare_relay:app"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import orjson
import psycopg
from flask import Flask, Response, request
from sqlalchemy.dialects import postgresql

from directory.services import deliveries
from directory.services.portals import _KEY_LOOKUP, key_digest, looks_like_key
from directory.services.relay import _LOCK_CONVERSATIONS, APPEND_MESSAGES
from directory.settings import Settings

ROLES = ("initiator", "recipient")
UNANSWERED_MESSAGES = Settings.relay_unanswered_messages  # the default, as the directory's

app = Flask(__name__)
_connection: psycopg.Connection | None = None


def _sql(statement) -> str:
    """The statement as SQLAlchemy's psycopg dialect sends it (%(name)s parameters)."""
    return str(statement.compile(dialect=postgresql.psycopg.dialect()))


KEY_LOOKUP = _sql(_KEY_LOOKUP)
LOCK_CONVERSATION = _sql(_LOCK_CONVERSATIONS)
APPEND = _sql(APPEND_MESSAGES)


def connection() -> psycopg.Connection:
    """One connection per worker process, opened at its first request (after the fork)."""
    global _connection
    if _connection is None or _connection.closed:
        _connection = psycopg.connect(os.environ["BENCH_DATABASE_URL"])
    return _connection


def refused(status: int, error: str) -> Response:
    return Response(orjson.dumps({"error": error}), status=status, mimetype="application/json")


@app.get("/healthz")
def healthz():
    return Response(b"ok")


@app.post("/v1/conversations/<conversation_id>/messages")
def post_message(conversation_id: str):
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not looks_like_key(key):
        return refused(401, "unauthenticated")
    try:
        conversation_uuid = uuid.UUID(conversation_id)
        payload = orjson.loads(request.get_data())
        member, body, name = payload["member"], payload["body"], payload.get("name")
    except (ValueError, KeyError, TypeError):
        return refused(400, "invalid_input")
    with connection().transaction() as transaction:
        conn = transaction.connection
        key_row = conn.execute(KEY_LOOKUP, {"digest": key_digest(key)}).fetchone()
        if key_row is None or key_row[1] is not None or key_row[5] != "active":
            return refused(401, "unauthenticated")
        portal_id = key_row[3]
        cursor = conn.execute(
            LOCK_CONVERSATION, {"conversation_ids": [conversation_uuid], "portal_id": portal_id}
        )
        row = cursor.fetchone()
        if row is None:
            return refused(404, "conversation_not_found")
        c = dict(zip([column.name for column in cursor.description], row, strict=True))
        role = next(
            (r for r in ROLES if c[f"{r}_portal_id"] == portal_id and c[f"{r}_member"] == member),
            None,
        )
        if role is None:
            return refused(403, "not_a_party")
        other = ROLES[1 - ROLES.index(role)]
        if c[f"{other}_member"] is None:
            return refused(409, "party_erased")
        if c["blocked_at"] is not None:
            return refused(409, "conversation_blocked")
        if c["initiator_blocked"] or c["recipient_blocked"]:
            return refused(409, "community_blocked")
        if c[f"{other}_portal_status"] != "active":
            return refused(409, "recipient_portal_suspended")
        if c["last_sender"] == role and c["unanswered_messages"] >= UNANSWERED_MESSAGES:
            return refused(409, "awaiting_reply")
        now = datetime.now(UTC)
        message_id = uuid.uuid4()
        seq = c["message_count"] + 1
        in_a_row = (c["unanswered_messages"] if c["last_sender"] == role else 0) + 1
        names = {r: name if r == role and name else c[f"{r}_name"] for r in ROLES}
        conn.execute(
            APPEND,
            {
                "message_ids": [message_id],
                "conversation_ids": [conversation_uuid],
                "seqs": [seq],
                "roles": [role],
                "idempotency_keys": [None],
                "bodies": [body],
                "sent_at": [now],
                "recipient_portal_ids": [c[f"{other}_portal_id"]],
                "sender_portal_id": portal_id,
                "final_ids": [conversation_uuid],
                "final_counts": [seq],
                "final_times": [now],
                "final_unanswered": [in_a_row],
                "final_senders": [role],
                "final_initiator_names": [names["initiator"]],
                "final_recipient_names": [names["recipient"]],
                "parked": deliveries.PARKED,
                "channel": deliveries.NOTIFY_CHANNEL,
            },
        )

    def sending(r: str) -> dict:
        # Every other refusal was checked above, and holds both ways.
        left = UNANSWERED_MESSAGES - in_a_row if r == role else UNANSWERED_MESSAGES
        refusal = None if left > 0 else "awaiting_reply"
        return {"allowed": refusal is None, "refusal": refusal, "messages_left": left}

    def party(r: str) -> dict:
        own = c[f"{r}_portal_id"] == portal_id
        return {
            "role": r,
            "alias": c[f"{r}_alias"],
            "name": name if r == role and name else c[f"{r}_name"],
            "portal": {"slug": c[f"{r}_slug"], "name": c[f"{r}_portal_name"]},
            "member": c[f"{r}_member"] if own else None,
            "erased": False,  # neither party was: the message went through
            "sending": sending(r) if own else None,
        }

    answer = {
        "conversation": {
            "id": str(c["id"]),
            "ad": {"id": str(c["ad_id"]), "title": c["ad_title"]},
            "your_roles": [r for r in ROLES if c[f"{r}_portal_id"] == portal_id],
            "initiator": party("initiator"),
            "recipient": party("recipient"),
            "blocked_at": None,
            "blocked_by": None,
            "message_count": seq,
            "created_at": c["created_at"].isoformat(),
            "last_message_at": now.isoformat(),
        },
        "message": {
            "id": str(message_id),
            "seq": seq,
            "sender": role,
            "body": body,
            "sent_at": now.isoformat(),
            "delivery": {
                "state": "pending",
                "attempts": 0,
                "delivered_at": None,
                "delivered_via": None,
                "last_error": None,
            },
        },
    }
    return Response(orjson.dumps(answer), status=201, mimetype="application/json")
