"""The Python client against the real directory served over HTTP on 127.0.0.1, and, for
what a healthy directory never does (503s, dropped connections, silence), against small
scripted HTTP servers on loopback."""

from __future__ import annotations

import dataclasses
import email.utils
import importlib.util
import re
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote
from uuid import UUID

import httpx
import orjson
import psycopg
import pytest
import yaml
from directory_client import __version__, models
from directory_client.client import DirectoryClient
from directory_client.errors import (
    AnswerNotUnderstood,
    BadRequest,
    ClientMisconfigured,
    Conflict,
    DirectoryError,
    DirectoryUnavailable,
    NotFound,
    PreconditionFailed,
    RateLimited,
    ServiceUnavailable,
    Unauthenticated,
)
from directory_client.ledger import UnsupportedLedgerProtocol, ledger_for
from directory_client.transport import RetryPolicy, Transport, retry_after_s
from directory_client.webhooks import InvalidWebhook, verify_webhook

from directory.db import libpq_url
from directory.models.relay import MAX_MESSAGE_CHARS
from directory.webhooks.signing import new_secret, signed_headers
from tests.factories import ad_payload
from tests.live import LiveDirectory, live_directory
from tests.peers import Reply, WebhookReceiver

REPO = Path(__file__).resolve().parents[2]
NO_WAIT = RetryPolicy(attempts=3, backoff_s=0, max_backoff_s=0)


def snake_case(operation_id: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation_id).lower()


# --- coverage of the API ----------------------------------------------------------------


# Operations that are not for portals and apps: Prometheus scrapes the metrics itself.
NOT_FOR_CLIENTS = {"metrics"}


def test_every_operation_of_the_spec_has_a_client_method():
    spec = yaml.safe_load((REPO / "openapi.yaml").read_text())
    operations = [
        operation["operationId"]
        for item in spec["paths"].values()
        for method, operation in item.items()
        if method in {"get", "put", "post", "patch", "delete"}
        and operation["operationId"] not in NOT_FOR_CLIENTS
    ]
    missing = [name for name in operations if not hasattr(DirectoryClient, snake_case(name))]
    assert operations and not missing, f"operations without a DirectoryClient method: {missing}"


def test_the_models_are_generated_from_the_current_spec():
    module_spec = importlib.util.spec_from_file_location(
        "generate_models", REPO / "clients/python/generate_models.py"
    )
    generator = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(generator)

    assert generator.MODELS_FILE.read_text() == generator.render_models(), (
        "clients/python/src/directory_client/models.py is stale: run `make openapi`"
    )


# --- typed results and iterators --------------------------------------------------------


def test_results_are_typed(live, make_portal):
    portal = make_portal()
    with DirectoryClient(live.url, key=portal.key) as directory:
        own = directory.put_ad("a-1", ad_payload(title="Sourdough bread"))
        public = directory.get_ad(str(own.id))
        profile = directory.get_own_portal()

    assert isinstance(own, models.Ad) and own.external_id == "a-1"
    assert isinstance(public, models.PublicAd) and isinstance(public.id, UUID)
    assert public.title == "Sourdough bread" and public.kind == "offer"
    assert isinstance(public.updated_at, datetime) and public.updated_at.tzinfo is not None
    assert isinstance(profile, models.Portal) and profile.slug == portal.slug


def test_iterators_follow_cursors_to_the_end(live, make_portal):
    portal = make_portal()
    with DirectoryClient(live.url, key=portal.key) as directory:
        items = [{"external_id": f"a-{n}", "ad": ad_payload(title=f"Ad {n}")} for n in range(7)]
        result = directory.batch_ads(items)
        assert [item.status for item in result.results] == ["created"] * 7

        hits = list(directory.iter_search(page_size=3, lat=50.85, lon=4.35, radius_km=5))
        own = list(directory.iter_own_ads(page_size=2))
        changes = list(directory.iter_feed(page_size=3))

    assert len(hits) == len({hit.id for hit in hits}) == 7
    assert [hit.distance_km for hit in hits] == sorted(hit.distance_km for hit in hits)
    assert sorted(ad.external_id for ad in own) == sorted(f"a-{n}" for n in range(7))
    assert len(changes) == 7 and all(entry.op == "upsert" for entry, _ in changes)


# Each answer with a page pointing back to one already read (a cache or proxy in front of
# the directory answering the first page whatever the cursor): the iterators looped for
# ever, yielding its hits again and again.
PAGE_POINTING_BACK = [
    (
        lambda directory: directory.iter_search(q="bike"),
        {"hits": [], "next_cursor": "c1"},
        "GET /v1/search",
    ),
    (lambda directory: directory.iter_own_ads(), {"items": [], "next_cursor": "c1"}, "/ads"),
    (
        lambda directory: directory.iter_conversations(),
        {"conversations": [], "next_cursor": "c1"},
        "/v1/conversations",
    ),
    (
        lambda directory: directory.iter_feed(),
        {"changes": [], "next_cursor": "c1", "more": True},
        "/v1/feed",
    ),
    (
        lambda directory: iter([directory.process_inbox(lambda event: None)]),
        {"events": [], "next_since": "c1"},
        "/v1/inbox",
    ),
]


@pytest.mark.parametrize(
    ("follow", "page", "named"),
    PAGE_POINTING_BACK,
    ids=["search", "own-ads", "conversations", "feed", "inbox"],
)
def test_an_iterator_given_back_a_cursor_it_followed_stops_rather_than_loop(follow, page, named):
    with (
        Scripted([(200, {}, orjson.dumps(page))] * 5) as server,
        DirectoryClient(server.url, retry=NO_WAIT) as directory,
        pytest.raises(AnswerNotUnderstood, match="given before") as error,
    ):
        list(follow(directory))
    assert named in str(error.value)
    assert len(server.requests) == 2


