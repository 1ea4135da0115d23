"""Fault tests of relay delivery: the receiver down for a while, a worker killed (SIGKILL)
while delivering, the database restarted while messages are being sent, and two workers
at once. After recovery every accepted message has reached the portal's deduplicating
receiver exactly once (repeats carry the same webhook-id, so the receiver drops them), none
is lost, and the database says delivered.

The workers are real `directory worker` processes, as in production, with retries and
leases in fractions of a second so that recovery takes seconds. Each wait has a deadline."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
import requests

from directory import build_wiring, localdb
from directory.__main__ import alembic_config
from directory.db import libpq_url, unit_of_work
from directory.localdb import free_port
from directory.services.deliveries import PER_PORTAL_IN_FLIGHT, webhook_id
from directory.settings import Settings
from tests import factories
from tests.apps import app_with
from tests.factories import ad_payload
from tests.peers import ReceivedWebhook, Reply, WebhookReceiver

ROOT = Path(__file__).resolve().parents[1]
FIRST_RETRY_S = 0.2
MAX_RETRY_S = 1.0
# A killed worker's deliveries come due again this long after it claimed them.
LEASE_S = 2.0
# Deadlines: generous, since a wait that succeeds returns at once.
STARTUP_S = 30.0
RECOVERY_S = 45.0
POLL_S = 0.05
ADVERTISER = "m-owner"
WRITER = "m-writer"
# These tests send many messages one way, to one receiver: the limit on messages in a
# row before an answer (tests/api/test_relay.py) is not what they are about.
IN_A_ROW = 10**6

T = TypeVar("T")


@pytest.fixture(scope="module")
def one_way_app(migrated):
    with app_with(migrated, relay_unanswered_messages=IN_A_ROW) as app:
        yield app


@pytest.fixture
def client(one_way_app):
    return one_way_app.test_client()


# --- processes --------------------------------------------------------------------------


class WorkerProcesses:
    """The `directory worker` processes of one test. Whatever still runs at the end is
    stopped, and the logs are printed (pytest shows them when the test failed)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start(self, database_url: str) -> subprocess.Popen:
        self.logs.append(self.folder / f"worker-{len(self.processes) + 1}.log")
        with self.logs[-1].open("w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "directory", "worker"],
                env={
                    **os.environ,
                    "DIRECTORY_ENVIRONMENT": "test",
                    "DIRECTORY_DATABASE_URL": database_url,
                    "DIRECTORY_WEBHOOK_ALLOW_LOOPBACK": "1",
                    "DIRECTORY_DELIVERY_FIRST_RETRY_S": str(FIRST_RETRY_S),
                    "DIRECTORY_DELIVERY_MAX_RETRY_S": str(MAX_RETRY_S),
                    "DIRECTORY_DELIVERY_LEASE_S": str(LEASE_S),
                    "DIRECTORY_LOG_LEVEL": "INFO",
                },
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self.logs:
            print(f"--- {log.name} ---\n{log.read_text()[-4000:]}")


@pytest.fixture
def workers(tmp_path) -> Iterator[WorkerProcesses]:
    processes = WorkerProcesses(tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()


def kill_hard(process: subprocess.Popen) -> float:
    """SIGKILL: no chance to finish anything. Returns when the process is gone
    (time.monotonic())."""
    process.kill()
    process.wait(timeout=10)
    return time.monotonic()


# --- waiting and checking -----------------------------------------------------------------


def wait_until(condition: Callable[[], T], *, what: str, timeout_s: float = RECOVERY_S) -> T:
    """The condition's first true value; fails the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout_s} s for {what}")
        time.sleep(POLL_S)


def delivery_rows(database_url: str) -> dict[str, tuple[str, int]]:
    """Every delivery in the database: webhook id -> (state, attempts)."""
    url = libpq_url(database_url)
    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT message_id, state, attempts FROM deliveries").fetchall()
    return {webhook_id(message_id): (state, attempts) for message_id, state, attempts in rows}


def accepted_by_receiver(receiver: WebhookReceiver) -> list[str]:
    """The ids the receiver took in as new (a repeat of a known id is answered 200 but
    not taken in again), once per time it took one in."""
    return [delivery.webhook_id for delivery in receiver.deliveries if taken_in(delivery)]


def taken_in(delivery: ReceivedWebhook) -> bool:
    return delivery.verified and not delivery.duplicate and 200 <= delivery.reply.status < 300


def wait_until_all_delivered(
    receiver: WebhookReceiver, accepted: set[str], database_url: str
) -> dict[str, tuple[str, int]]:
    """Until the receiver has every accepted message and the database says each is
    delivered; returns the database's rows."""

    def done() -> dict[str, tuple[str, int]] | None:
        if not accepted <= set(accepted_by_receiver(receiver)):
            return None
        rows = delivery_rows(database_url)
        if set(rows) != accepted or any(state != "delivered" for state, _ in rows.values()):
            return None
        return rows

    return wait_until(done, what=f"all {len(accepted)} accepted messages delivered")


def assert_each_taken_in_once(receiver: WebhookReceiver, accepted: set[str]) -> None:
    """None lost, none taken in twice, nothing the directory did not accept, and every
    request that arrived whole was signed."""
    deliveries = receiver.deliveries
    unverified = [delivery for delivery in deliveries if not delivery.verified]
    # A worker killed in the middle of sending leaves a body cut short: not a bad signature.
    assert [d for d in unverified if not cut_short(d)] == []
    times = Counter(accepted_by_receiver(receiver))
    assert set(times) == accepted, (
        f"lost: {sorted(accepted - set(times))}; unexpected: {sorted(set(times) - accepted)}"
    )
    assert [webhook for webhook, count in times.items() if count > 1] == []


def cut_short(delivery: ReceivedWebhook) -> bool:
    return len(delivery.raw_body) < int(delivery.headers.get("content-length") or 0)


def most_at_once(deliveries: list[ReceivedWebhook]) -> int:
    """The most requests the receiver was answering at the same time."""
    events = []
    for delivery in deliveries:
        events.append((delivery.received_at, 1))
        events.append((delivery.answered_at or float("inf"), -1))
    current = highest = 0
    for _, change in sorted(events):
        current += change
        highest = max(highest, current)
    return highest


# --- the API in process (a test client) ---------------------------------------------------


def message_webhook_id(response_json: dict) -> str:
    return webhook_id(uuid.UUID(response_json["message"]["id"]))


def set_webhook(client, portal, url: str) -> None:
    response = client.patch("/v1/portals/me", json={"webhook_url": url}, headers=portal.headers)
    assert response.status_code == 200, response.json


def signing_secret(client, portal) -> str:
    return client.get("/v1/portals/me/webhook-secret", headers=portal.headers).json["secret"]


def open_conversation(client, advertiser, writer) -> tuple[str, str]:
    """A member of `writer` contacts an advertiser of `advertiser`: (conversation id,
    webhook id of the first message)."""
    ad = client.put("/v1/ads/ad-1", json=ad_payload(member=ADVERTISER), headers=advertiser.headers)
    assert ad.status_code == 201, ad.json
    response = client.post(
        f"/v1/ads/{ad.json['id']}/contact",
        json={"member": WRITER, "name": "Anna", "body": "Hello"},
        headers=writer.headers,
    )
    assert response.status_code == 201, response.json
    return response.json["conversation"]["id"], message_webhook_id(response.json)


def write(client, writer, conversation_id: str, count: int) -> list[str]:
    """`count` more messages from the writer; their webhook ids."""
    sent = []
    for number in range(count):
        response = client.post(
            f"/v1/conversations/{conversation_id}/messages",
            json={"member": WRITER, "body": f"Message {number}"},
            headers=writer.headers,
        )
        assert response.status_code == 201, response.json
        sent.append(message_webhook_id(response.json))
    return sent


# --- the receiver down for a while ----------------------------------------------------------


def test_messages_sent_while_the_receiver_is_down_arrive_once_it_is_back(
    client, migrated, advertiser, writer_portal, workers
):
    receiver = WebhookReceiver([signing_secret(client, advertiser)]).start()
    try:
        set_webhook(client, advertiser, receiver.url)
        port = receiver.port
        receiver.stop()
        workers.start(migrated.database_url)
        conversation_id, first = open_conversation(client, advertiser, writer_portal)
        accepted = {first, *write(client, writer_portal, conversation_id, 19)}
        # Down "for a while": every message has failed at least twice.
        wait_until(
            lambda: (
                len(rows := delivery_rows(migrated.database_url)) == len(accepted)
                and all(state == "pending" and attempts >= 3 for state, attempts in rows.values())
            ),
            what="every delivery to fail twice while the receiver is down",
        )
        assert receiver.deliveries == []
        receiver.start()
        assert receiver.port == port
        wait_until_all_delivered(receiver, accepted, migrated.database_url)
        assert_each_taken_in_once(receiver, accepted)
    finally:
        receiver.stop()


# --- a worker killed while delivering -------------------------------------------------------

SLOW_ANSWER_S = 1.0


def test_a_worker_killed_mid_delivery_loses_nothing_and_repeats_under_the_same_id(
    client, migrated, advertiser, writer_portal, workers
):
    slow = Reply(delay_s=SLOW_ANSWER_S)
    with WebhookReceiver(
        [signing_secret(client, advertiser)], responder=lambda _request: slow
    ) as receiver:
        set_webhook(client, advertiser, receiver.url)
        first_worker = workers.start(migrated.database_url)
        conversation_id, first = open_conversation(client, advertiser, writer_portal)
        accepted = {first, *write(client, writer_portal, conversation_id, 39)}
        # As many in flight as the worker sends one portal at once.
        receiver.wait_for(
            lambda seen: (
                sum(delivery.answered_at is None for delivery in seen) >= PER_PORTAL_IN_FLIGHT
            ),
            timeout_s=STARTUP_S,
        )
        dead_at = kill_hard(first_worker)
        # What the receiver took in from the killed worker but answered only after its
        # death: the worker recorded none of it.
        cut_off = {
            delivery.webhook_id
            for delivery in receiver.deliveries
            if taken_in(delivery)
            and (delivery.answered_at is None or delivery.answered_at > dead_at)
        }
        assert cut_off
        receiver.responder = None  # answer at once from now on
        workers.start(migrated.database_url)
        rows = wait_until_all_delivered(receiver, accepted, migrated.database_url)
        assert_each_taken_in_once(receiver, accepted)
        # Each cut-off delivery came again once its lease ran out, under the same id,
        # and the receiver dropped the repeat.
        repeated = {delivery.webhook_id for delivery in receiver.deliveries if delivery.duplicate}
        assert cut_off <= repeated, f"never sent again: {sorted(cut_off - repeated)}"
        assert all(rows[webhook][1] >= 2 for webhook in cut_off)


# --- the database restarted while messages are being sent ------------------------------------


@pytest.fixture
def own_cluster():
    """A cluster of this test's own, to restart without disturbing the other tests.
    Not under tmp_path: PostgreSQL runs as another user and must reach its folder."""
    folder = Path(tempfile.mkdtemp(prefix="directory-test-pg-restart-"))
    try:
        cluster = localdb.start(folder, fsync=False)
        from alembic import command

        command.upgrade(alembic_config(cluster.url), "head")
        yield cluster
    finally:
        localdb.destroy(folder)


@contextmanager
def api_server(database_url: str, folder: Path) -> Iterator[str]:
    """The API under gunicorn (two processes) on a free port; yields its base URL."""
    port = free_port()
    with (folder / "gunicorn.log").open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn",
                "--workers", "2",
                "--bind", f"127.0.0.1:{port}",
                "--no-control-socket",  # gunicorn's is one per user, shared
                "directory.wsgi:app",
            ],
            env={
                **os.environ,
                "DIRECTORY_ENVIRONMENT": "test",
                "DIRECTORY_DATABASE_URL": database_url,
                "DIRECTORY_WEBHOOK_ALLOW_LOOPBACK": "1",
                "DIRECTORY_RELAY_UNANSWERED_MESSAGES": str(IN_A_ROW),
                "DIRECTORY_LOG_LEVEL": "WARNING",
            },
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"

            def serving() -> bool:
                assert process.poll() is None, "gunicorn exited"
                try:
                    return requests.get(base + "/healthz", timeout=1).status_code == 200
                except requests.RequestException:
                    return False

            wait_until(serving, what="gunicorn to serve", timeout_s=STARTUP_S)
            yield base
        finally:
            process.terminate()
            process.wait(timeout=30)


class Sender(threading.Thread):
    """A portal writing one message after another (`batch` > 1: that many to a request,
    through POST /v1/messages/batch), as a careful client does: a request that fails
    (503, a broken connection) is sent again with the same idempotency keys until the
    directory answers 201, or 200 for a key it already has (in a batch: each message
    created, or sent_before)."""

    def __init__(
        self, base: str, portal: factories.PortalWithKey, conversation_id: str, batch: int = 1
    ):
        super().__init__(name="sender", daemon=True)
        self.base = base
        self.conversation_id = conversation_id
        self.batch = batch
        self.headers = portal.headers
        self.stop = threading.Event()
        self.accepted: list[str] = []  # webhook ids, in the order accepted
        self.failures = 0  # requests that had to be sent again
        self.unexpected: list[str] = []

    def run(self) -> None:
        with requests.Session() as http:
            number = 0
            while not self.stop.is_set() and not self.unexpected:
                self._send(http, list(range(number + 1, number + 1 + self.batch)))
                number += self.batch

    def _send(self, http: requests.Session, numbers: list[int]) -> None:
        messages = [
            {"member": WRITER, "body": f"Message {number}", "idempotency_key": f"k-{number}"}
            for number in numbers
        ]
        if self.batch == 1:
            url = f"{self.base}/v1/conversations/{self.conversation_id}/messages"
            body = messages[0]
        else:
            url = f"{self.base}/v1/messages/batch"
            body = {"items": [{"conversation_id": self.conversation_id, **m} for m in messages]}
        deadline = time.monotonic() + RECOVERY_S
        while time.monotonic() < deadline:
            try:
                response = http.post(url, json=body, headers=self.headers, timeout=30)
            except requests.RequestException:
                self.failures += 1
                time.sleep(POLL_S)
                continue
            if response.status_code in (200, 201):
                self._accept(response.json())
                return
            # 409 constraint_violation: a retry raced the first try's commit.
            if response.status_code in (409, 503):
                self.failures += 1
                time.sleep(POLL_S)
                continue
            self.unexpected.append(f"{response.status_code}: {response.text[:300]}")
            return
        self.unexpected.append(f"messages {numbers} still refused after {RECOVERY_S} s")

    def _accept(self, answer: dict) -> None:
        if self.batch == 1:
            self.accepted.append(message_webhook_id(answer))
            return
        for result in answer["results"]:
            if result["status"] in ("created", "sent_before"):
                self.accepted.append(message_webhook_id(result))
            else:
                self.unexpected.append(f"item {result['index']}: {result['errors']}")


@pytest.mark.parametrize("batch", [1, 5], ids=["one-a-request", "batches"])
def test_a_database_restart_while_sending_loses_no_message_and_doubles_none(
    own_cluster, workers, tmp_path, batch
):
    settings = Settings(environment="test", database_url=own_cluster.url)
    wiring = build_wiring(settings)
    try:
        with unit_of_work(wiring.session_factory) as session:
            advertiser = factories.create_portal(session, slug="sel-lyon")
            writer = factories.create_portal(session, slug="lets-bristol")
    finally:
        wiring.close()
    sender: Sender | None = None
    with api_server(own_cluster.url, tmp_path) as base, requests.Session() as http:
        secret = http.get(f"{base}/v1/portals/me/webhook-secret", headers=advertiser.headers)
        # Answers take a little while, so that deliveries are in flight at the restart.
        answer = Reply(delay_s=0.05)
        with WebhookReceiver([secret.json()["secret"]], responder=lambda _: answer) as receiver:
            try:
                http.patch(
                    f"{base}/v1/portals/me",
                    json={"webhook_url": receiver.url},
                    headers=advertiser.headers,
                ).raise_for_status()
                ad = http.put(
                    f"{base}/v1/ads/ad-1",
                    json=ad_payload(member=ADVERTISER),
                    headers=advertiser.headers,
                )
                contact = http.post(
                    f"{base}/v1/ads/{ad.json()['id']}/contact",
                    json={"member": WRITER, "name": "Anna", "body": "Hello"},
                    headers=writer.headers,
                )
                assert contact.status_code == 201, contact.text
                workers.start(own_cluster.url)
                sender = Sender(base, writer, contact.json()["conversation"]["id"], batch)
                sender.start()
                wait_until(lambda: len(sender.accepted) >= 50, what="50 messages accepted")
                localdb.stop(own_cluster.folder)
                wait_until(lambda: sender.failures > 0, what="the sender to meet the outage")
                restarted = localdb.start(own_cluster.folder, port=own_cluster.port, fsync=False)
                assert restarted.url == own_cluster.url
                accepted_before = len(sender.accepted)
                wait_until(
                    lambda: len(sender.accepted) >= accepted_before + 50,
                    what="50 more messages accepted after the restart",
                )
            finally:
                if sender is not None:
                    sender.stop.set()
                    sender.join(timeout=RECOVERY_S)
            assert not sender.is_alive()
            assert sender.unexpected == []
            accepted = {message_webhook_id(contact.json()), *sender.accepted}
            assert len(accepted) == len(sender.accepted) + 1  # one message per key
            wait_until_all_delivered(receiver, accepted, own_cluster.url)
            assert_each_taken_in_once(receiver, accepted)


# --- several workers at once ----------------------------------------------------------------


def listeners(database_url: str) -> int:
    """Worker connections waiting for NOTIFY on the deliveries' channel."""
    url = libpq_url(database_url)
    with psycopg.connect(url) as connection:
        return connection.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query = 'LISTEN directory_deliveries'"
        ).fetchone()[0]


