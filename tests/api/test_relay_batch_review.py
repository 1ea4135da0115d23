"""Batch openings under review: races with the ads' writers and with other batches, and
what a batch answers and leaves behind, as a single contact would."""

from __future__ import annotations

import threading
import time

from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from directory.db import unit_of_work
from tests.api.test_relay import publish
from tests.api.test_relay_batch import batch, opening
from tests.factories import ad_payload


def waiting_sessions(wiring) -> int:
    with wiring.engine.connect() as connection:
        return connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )


def send_aside_waiting(wiring, request, *, what: str, waiting: int):
    """As tests.waits.send_aside, but returns once `waiting` sessions wait on a lock: this
    request's wait comes on top of those already waiting."""
    answers = []
    thread = threading.Thread(target=lambda: answers.append(request()))
    thread.start()
    deadline = time.monotonic() + 10
    while waiting_sessions(wiring) < waiting:
        assert time.monotonic() < deadline, f"{what} never waited on a lock"
        time.sleep(0.01)

    def answer():
        thread.join(30)
        assert answers, f"{what} never answered"
        return answers[0]

    return answer


def holds_a_row_lock(wiring, ad_id: str) -> bool:
    """Whether a transaction holds a lock on the ad's row that a key share waits for (a
    delete under way)."""
    with unit_of_work(wiring.session_factory) as other:
        try:
            other.execute(
                text("SELECT 1 FROM ads WHERE id = :id FOR KEY SHARE NOWAIT"), {"id": ad_id}
            )
        except OperationalError:
            return True
    return False


# --- deadlocks ---------------------------------------------------------------------------


def test_a_batch_opening_two_ads_and_a_replace_deleting_them_wait_in_no_circle(
    app, wiring, advertiser, writer_portal
):
    """A replace deletes the ads it is not given in the order it finds them (here, as
    they were stored: ad-n, then ad-a), not by external id as the batch locks them: the
    batch must not hold ad-a while it waits for ad-n, which the replace holds while it
    waits for ad-a."""
    client = app.test_client()
    later = publish(client, advertiser, "ad-n")  # stored first: the replace meets it first
    first = publish(client, advertiser, "ad-a")
    publish(client, advertiser, "ad-keep")
    with wiring.engine.connect() as connection:
        # The portal holds every ad: its deletion reads the table through, as stored.
        connection.execute(text("ANALYZE ads"))
    with unit_of_work(wiring.session_factory) as holder:
        # Holds the replace at ad-a once it has deleted ad-n; a batch may still lock it.
        holder.execute(text("SELECT 1 FROM ads WHERE id = :id FOR KEY SHARE"), {"id": first})
        replace = send_aside_waiting(
            wiring,
            lambda: app.test_client().post(
                "/v1/ads/batch",
                json={"replace": True, "items": [{"external_id": "ad-keep", "ad": ad_payload()}]},
                headers=advertiser.headers,
            ),
            what="the replace",
            waiting=1,
        )
        assert holds_a_row_lock(wiring, later), "the replace was to delete ad-n first"
        batch_answer = send_aside_waiting(
            wiring,
            lambda: batch(
                app.test_client(),
                writer_portal,
                [opening(first, member="m-anna"), opening(later, member="m-ben")],
            ),
            what="the batch",
            waiting=2,
        )
    replaced, sent = replace(), batch_answer()
    assert replaced.status_code == 200, replaced.json
    assert replaced.json["deleted_by_replace"] == 2
    assert sent.status_code == 200, sent.json
    assert [r["error"] for r in sent.json["results"]] == ["ad_not_found", "ad_not_found"]