def test_a_feed_reader_storing_each_cursor_given_misses_no_change(live, make_portal):
    # A reader handles each change in order, stores the cursors it is given, and stops
    # (is killed) after any change: resumed from what it stored, it reads every change
    # it had not handled.
    portal = make_portal()
    with DirectoryClient(live.url, key=portal.key) as directory:
        items = [{"external_id": f"a-{n}", "ad": ad_payload(title=f"Ad {n}")} for n in range(7)]
        directory.batch_ads(items)
        every_change = [(entry.ad_id, cursor) for entry, cursor in directory.iter_feed(page_size=3)]
        for stop_after in range(1, len(every_change) + 1):
            handled, stored = [], None
            for entry, cursor in directory.iter_feed(page_size=3):
                handled.append(entry.ad_id)
                if cursor is not None:
                    stored = cursor
                if len(handled) == stop_after:
                    break
            resumed = [entry.ad_id for entry, _ in directory.iter_feed(since=stored, page_size=3)]
            ids = [ad_id for ad_id, _ in every_change]
            assert resumed == ids[len(ids) - len(resumed) :]  # the end of the feed
            assert len(resumed) >= len(ids) - stop_after, f"stopped after {stop_after}"

    # A cursor only where resuming from it is right: after the last change of a page.
    assert [cursor is not None for _, cursor in every_change] == [False, False, True] * 2 + [True]


def test_search_as_geojson(live, make_portal):
    portal = make_portal()
    with DirectoryClient(live.url, key=portal.key) as directory:
        directory.put_ad("a-1", ad_payload(location={"lat": 50.0, "lon": 4.0}))
        page = directory.search_ads_geojson(lat=50.0, lon=4.0, radius_km=1)

    assert page.type == "FeatureCollection"
    assert page.features[0].geometry.coordinates == [4.0, 50.0]


def test_a_portal_polls_and_acknowledges_its_inbox(live, make_portal):
    advertiser, contacting = make_portal(), make_portal()
    with (
        DirectoryClient(live.url, key=advertiser.key) as advertiser_portal,
        DirectoryClient(live.url, key=contacting.key) as contacting_portal,
    ):
        ad = advertiser_portal.put_ad("a-1", ad_payload())
        message = {"member": "m-7", "name": "Sam", "body": "Is it free on Saturday?"}
        sent = contacting_portal.contact_advertiser(
            str(ad.id), message | {"idempotency_key": "k-1"}
        )
        again = contacting_portal.contact_advertiser(
            str(ad.id), message | {"idempotency_key": "k-1"}
        )
        inbox = advertiser_portal.read_inbox()
        acknowledged = advertiser_portal.acknowledge_inbox([event.id for event in inbox.events])
        after = advertiser_portal.read_inbox()

    assert again.message.id == sent.message.id  # the retry was recognised
    assert [event.data["message"]["body"] for event in inbox.events] == [message["body"]]
    assert acknowledged.acknowledged == 1
    assert after.events == []


def test_a_portal_sends_its_members_replies_in_one_batch(live, make_portal):
    advertiser, contacting = make_portal(), make_portal()
    with (
        DirectoryClient(live.url, key=advertiser.key) as advertiser_portal,
        DirectoryClient(live.url, key=contacting.key) as contacting_portal,
    ):
        opened = []
        for number in range(2):
            ad = advertiser_portal.put_ad(f"a-{number}", ad_payload(member="m-ad"))
            opened.append(
                contacting_portal.contact_advertiser(
                    str(ad.id), {"member": f"m-{number}", "name": "Sam", "body": "Still free?"}
                ).conversation.id
            )
        items = [
            {"conversation_id": str(conversation_id), "member": "m-ad", "body": "Yes!"}
            | {"idempotency_key": f"r-{index}"}
            for index, conversation_id in enumerate(opened)
        ]
        sent = advertiser_portal.post_messages(items)
        again = advertiser_portal.post_messages(items)
        refused = advertiser_portal.post_messages(
            [{"conversation_id": str(opened[0]), "member": "m-someone", "body": "Hi"}]
        )
        inbox = contacting_portal.read_inbox()

    assert [result.status for result in sent.results] == ["created", "created"]
    assert [result.status for result in again.results] == ["sent_before", "sent_before"]
    assert [r.message.id for r in again.results] == [r.message.id for r in sent.results]
    assert sent.counts == {"created": 2}
    (rejected,) = refused.results
    assert (rejected.status, rejected.error, rejected.message) == ("rejected", "not_a_party", None)
    assert [event.data["message"]["body"] for event in inbox.events] == ["Yes!", "Yes!"]


def test_a_portal_opens_conversations_in_a_batch(live, make_portal):
    advertiser, contacting = make_portal(), make_portal()
    with (
        DirectoryClient(live.url, key=advertiser.key) as advertiser_portal,
        DirectoryClient(live.url, key=contacting.key) as contacting_portal,
    ):
        ad = advertiser_portal.put_ad("a-1", ad_payload(member="m-ad"))
        sent = contacting_portal.post_messages(
            [
                models.BatchMessage(ad_id=ad.id, member="m-1", name="Sam", body="Still free?"),
                {"ad_id": str(ad.id), "member": "m-2", "body": "No name"},
            ]
        )
        inbox = advertiser_portal.read_inbox()

    opened, refused = sent.results
    assert opened.status == "created"
    assert opened.conversation.your_roles == ["initiator"]
    assert (refused.status, refused.error, list(refused.errors)) == (
        "rejected",
        "validation_error",
        ["name"],
    )
    assert [event.data["message"]["body"] for event in inbox.events] == ["Still free?"]


def test_an_ad_paid_by_a_protocol_this_client_does_not_know_still_reads(live, make_portal):
    """A later release may publish ads paid by another ledger protocol: a page holding
    one still reads, and only paying that ad is refused."""
    portal = make_portal()
    with DirectoryClient(live.url, key=portal.key) as directory:
        ad = directory.put_ad("a-1", ad_payload())
    later = httpx.get(f"{live.url}/v1/ads/{ad.id}").json() | {
        "payment": {
            "protocol": "holochain-mutual-credit",
            "ledger_url": "https://ledger.example.org/",
            "node": "x",
            "payee": "bob",
            "currencies": ["HOUR"],
            "price": None,
        }
    }
    with Scripted([(200, {}, orjson.dumps(later))]) as newer, DirectoryClient(newer.url) as client:
        read = client.get_ad(str(ad.id))

    assert read.payment.protocol == "holochain-mutual-credit"
    with pytest.raises(UnsupportedLedgerProtocol):
        ledger_for(read)


