"""What erasing a busy member costs: a popular advertiser with thousands of ads and
conversations, among as many of another member's, erased through the API in-process;
and how long an ad write of the same portal waits meanwhile (an erasure holds the
portal's write lock, so that nothing is published for the member while it runs).

    .venv/bin/python bench/erasure.py [--ads 2000] [--conversations 5000] [--messages 10]

The ads go in through the API's batches; the conversations and their messages (all
delivered) are written by SQL, shaped as the relay writes them, since writing them
through the relay would take minutes. About a minute. Prints figures; asserts nothing."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text

from bench.common import database
from directory import create_app
from directory.db import unit_of_work
from directory.services.portals import create_portal
from directory.settings import Settings

ERASED = "m-popular"
STAYING = "m-stays"

# Conversations about the advertiser's ads, one in two each member's (the ads alternate).
CONVERSATIONS = text(
    """
    WITH ads AS (
        SELECT id, title, member, row_number() OVER (ORDER BY id) - 1 AS n
        FROM ads WHERE portal_id = :advertiser
    )
    INSERT INTO conversations (id, ad_id, ad_title, initiator_portal_id, initiator_member,
                               initiator_alias, initiator_name, recipient_portal_id,
                               recipient_member, recipient_alias, recipient_name,
                               message_count, created_at, last_message_at)
    SELECT gen_random_uuid(), ads.id, ads.title, :writer, 'm-writer-' || g,
           'member-i' || g, 'Writer ' || g, :advertiser, ads.member, 'member-r' || g,
           'Advertiser', :messages, now(), now()
    FROM generate_series(0, :conversations - 1) AS g
    JOIN ads ON ads.n = g % :ads
    """
)
MESSAGES = text(
    """
    INSERT INTO messages (id, conversation_id, seq, sender_role, sender_portal_id, body,
                          created_at)
    SELECT gen_random_uuid(), c.id, s,
           CASE WHEN s % 2 = 1 THEN 'initiator' ELSE 'recipient' END,
           CASE WHEN s % 2 = 1 THEN c.initiator_portal_id ELSE c.recipient_portal_id END,
           'Message ' || s || ': is it still available on Saturday?', now()
    FROM conversations c, generate_series(1, :messages) AS s
    """
)
DELIVERIES = text(
    """
    INSERT INTO deliveries (message_id, portal_id, state, attempts, delivered_at,
                            delivered_via)
    SELECT m.id,
           CASE WHEN m.sender_portal_id = c.initiator_portal_id
                THEN c.recipient_portal_id ELSE c.initiator_portal_id END,
           'delivered', 1, now(), 'webhook'
    FROM messages m JOIN conversations c ON c.id = m.conversation_id
    """
)


def _ad(index: int) -> dict:
    return {
        "external_id": f"ad-{index}",
        "ad": {
            "kind": "offer",
            "title": f"Piano lessons, level {index}",
            "body": "Beginners welcome.",
            "category": "education",
            "member": ERASED if index % 2 == 0 else STAYING,
            "privacy": "approximate",
            "location": {"lat": 45.764, "lon": 4.8357},
            "currencies": ["HOUR"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ads", type=int, default=2000)
    parser.add_argument("--conversations", type=int, default=5000)
    parser.add_argument("--messages", type=int, default=10, help="per conversation")
    options = parser.parse_args()
    with database() as url:
        app = create_app(Settings(environment="test", database_url=url))
        wiring = app.extensions["directory"]
        with unit_of_work(wiring.session_factory) as session:
            advertiser, key = create_portal(session, slug="advertiser", name="Advertiser")
            writer, _ = create_portal(session, slug="writer", name="Writer")
        headers = {"Authorization": f"Bearer {key.key}"}
        client = app.test_client()
        for start in range(0, options.ads, 1000):
            items = [_ad(index) for index in range(start, min(start + 1000, options.ads))]
            answer = client.post("/v1/ads/batch", json={"items": items}, headers=headers)
            assert answer.status_code == 200, answer.json
        with unit_of_work(wiring.session_factory) as session:
            parameters = {
                "advertiser": advertiser.id,
                "writer": writer.id,
                "ads": options.ads,
                "conversations": options.conversations,
                "messages": options.messages,
            }
            for statement in (CONVERSATIONS, MESSAGES, DELIVERIES):
                session.execute(statement, parameters)
        with wiring.engine.connect() as connection:
            connection.execute(text("ANALYZE"))

        waited: list[float] = []
        erasing = threading.Event()

        def write_meanwhile() -> None:
            erasing.wait()
            time.sleep(0.05)  # the erasure holds the portal's write lock by now
            started = time.perf_counter()
            answer = app.test_client().put(
                "/v1/ads/other-1", json=_ad(1)["ad"] | {"member": STAYING}, headers=headers
            )
            assert answer.status_code == 201, answer.json
            waited.append(time.perf_counter() - started)

        writer_thread = threading.Thread(target=write_meanwhile)
        writer_thread.start()
        started = time.perf_counter()
        erasing.set()
        answer = client.post(
            "/v1/portals/me/member-erasures", json={"member": ERASED}, headers=headers
        )
        took = time.perf_counter() - started
        writer_thread.join()
        assert answer.status_code == 200, answer.json
        erased = answer.json
        with wiring.engine.connect() as connection:
            left = connection.scalar(text("SELECT count(*) FROM messages"))
        print(
            f"setup: {options.ads:,} ads, {options.conversations:,} conversations of "
            f"{options.messages} messages ({options.conversations * options.messages:,}), "
            f"half of each the erased member's"
        )
        print(
            f"erasure: {took:.2f} s: {erased['ads_deleted']:,} ads deleted, "
            f"{erased['conversations_ended']:,} conversations ended, "
            f"{erased['messages_deleted']:,} messages deleted ({left:,} others left)"
        )
        print(f"an ad write of the same portal sent meanwhile waited: {waited[0]:.2f} s")
        wiring.close()


if __name__ == "__main__":
    main()
