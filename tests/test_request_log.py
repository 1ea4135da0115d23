"""The access log: one JSON line per request on `directory.access`, with its request id
and the calling portal, and never a key or any part of a body."""

from __future__ import annotations

import json
import logging
import re
import threading

import pytest
from sqlalchemy import text

from directory import create_app
from tests.factories import ad_payload
from tests.waits import wait_for_a_lock_wait

ACCESS_LOGGER = "directory.access"
GENERATED_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def access_log(caplog):
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)

    def lines() -> list[dict]:
        return [
            json.loads(record.getMessage())
            for record in caplog.records
            if record.name == ACCESS_LOGGER
        ]

    return lines


def test_each_request_logs_one_json_line(client, access_log):
    response = client.get("/healthz")

    (line,) = access_log()
    assert line["request_id"] == response.headers["X-Request-Id"]
    assert line["method"] == "GET"
    assert line["path"] == "/healthz"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], int | float)
    assert line["duration_ms"] >= 0
    assert line["portal"] is None


def test_authenticated_request_logs_the_portal_slug(client, portal, access_log):
    client.get("/v1/portals/me", headers=portal.headers)

    (line,) = access_log()
    assert line["status"] == 200
    assert line["portal"] == portal.slug


def test_refused_request_is_logged_with_its_status(client, access_log):
    client.get("/v1/portals/me")

    (line,) = access_log()
    assert line["path"] == "/v1/portals/me"
    assert line["status"] == 401


def test_response_carries_a_generated_request_id(client):
    first = client.get("/healthz")
    second = client.get("/healthz")

    assert GENERATED_REQUEST_ID.match(first.headers["X-Request-Id"])
    assert first.headers["X-Request-Id"] != second.headers["X-Request-Id"]


def test_valid_incoming_request_id_is_echoed_and_logged(client, access_log):
    response = client.get("/healthz", headers={"X-Request-Id": "edge-proxy.4f2a-91"})

    assert response.headers["X-Request-Id"] == "edge-proxy.4f2a-91"
    assert access_log()[0]["request_id"] == "edge-proxy.4f2a-91"


def test_search_refused_for_a_wrong_key_keeps_its_request_id(client, access_log):
    # Refused by the rate limits' hook, which runs before the view.
    response = client.get(
        "/v1/search",
        headers={"Authorization": "Bearer cdir_wrong", "X-Request-Id": "edge-proxy.4f2a-91"},
    )

    assert response.status_code == 401
    assert response.headers["X-Request-Id"] == "edge-proxy.4f2a-91"
    (line,) = access_log()
    assert line["request_id"] == "edge-proxy.4f2a-91"
    assert line["duration_ms"] >= 0


def test_answer_before_the_request_started_has_an_id_but_no_duration(migrated, access_log):
    app = create_app(migrated)
    # A hook that answers before ours could start the request.
    app.before_request_funcs[None].insert(0, lambda: ("", 204))
    try:
        response = app.test_client().get("/healthz", headers={"X-Request-Id": "edge-proxy.77"})
    finally:
        app.extensions["directory"].close()

    assert response.status_code == 204
    assert response.headers["X-Request-Id"] == "edge-proxy.77"
    (line,) = access_log()
    assert line["request_id"] == "edge-proxy.77"
    assert line["duration_ms"] is None


@pytest.mark.parametrize(
    "incoming",
    ["x", "a" * 65, "has spaces in it", "semi;colon-12345", "line\\nbreak-12345"],
    ids=["too-short", "too-long", "spaces", "semicolon", "backslash"],
)
def test_invalid_incoming_request_id_is_replaced(client, access_log, incoming):
    response = client.get("/healthz", headers={"X-Request-Id": incoming})

    assert GENERATED_REQUEST_ID.match(response.headers["X-Request-Id"])
    assert access_log()[0]["request_id"] == response.headers["X-Request-Id"]
    assert incoming not in json.dumps(access_log())


def test_log_never_contains_the_portal_key(client, portal, caplog, access_log):
    client.get("/v1/portals/me", headers=portal.headers)
    client.put("/v1/ads/k-1", json=ad_payload(), headers=portal.headers)

    assert len(access_log()) == 2
    assert portal.key not in caplog.text
    assert "Bearer" not in caplog.text


def test_log_never_contains_a_key_sent_in_the_query_string(client, portal, caplog, access_log):
    response = client.get("/v1/portals/me", query_string={"token": portal.key})

    assert response.status_code == 400
    assert access_log()[0]["status"] == 400
    assert portal.key not in caplog.text


def test_log_never_contains_any_part_of_the_request_body(client, portal, caplog, access_log):
    payload = ad_payload(
        title="Zanzibar quokka lessons",
        body="Marmalade-flavoured tutoring for the discerning quokka.",
        member="m-secret-4242",
    )

    response = client.put("/v1/ads/quokka-1", json=payload, headers=portal.headers)

    assert response.status_code == 201, response.json
    (line,) = access_log()
    assert line["status"] == 201
    for fragment in ("Zanzibar", "quokka lessons", "Marmalade", "m-secret-4242"):
        assert fragment not in caplog.text


def test_a_failing_statement_is_logged_without_the_values_it_carried(
    client, wiring, make_portal, caplog
):
    from tests.api.test_relay import contact, publish

    advertiser = make_portal(slug="sel-lyon", name="SEL de Lyon")
    writer = make_portal(slug="lets-bristol", name="Bristol LETS")
    ad_id = publish(client, advertiser)
    body, member = "Meet me at 12 Rue Secrète, door code 4471", "m-private-handle-93"
    caplog.set_level(logging.INFO)
    answered = []
    with wiring.engine.connect() as holder:
        # Messages can be read but not written: the relay's insert waits, and is then cut
        # off as by a database restart, carrying the message.
        holder.execute(text("LOCK TABLE messages IN SHARE MODE"))
        writing = threading.Thread(
            target=lambda: answered.append(contact(client, writer, ad_id, member=member, body=body))
        )
        writing.start()
        try:
            wait_for_a_lock_wait(wiring, what="the message's insert")
            holder.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        finally:
            holder.rollback()
            writing.join(timeout=60)

    ((response,),) = [answered]
    assert response.status_code == 503, response.json
    assert "database unavailable" in caplog.text  # logged, with its traceback...
    assert body not in caplog.text  # ...but not the message it was writing
    assert member not in caplog.text


def test_a_key_sent_where_no_key_goes_is_not_logged(client, portal, access_log):
    """A key pasted as a path segment, or sent as the request id: neither is written
    down nor, as a request id, sent back."""
    in_path = client.get(f"/v1/ads/{portal.key}")
    as_request_id = client.get("/healthz", headers={"X-Request-Id": portal.key[:60]})

    first, second = access_log()
    assert in_path.status_code == 404
    assert first["path"] == "/v1/ads/cdir_[redacted]"
    assert GENERATED_REQUEST_ID.match(as_request_id.headers["X-Request-Id"])
    assert second["request_id"] == as_request_id.headers["X-Request-Id"]
    assert portal.key[:20] not in json.dumps([first, second])