def test_a_portal_tests_its_webhook(live, make_portal):
    portal = make_portal()
    with DirectoryClient(live.url, key=portal.key) as directory:
        secret = directory.get_webhook_secret().secret
    with (
        DirectoryClient(live.url, key=portal.key) as directory,
        WebhookReceiver([secret]) as receiver,
    ):
        directory.update_own_portal({"webhook_url": receiver.url})
        tested = directory.test_webhook()
        (received,) = receiver.deliveries

    assert (tested.delivered, tested.status, tested.error) == (True, 204, None)
    assert received.verified
    assert received.webhook_id == tested.webhook_id


def test_a_webhook_test_waits_for_the_directorys_answer_past_the_clients_timeout(live, make_portal):
    """The directory gives a slow endpoint up to 15 s: a client that gave up sooner would
    never learn what the test found, and would send it again."""
    portal = make_portal()
    with DirectoryClient(live.url, key=portal.key) as directory:
        secret = directory.get_webhook_secret().secret
    with (
        DirectoryClient(live.url, key=portal.key, timeout_s=0.5, retry=NO_WAIT) as directory,
        WebhookReceiver([secret]) as receiver,
    ):
        directory.update_own_portal({"webhook_url": receiver.url})
        receiver.reply_next(Reply(status=503, delay_s=1.5))
        tested = directory.test_webhook()

    assert (tested.delivered, tested.status) == (False, 503)
    assert len(receiver.deliveries) == 1


def test_a_portal_reads_the_relay_limits_and_what_its_member_has_left(live, make_portal):
    advertiser, contacting = make_portal(), make_portal()
    with (
        DirectoryClient(live.url) as anonymous,
        DirectoryClient(live.url, key=advertiser.key) as advertiser_portal,
        DirectoryClient(live.url, key=contacting.key) as contacting_portal,
    ):
        limits = anonymous.get_relay_limits()
        ad = advertiser_portal.put_ad("a-1", ad_payload())
        sent = contacting_portal.contact_advertiser(
            str(ad.id), {"member": "m-7", "name": "Sam", "body": "Still free?"}
        )
        about_the_ad = list(advertiser_portal.iter_conversations(ad_id=str(ad.id)))

    assert [conversation.id for conversation in about_the_ad] == [sent.conversation.id]
    assert about_the_ad[0].recipient.sending.messages_left == limits.messages_in_a_row
    assert limits.message_max_chars == MAX_MESSAGE_CHARS
    sending = sent.conversation.initiator.sending
    assert (sending.allowed, sending.refusal) == (True, None)
    assert sending.messages_left == limits.messages_in_a_row - 1
    assert sent.conversation.recipient.sending is None


def test_a_portal_erases_a_member_and_a_repeat_is_harmless(live, make_portal):
    advertiser, contacting = make_portal(), make_portal()
    with (
        DirectoryClient(live.url, key=advertiser.key) as advertiser_portal,
        DirectoryClient(live.url, key=contacting.key) as contacting_portal,
    ):
        ad = advertiser_portal.put_ad("a-1", ad_payload(member="m-leaving"))
        sent = contacting_portal.contact_advertiser(
            str(ad.id), {"member": "m-7", "name": "Sam", "body": "Still free?"}
        )
        erased = advertiser_portal.erase_member("m-leaving")
        again = advertiser_portal.erase_member("m-leaving")
        seen = contacting_portal.get_conversation(str(sent.conversation.id))

    assert (erased.ads_deleted, erased.conversations_ended, erased.messages_deleted) == (1, 1, 1)
    assert (again.ads_deleted, again.conversations_ended, again.messages_deleted) == (0, 0, 0)
    assert seen.recipient.erased is True
    assert seen.initiator.sending.refusal == "party_erased"
    assert seen.messages == []


def test_a_portal_blocks_another_lists_it_and_unblocks_it(live, make_portal):
    advertiser, contacting = make_portal(), make_portal()
    with (
        DirectoryClient(live.url, key=advertiser.key) as advertiser_portal,
        DirectoryClient(live.url, key=contacting.key) as contacting_portal,
    ):
        ad = advertiser_portal.put_ad("a-1", ad_payload())
        blocked = advertiser_portal.block_portal(contacting.slug)
        again = advertiser_portal.block_portal(contacting.slug)
        listed = advertiser_portal.list_blocked_portals()
        with pytest.raises(Conflict) as refused:
            contacting_portal.contact_advertiser(
                str(ad.id), {"member": "m-7", "name": "Sam", "body": "Still free?"}
            )
        advertiser_portal.unblock_portal(contacting.slug)
        advertiser_portal.unblock_portal(contacting.slug)  # not blocked: no error
        after = advertiser_portal.list_blocked_portals()
        with pytest.raises(NotFound):
            advertiser_portal.block_portal("no-such-portal")

    assert blocked.slug == contacting.slug
    assert again == blocked  # the first block, blocked_at included
    assert listed.blocked_portals == [blocked]
    assert refused.value.code == "community_blocked"
    assert after.blocked_portals == []


def test_process_inbox_acknowledges_what_was_handled_and_keeps_the_rest(live, make_portal):
    advertiser, contacting = make_portal(), make_portal()
    with (
        DirectoryClient(live.url, key=advertiser.key) as advertiser_portal,
        DirectoryClient(live.url, key=contacting.key) as contacting_portal,
    ):
        for number in range(5):
            ad = advertiser_portal.put_ad(f"a-{number}", ad_payload(member="m-ad"))
            contacting_portal.contact_advertiser(
                str(ad.id), {"member": f"m-{number}", "name": "Sam", "body": f"Hello {number}"}
            )
        bodies: list[str] = []

        def handle_until_the_fourth(event: models.InboxEvent) -> None:
            if len(bodies) == 3:
                raise RuntimeError("the portal's database is down")
            bodies.append(event.data["message"]["body"])

        with pytest.raises(RuntimeError):
            advertiser_portal.process_inbox(handle_until_the_fourth, page_size=2)
        left = [event.data["message"]["body"] for event in advertiser_portal.read_inbox().events]
        handled_later = advertiser_portal.process_inbox(lambda event: None)

    assert bodies == ["Hello 0", "Hello 1", "Hello 2"]
    assert left == ["Hello 3", "Hello 4"]
    assert handled_later == 2