def test_two_workers_share_the_deliveries_without_doing_any_twice(
    client, migrated, advertiser, writer_portal, workers
):
    # Each answer takes a while, so that both workers have deliveries in flight at once.
    answer = Reply(delay_s=0.3)
    with WebhookReceiver(
        [signing_secret(client, advertiser)], responder=lambda _request: answer
    ) as receiver:
        workers.start(migrated.database_url)
        workers.start(migrated.database_url)
        wait_until(
            lambda: listeners(migrated.database_url) >= 2,
            what="both workers to listen",
            timeout_s=STARTUP_S,
        )
        # Half the messages wait in the inbox (no webhook yet) and all come due at once
        # when the webhook is set, waking both workers with one notification; the other
        # half come one by one while the first are being delivered.
        conversation_id, first = open_conversation(client, advertiser, writer_portal)
        accepted = {first, *write(client, writer_portal, conversation_id, 99)}
        set_webhook(client, advertiser, receiver.url)
        accepted |= set(write(client, writer_portal, conversation_id, 100))
        rows = wait_until_all_delivered(receiver, accepted, migrated.database_url)
        deliveries = receiver.deliveries
        assert len(deliveries) == len(accepted) == 200
        assert not any(delivery.duplicate for delivery in deliveries)
        assert_each_taken_in_once(receiver, accepted)
        assert all(attempts == 1 for _, attempts in rows.values())
        # More in flight at once than one worker sends one portal: both were delivering.
        assert most_at_once(deliveries) > PER_PORTAL_IN_FLIGHT