# --- conditional writes -----------------------------------------------------------------


def test_a_conditional_delete_applies_only_to_the_ad_as_it_was_read(live, make_portal):
    portal = make_portal()
    with DirectoryClient(live.url, key=portal.key) as directory:
        read = directory.put_ad("a-1", ad_payload(title="Bread"))
        changed = directory.put_ad("a-1", ad_payload(title="Rye bread"))

        with pytest.raises(PreconditionFailed) as refused:
            directory.delete_ad("a-1", if_match=read.etag)
        kept = directory.get_own_ad("a-1")
        directory.delete_ad("a-1", if_match=changed.etag)
        with pytest.raises(NotFound):
            directory.get_own_ad("a-1")

    assert refused.value.code == "precondition_failed"
    assert kept.etag == changed.etag


def test_a_conditional_expiry_applies_only_to_the_ad_as_it_was_read(live, make_portal):
    portal = make_portal()
    with DirectoryClient(live.url, key=portal.key) as directory:
        read = directory.put_ad("a-1", ad_payload(title="Bread"))
        changed = directory.put_ad("a-1", ad_payload(title="Rye bread"))

        with pytest.raises(PreconditionFailed):
            directory.expire_ad("a-1", if_match=read.etag)
        kept = directory.get_own_ad("a-1")
        expired = directory.expire_ad("a-1", if_match=changed.etag)

    assert not kept.expired and kept.etag == changed.etag
    assert expired.expired and expired.etag != changed.etag


def test_a_put_with_if_none_match_star_creates_but_never_replaces(live, make_portal):
    portal = make_portal()
    with DirectoryClient(live.url, key=portal.key) as directory:
        created = directory.put_ad("a-1", ad_payload(title="Bread"), if_none_match="*")
        with pytest.raises(PreconditionFailed):
            directory.put_ad("a-1", ad_payload(title="Rye bread"), if_none_match="*")
        kept = directory.get_own_ad("a-1")

    assert kept.title == "Bread" and kept.etag == created.etag


def test_get_own_ad_with_if_none_match_is_none_while_the_copy_is_current(live, make_portal):
    portal = make_portal()
    with DirectoryClient(live.url, key=portal.key) as directory:
        held = directory.put_ad("a-1", ad_payload(title="Bread"))
        while_current = directory.get_own_ad("a-1", if_none_match=held.etag)
        directory.put_ad("a-1", ad_payload(title="Rye bread"))
        after_a_change = directory.get_own_ad("a-1", if_none_match=held.etag)

    assert while_current is None
    assert after_a_change.title == "Rye bread" and after_a_change.etag != held.etag


# --- errors ---------------------------------------------------------------------------


def test_validation_errors_keep_their_field_paths(live, make_portal):
    portal = make_portal()
    with DirectoryClient(live.url, key=portal.key) as directory:
        with pytest.raises(BadRequest) as body_error:
            directory.put_ad("a-1", ad_payload(location={"lat": 100, "lon": 4}))
        with pytest.raises(BadRequest) as query_error:
            directory.search_ads(radius_km=5)

    assert body_error.value.code == "validation_error"
    assert "location.lat" in body_error.value.field_errors
    assert "lat" in body_error.value.errors["json"]["location"]
    assert "radius_km" in query_error.value.field_errors
    assert query_error.value.request_id


def test_not_found_and_unauthenticated_are_typed(live):
    with DirectoryClient(live.url) as directory:
        with pytest.raises(NotFound):
            directory.get_ad("0192f3a4-5b6c-7d8e-9fa0-b1c2d3e4f506")
        with pytest.raises(Unauthenticated):
            directory.get_own_portal()


class CountingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.statuses.append(response.status_code)
        return response


@pytest.fixture
def limited_live(migrated) -> Iterator[LiveDirectory]:
    """The same database behind an app allowing anonymous clients 2 searches an hour."""
    with live_directory(
        dataclasses.replace(migrated, search_rate_limit_anonymous="2 per hour")
    ) as server:
        yield server


def test_a_long_rate_limit_is_raised_with_retry_after_not_waited_for(limited_live):
    counting = CountingTransport()
    with DirectoryClient(limited_live.url, http_transport=counting) as directory:
        directory.search_ads()
        directory.search_ads()
        with pytest.raises(RateLimited) as limited:
            directory.search_ads()

    assert 120 < limited.value.retry_after <= 3600
    assert counting.statuses == [200, 200, 429]


@pytest.fixture
def impatient_live(migrated) -> Iterator[LiveDirectory]:
    """The same database behind an app whose statements, searches' too, give up after
    250 ms: a locked table then makes it answer 503 (busy), as a real overload does."""
    impatient = dataclasses.replace(
        migrated, db_statement_timeout_ms=250, search_statement_timeout_ms=250
    )
    with live_directory(impatient) as server:
        yield server


class ReleasingTransport(CountingTransport):
    """Counts answers, and lets go of a lock once the first 503 has come back."""

    def __init__(self, lock_holder: psycopg.Connection) -> None:
        super().__init__()
        self.lock_holder = lock_holder

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if response.status_code == 503:
            self.lock_holder.rollback()
        return response


def locked_portals(migrated) -> psycopg.Connection:
    holder = psycopg.connect(libpq_url(migrated.database_url))
    holder.execute("LOCK TABLE portals IN ACCESS EXCLUSIVE MODE")
    return holder


def test_the_directorys_own_503_is_retried_for_a_search(impatient_live, migrated):
    with locked_portals(migrated) as holder:
        transport = ReleasingTransport(holder)
        client = DirectoryClient(impatient_live.url, retry=NO_WAIT, http_transport=transport)
        with client as directory:
            page = directory.search_ads(q="bike")
    assert page.hits == []
    assert transport.statuses == [503, 200]


def test_the_directorys_own_503_is_not_retried_for_a_batch(impatient_live, migrated, make_portal):
    portal = make_portal()
    with locked_portals(migrated) as holder:
        transport = ReleasingTransport(holder)
        with (
            DirectoryClient(
                impatient_live.url, key=portal.key, retry=NO_WAIT, http_transport=transport
            ) as directory,
            pytest.raises(ServiceUnavailable),
        ):
            directory.batch_ads([{"external_id": "a-1", "ad": ad_payload()}])
    assert transport.statuses == [503]


# --- retries, against scripted servers ---------------------------------------------------
# What a healthy directory does not do on demand (drop a connection after the request,
# stay silent) is played by small scripted HTTP servers on loopback.


@dataclasses.dataclass
class Scripted:
    """A loopback HTTP server answering from a script: each step an (status, headers,
    body) answer, "drop" (close the connection without answering) or "silence"."""

    steps: list
    requests: list = dataclasses.field(default_factory=list)

    def __enter__(self) -> Scripted:
        script = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                script.requests.append((self.command, self.path, dict(self.headers)))
                self.rfile.read(length)
                step = script.steps.pop(0) if script.steps else (200, {}, b"{}")
                if step == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if step == "silence":
                    time.sleep(2)
                    return
                status, headers, body = step
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"


def test_an_answer_of_an_earlier_release_without_its_later_nullable_fields_still_reads(
    live, make_portal
):
    """A directory of an earlier release, in a federation or during a rolling deploy,
    answers without the fields added since (a party's sending, a rejected item's error):
    those that may be null read as None. Those that may not are refused, named."""
    advertiser, contacting = make_portal(), make_portal()
    with (
        DirectoryClient(live.url, key=advertiser.key) as advertiser_portal,
        DirectoryClient(live.url, key=contacting.key) as contacting_portal,
    ):
        ad = advertiser_portal.put_ad("a-1", ad_payload())
        sent = contacting_portal.contact_advertiser(
            str(ad.id), {"member": "m-7", "name": "Sam", "body": "Still free?"}
        )
        current = httpx.get(
            f"{live.url}/v1/conversations/{sent.conversation.id}",
            headers={"Authorization": f"Bearer {contacting.key}"},
        ).json()
    for party in ("initiator", "recipient"):
        del current[party]["sending"]
    without_alias = orjson.loads(orjson.dumps(current))
    del without_alias["initiator"]["alias"]
    answers = [(200, {}, orjson.dumps(current)), (200, {}, orjson.dumps(without_alias))]
    with Scripted(answers) as older, DirectoryClient(older.url, key=contacting.key) as directory:
        read = directory.get_conversation(str(sent.conversation.id))
        with pytest.raises(AnswerNotUnderstood, match="alias"):
            directory.get_conversation(str(sent.conversation.id))

    assert read.initiator.sending is None
    assert read.initiator.member == "m-7"


UNAVAILABLE = (503, {"Retry-After": "0"}, b'{"code":503,"status":"Service Unavailable",'
               b'"error":"unavailable","message":"database down","errors":{}}')  # fmt: skip
HEALTHY = (200, {}, b'{"status":"ok"}')


def test_safe_requests_are_retried_after_503_honouring_retry_after():
    with (
        Scripted([UNAVAILABLE, UNAVAILABLE, HEALTHY]) as server,
        DirectoryClient(server.url, retry=NO_WAIT) as directory,
    ):
        assert directory.healthz().status == "ok"
    assert len(server.requests) == 3


BAD_GATEWAY = (502, {"Content-Type": "text/html"}, b"<html><body>502 Bad Gateway</body></html>")
GATEWAY_TIMEOUT = (504, {"Content-Type": "text/html"}, b"<html>504 Gateway Time-out</html>")


def test_a_proxys_502_and_504_are_retried_for_a_safe_request():
    """A load balancer in front of the directory during a deploy: a read is repeated."""
    with (
        Scripted([BAD_GATEWAY, GATEWAY_TIMEOUT, HEALTHY]) as server,
        DirectoryClient(server.url, retry=NO_WAIT) as directory,
    ):
        assert directory.healthz().status == "ok"
    assert len(server.requests) == 3


@pytest.mark.parametrize("answer", [BAD_GATEWAY, GATEWAY_TIMEOUT], ids=["502", "504"])
def test_a_post_or_a_conditional_write_is_not_repeated_after_a_proxys_502_or_504(answer):
    # The directory may have applied it before the proxy gave up.
    for write in (
        lambda directory: directory.open_sync_session(),
        lambda directory: directory.put_ad("a-1", ad_payload(), if_match='"0123456789ab-1"'),
    ):
        with (
            Scripted([answer, HEALTHY]) as server,
            DirectoryClient(server.url, retry=NO_WAIT) as directory,
            pytest.raises(DirectoryError) as raised,
        ):
            write(directory)
        assert len(server.requests) == 1
        assert str(answer[0]) in str(raised.value)


def test_a_short_retry_after_is_waited_for_then_the_request_repeated():
    waits: list[float] = []
    limited = (429, {"Retry-After": "2"}, b"{}")
    with Scripted([limited, HEALTHY]) as server:
        transport = Transport(server.url, retry=RetryPolicy(attempts=3), sleep=waits.append)
        try:
            response = transport.request("POST", "/v1/ads/batch", content=b"{}")
        finally:
            transport.close()
    # Even a POST: a 429 was refused before anything was done.
    assert response.status_code == 200 and len(server.requests) == 2
    assert waits == [2.0]


def test_a_post_is_not_repeated_after_a_503_or_a_lost_answer():
    with (
        Scripted([UNAVAILABLE, HEALTHY]) as server,
        DirectoryClient(server.url, retry=NO_WAIT) as directory,
        pytest.raises(ServiceUnavailable),
    ):
        directory.open_sync_session()
    assert len(server.requests) == 1

    lost = pytest.raises(DirectoryUnavailable, match="may or may not have been applied")
    with (
        Scripted(["drop", HEALTHY]) as server,
        DirectoryClient(server.url, retry=NO_WAIT) as directory,
        lost,
    ):
        directory.open_sync_session()
    assert len(server.requests) == 1


BATCH_SENT = (200, {}, b'{"results":[],"counts":{}}')


def test_a_batch_of_messages_is_repeated_after_a_lost_answer_only_if_each_has_a_key():
    keyed = {"conversation_id": str(uuid.uuid4()), "member": "m-1", "body": "Hi"}
    keyed_too = keyed | {"idempotency_key": "k-2"}
    with (
        Scripted(["drop", BATCH_SENT]) as server,
        DirectoryClient(server.url, retry=NO_WAIT) as directory,
    ):
        directory.post_messages([keyed | {"idempotency_key": "k-1"}, keyed_too])
    assert len(server.requests) == 2

    with (
        Scripted(["drop", BATCH_SENT]) as server,
        DirectoryClient(server.url, retry=NO_WAIT) as directory,
        pytest.raises(DirectoryUnavailable, match="may or may not have been applied"),
    ):
        directory.post_messages([keyed, keyed_too])  # the first would be sent twice
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "write",
    [
        lambda directory: directory.put_ad("a-1", ad_payload(), if_match='"0123456789ab-1"'),
        lambda directory: directory.put_ad("a-1", ad_payload(), if_none_match="*"),
        lambda directory: directory.delete_ad("a-1", if_match='"0123456789ab-1"'),
        lambda directory: directory.expire_ad("a-1", if_match='"0123456789ab-1"'),
    ],
    ids=["put-if-match", "put-if-none-match", "delete-if-match", "expire-if-match"],
)
def test_a_conditional_write_is_not_repeated_after_a_lost_answer(write):
    # Applied the first time, the repeat would fail its own condition: a 412 for a change
    # that was made.
    with (
        Scripted(["drop", HEALTHY]) as server,
        DirectoryClient(server.url, retry=NO_WAIT) as directory,
        pytest.raises(DirectoryUnavailable, match="may or may not have been applied"),
    ):
        write(directory)
    assert len(server.requests) == 1


def test_a_lost_answer_to_a_safe_request_is_retried():
    with (
        Scripted(["drop", HEALTHY]) as server,
        DirectoryClient(server.url, retry=NO_WAIT) as directory,
    ):
        assert directory.healthz().status == "ok"
    assert len(server.requests) == 2


def test_every_call_has_a_timeout():
    with Scripted(["silence", "silence"]) as server:
        started = time.monotonic()
        with (
            DirectoryClient(server.url, timeout_s=0.2, retry=NO_WAIT) as directory,
            pytest.raises(DirectoryUnavailable),
        ):
            directory.open_sync_session()
        assert time.monotonic() - started < 1.9  # it did not wait for the silence to end


def test_an_answer_garbled_in_transit_is_unavailable_after_the_retries():
    garbled = (200, {"Content-Encoding": "gzip"}, b'{"status":"ok"}')  # not gzip at all
    with (
        Scripted([garbled] * 3) as server,
        DirectoryClient(server.url, retry=NO_WAIT) as directory,
        pytest.raises(DirectoryUnavailable, match="DecodingError"),
    ):
        directory.healthz()
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    "body",
    [b"<html>Welcome to nginx</html>", b'{"status": 42}'],
    ids=["not-json", "another-shape"],
)
def test_an_answer_not_in_the_apis_shape_is_a_typed_error(body):
    with (
        Scripted([(200, {"Content-Type": "application/json"}, body)]) as server,
        DirectoryClient(server.url, retry=NO_WAIT) as directory,
        pytest.raises(AnswerNotUnderstood, match="GET /healthz: answer not understood"),
    ):
        directory.healthz()


def test_a_directory_that_is_not_there_is_unavailable_after_the_retries():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with (
        DirectoryClient(f"http://127.0.0.1:{port}", retry=NO_WAIT) as directory,
        pytest.raises(DirectoryUnavailable, match="nothing was changed"),
    ):
        directory.open_sync_session()  # never sent, so even a POST is tried again


def test_requests_carry_the_clients_user_agent():
    with Scripted([HEALTHY]) as server, DirectoryClient(server.url) as directory:
        directory.healthz()
    headers = {name.lower(): value for name, value in server.requests[0][2].items()}
    assert headers["user-agent"].startswith(f"commons-directory-client/{__version__} ")


PROXY_VARIABLES = ["http_proxy", "https_proxy", "all_proxy", "no_proxy"]


def test_a_proxy_set_in_the_environment_is_used(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    with Scripted([HEALTHY]) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        with DirectoryClient("http://directory.invalid", retry=NO_WAIT) as directory:
            assert directory.healthz().status == "ok"
    assert [path for _, path, _ in proxy.requests] == ["http://directory.invalid/healthz"]


def test_backoff_is_jittered_below_a_doubling_bound():
    policy = RetryPolicy(backoff_s=0.5, max_backoff_s=3.0)
    for retry, bound in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)):
        waits = [policy.backoff(retry) for _ in range(200)]
        assert all(0 <= wait <= bound for wait in waits)
        assert max(waits) - min(waits) > bound / 4  # spread out, not in step


def test_retry_after_is_read_as_seconds_or_as_a_date():
    def answer(value: str) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": value})

    in_a_minute = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=60), True)
    assert retry_after_s(answer("7")) == 7
    assert 55 <= retry_after_s(answer(in_a_minute)) <= 60
    assert retry_after_s(answer("soon")) is None


@pytest.mark.parametrize("attempts", [0, -1])
def test_a_retry_policy_needs_one_attempt_at_least(attempts):
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=attempts)


def test_a_write_sent_once_says_it_was_tried_once():
    retry = RetryPolicy(attempts=4, backoff_s=0, max_backoff_s=0)
    with (
        Scripted(["drop", HEALTHY]) as server,
        DirectoryClient(server.url, retry=retry) as directory,
        pytest.raises(DirectoryUnavailable, match="failed after 1 attempt: ") as lost,
    ):
        directory.batch_ads([{"op": "delete", "external_id": "a-1"}])
    assert len(server.requests) == 1
    assert "may or may not have been applied" in str(lost.value)


def test_unavailable_counts_the_attempts_made():
    with (
        Scripted(["drop", "drop", "drop"]) as server,
        DirectoryClient(server.url, retry=NO_WAIT) as directory,
        pytest.raises(DirectoryUnavailable, match="failed after 3 attempts: "),
    ):
        directory.healthz()
    assert len(server.requests) == 3


# --- what cannot be sent at all -----------------------------------------------------------

# A key of the directory's shape; the tests look for its middle in every message.
SECRET = "cdir_" + "S3cr3tPart" * 4 + "x7Yz9Q"


def shown(error: BaseException) -> str:
    """All that an error can show: its message, its repr and its traceback with causes."""
    return "\n".join([str(error), repr(error), "".join(traceback.format_exception(error))])


def test_a_portal_key_is_sent_as_a_bearer_token():
    with Scripted([HEALTHY]) as server, DirectoryClient(server.url, key=SECRET) as directory:
        directory.healthz()
    headers = {name.lower(): value for name, value in server.requests[0][2].items()}
    assert headers["authorization"] == f"Bearer {SECRET}"


@pytest.mark.parametrize(
    "key",
    [
        SECRET + "\n",
        SECRET + "\r\n",
        SECRET + "\r",
        SECRET + " ",
        " " + SECRET,
        SECRET[:20] + " " + SECRET[20:],
        SECRET + "\t",
        SECRET + "\x00",
        SECRET.replace("S3", "Š3"),
        SECRET + "\u00a0",  # a no-break space
        "",
        SECRET.encode(),
    ],
    ids=[
        "newline",
        "crlf",
        "carriage-return",
        "trailing-space",
        "leading-space",
        "inner-space",
        "tab",
        "nul",
        "non-ascii",
        "no-break-space",
        "empty",
        "bytes",
    ],
)
def test_a_key_that_cannot_be_a_header_is_refused_without_being_shown(key):
    with Scripted([HEALTHY] * 4) as server:
        with (
            pytest.raises(ClientMisconfigured, match="key must be a portal key") as refused,
            DirectoryClient(server.url, key=key, retry=NO_WAIT) as directory,
        ):
            directory.get_own_portal()
        assert server.requests == []
    assert isinstance(refused.value, ValueError)
    assert "S3cr3tPart" not in shown(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "127.0.0.1:8000",
        "localhost:8000",
        "directory.example.org",
        "ftp://directory.example.org",
        "file:///etc/hosts",
        "http://",
        "https:///v1",
        "http://[::1",
        "",
        None,
    ],
)
def test_a_directory_url_without_http_or_a_host_is_refused_at_once(url):
    with pytest.raises(ClientMisconfigured, match="must start with http:// or https://"):
        DirectoryClient(url, key=SECRET)


def test_a_refused_url_does_not_show_its_credentials():
    url = "ftp://reader:hunter2@directory.example.org"
    with pytest.raises(ClientMisconfigured) as refused:
        DirectoryClient(url)
    assert "hunter2" not in shown(refused.value)


@pytest.mark.parametrize(
    "etag",
    ['"x"\r\nX-Injected: 1', '"x"\n', '"é"'],
    ids=["header-injection", "newline", "non-ascii"],
)
def test_a_header_value_that_cannot_be_sent_fails_at_once_and_is_not_retried(etag):
    with (
        Scripted([HEALTHY] * 4) as server,
        DirectoryClient(server.url, key=SECRET, retry=NO_WAIT) as directory,
        pytest.raises(ClientMisconfigured, match="cannot be sent") as refused,
    ):
        directory.get_own_ad("a-1", if_none_match=etag)
    assert server.requests == []
    assert "S3cr3tPart" not in shown(refused.value)


def unreachable_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


UNAUTHENTICATED = (401, {}, b'{"code":401,"status":"Unauthorized","error":"unauthenticated",'
                   b'"message":"unknown key","errors":{}}')  # fmt: skip


@pytest.mark.parametrize(
    "steps",
    [
        ["drop"] * 3,
        [(200, {"Content-Encoding": "gzip"}, b"{}")] * 3,
        ["silence"] * 3,
        [UNAVAILABLE] * 3,
        [UNAUTHENTICATED],
        [(200, {}, b"<html>not the directory</html>")],
        None,  # nothing listens
    ],
    ids=["dropped", "garbled", "silent", "unavailable", "refused", "not-understood", "down"],
)
def test_no_error_shows_the_key(steps):
    with Scripted(list(steps or [])) as server:
        url = server.url if steps is not None else unreachable_url()
        with (
            DirectoryClient(url, key=SECRET, timeout_s=0.3, retry=NO_WAIT) as directory,
            pytest.raises(DirectoryError) as failed,
        ):
            directory.get_own_portal()
    assert "S3cr3tPart" not in shown(failed.value)


# --- path values -------------------------------------------------------------------------

PATH_CALLS = {
    "get_ad": ("ad_id", lambda directory, value: directory.get_ad(value)),
    "put_ad": ("external_id", lambda directory, value: directory.put_ad(value, ad_payload())),
    "delete_ad": ("external_id", lambda directory, value: directory.delete_ad(value)),
    "expire_ad": ("external_id", lambda directory, value: directory.expire_ad(value)),
    "get_own_ad": ("external_id", lambda directory, value: directory.get_own_ad(value)),
    "get_sync_session": ("session_id", lambda d, value: d.get_sync_session(value)),
    "abort_sync_session": ("session_id", lambda d, value: d.abort_sync_session(value)),
    "stage_sync_items": ("session_id", lambda d, value: d.stage_sync_items(value, [])),
    "commit_sync_session": ("session_id", lambda d, value: d.commit_sync_session(value)),
    "contact_advertiser": (
        "ad_id",
        lambda d, value: d.contact_advertiser(value, {"member": "m", "name": "S", "body": "Hi"}),
    ),
    "get_conversation": ("conversation_id", lambda d, value: d.get_conversation(value)),
    "post_message": ("conversation_id", lambda d, value: d.post_message(value, {"body": "Hi"})),
    "block_conversation": (
        "conversation_id",
        lambda d, value: d.block_conversation(value, {"member": "m"}),
    ),
    "get_currency": ("code", lambda directory, value: directory.get_currency(value)),
    "update_currency": ("code", lambda d, value: d.update_currency(value, {"name": "N"})),
    "delete_currency": ("code", lambda directory, value: directory.delete_currency(value)),
    "block_portal": ("slug", lambda directory, value: directory.block_portal(value)),
    "unblock_portal": ("slug", lambda directory, value: directory.unblock_portal(value)),
}


@pytest.mark.parametrize("value", ["", ".", ".."], ids=["empty", "dot", "dot-dot"])
@pytest.mark.parametrize("operation", sorted(PATH_CALLS))
def test_a_path_value_a_url_would_resolve_away_is_refused_before_sending(operation, value):
    name, call = PATH_CALLS[operation]
    with (
        Scripted([HEALTHY] * 4) as server,
        DirectoryClient(server.url, key=SECRET, retry=NO_WAIT) as directory,
        pytest.raises(ValueError, match=f'^{name} must not be empty, "." or ".."'),
    ):
        call(directory, value)
    assert server.requests == []


@pytest.mark.parametrize("value", ["...", ".a", "a.", "a/b", "../a", "a?b#c", "%2e%2e", "é 1"])
def test_any_other_path_value_is_sent_as_one_segment(value):
    with (
        Scripted([(204, {}, b"")]) as server,
        DirectoryClient(server.url, key=SECRET, retry=NO_WAIT) as directory,
    ):
        directory.delete_ad(value)
    assert [path for _, path, _ in server.requests] == [f"/v1/ads/{quote(value, safe='')}"]


# --- webhooks ---------------------------------------------------------------------------


def signed(
    secrets: list[str], *, timestamp: int | None = None, body: bytes | None = None
) -> tuple[bytes, dict]:
    if body is None:
        body = orjson.dumps(
            {
                "type": "message.created",
                "timestamp": datetime.now(UTC).isoformat(),
                "data": {"message": {"body": "Hello"}},
            }
        )
    headers = signed_headers(
        secrets=secrets,
        webhook_id="msg_" + "ab" * 16,
        timestamp=int(time.time()) if timestamp is None else timestamp,
        body=body,
    )
    return body, headers


def test_a_webhook_signed_by_the_directory_verifies():
    secret = new_secret()
    body, headers = signed([secret])

    event = verify_webhook(body, headers, secrets=secret)

    assert event.id == "msg_" + "ab" * 16
    assert event.type == "message.created" and event.data["message"]["body"] == "Hello"


def test_during_a_rotation_either_secret_verifies():
    new, old = new_secret(), new_secret()
    body, headers = signed([new, old])

    assert verify_webhook(body, headers, secrets=[old]).id.startswith("msg_")
    assert verify_webhook(body, {k.upper(): v for k, v in headers.items()}, secrets=[new])


def test_forged_tampered_and_stale_webhooks_are_refused():
    secret = new_secret()
    body, headers = signed([secret])
    with pytest.raises(InvalidWebhook):
        verify_webhook(body, headers, secrets=new_secret())
    with pytest.raises(InvalidWebhook):
        verify_webhook(body.replace(b"Hello", b"Hallo"), headers, secrets=secret)
    stale_body, stale_headers = signed([secret], timestamp=int(time.time()) - 3600)
    with pytest.raises(InvalidWebhook):
        verify_webhook(stale_body, stale_headers, secrets=secret)
    with pytest.raises(ValueError):
        verify_webhook(body, headers, secrets=[])


@pytest.mark.parametrize("signature", ["garbage", "v1", "v1,not base64!", "v1,a,b"])
def test_a_malformed_signature_header_is_an_invalid_webhook(signature):
    secret = new_secret()
    body, headers = signed([secret])

    with pytest.raises(InvalidWebhook):
        verify_webhook(body, headers | {"webhook-signature": signature}, secrets=secret)


def test_a_signed_body_that_is_not_json_is_an_invalid_webhook():
    secret = new_secret()
    body, headers = signed([secret], body=b"not json")

    with pytest.raises(InvalidWebhook, match="not a directory event"):
        verify_webhook(body, headers, secrets=secret)


def test_a_body_that_is_not_utf8_is_an_invalid_webhook():
    secret = new_secret()
    body, headers = signed([secret])

    with pytest.raises(InvalidWebhook, match="UTF-8"):
        verify_webhook(body + b"\xff", headers, secrets=secret)


def test_the_raw_body_verifies_as_bytes_or_as_a_memoryview():
    # What web frameworks hand over: bytes (Flask, Django, Starlette), a memoryview or a
    # bytearray (a body read into a buffer).
    secret = new_secret()
    body, headers = signed([secret])

    for raw in (body, bytearray(body), memoryview(body), body.decode()):
        assert verify_webhook(raw, headers, secrets=secret).id == "msg_" + "ab" * 16


@pytest.mark.parametrize("parsed", [orjson.loads, lambda body: None], ids=["json", "none"])
def test_a_body_that_is_not_the_raw_body_is_refused_naming_it(parsed):
    # Flask's request.get_json(): the signature covers the bytes as sent, which a parsed
    # body no longer has.
    secret = new_secret()
    body, headers = signed([secret])

    with pytest.raises(TypeError, match=r"body must be the request's raw body"):
        verify_webhook(parsed(body), headers, secrets=secret)


@pytest.mark.parametrize(
    "secrets",
    [["whsec_not base64!"], [new_secret(), "not base64 !!!"], [b"whsec_c2VjcmV0"], ["whsec_a"]],
    ids=["first", "second", "bytes", "bad-padding"],
)
def test_a_secret_that_is_no_webhook_secret_is_refused_naming_which_without_showing_it(secrets):
    # Checked whichever secret would have matched: a secret mis-pasted beside a good one
    # would otherwise fail only once the good one stopped signing.
    body, headers = signed([new_secret()])
    position = len(secrets) - 1  # the last one given is the bad one

    with pytest.raises(
        ValueError, match=rf"secrets\[{position}\] is not a webhook secret"
    ) as error:
        verify_webhook(body, headers, secrets=secrets)
    assert "not base64" not in str(error.value) and "c2VjcmV0" not in str(error.value)
