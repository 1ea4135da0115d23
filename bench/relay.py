"""Contact relay speed: messages accepted per second, and the time from acceptance to
verified webhook delivery, with live receivers on loopback.

    .venv/bin/python bench/relay.py [--turns 6] [--turn 5] [--clients 8] [--duration 30]
                                    [--rate 100,300] [--batch 10]

The API runs under gunicorn with as many processes as `directory serve` (DEFAULT_WORKERS),
one `directory worker` delivers with the production retry settings, and each portal's
webhook is a WebhookReceiver (tests/peers.py) in this process that checks every signature
with the reference Standard Webhooks package. Portals write to each other's advertisers:
most messages go into existing conversations (both parties take turns), one in ten opens
a new one.

  throughput  --clients threads post as fast as the API answers (the worker delivering
              meanwhile), in --turns turns of --turn seconds that alternate with the
              floor's (below), each turn starting once the last one's messages have all
              arrived: accepted messages per second, over all turns and for each pair.
              The machine's speed drifts by a quarter within minutes; turns side by side
              keep that drift out of the ratio to the floor.
  latency     for each --rate, messages at that steady rate for --duration seconds: the
              time from the client reading the 201 to the receiver getting the verified
              webhook, matched by webhook-id ("msg_" + the message id's hex); both clocks
              are this process's time.monotonic().
  batched     throughput turns as (a), taking turns with it, whose messages go about
              --batch to a request (POST /v1/messages/batch: one portal's messages in
              several of its conversations, and its members' openings), as a portal
              relaying its members' messages in turns sends them. --batch 1: no such
              turns.
  floor       bench/minimal_relay.py in place of the directory (one insert and a NOTIFY
              per message, a minimal deliverer, receivers and clients like ours), taking
              turns with ours: the most any Python relay could take here.

Goals on this 2-core machine: at least 500 messages accepted per second, and p95 from
acceptance to verified delivery under 1 s. About 4 minutes. Prints figures; asserts
nothing."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
from sqlalchemy import text

from bench import minimal_relay
from bench.common import (
    ROOT,
    CpuMeter,
    children,
    database,
    gunicorn,
    gunicorn_app,
    postmaster_pid,
)
from directory import build_wiring
from directory.__main__ import DEFAULT_WORKERS
from directory.cores import usable_cores
from directory.db import libpq_url, unit_of_work
from directory.services.portals import create_portal
from directory.services.relay import MAX_BATCH_MESSAGES
from directory.settings import Settings
from directory.webhooks.signing import new_secret
from tests.peers import WebhookReceiver

PORTALS = 4
ADS_PER_PORTAL = 5
CONVERSATIONS_PER_CLIENT = 12  # each client writes in its own: no waiting on row locks
NEW_CONTACT_EVERY = 10  # one message in ten opens a conversation
LATENCY_THREADS = 8  # senders sharing a steady rate
DRAIN_TIMEOUT_S = 120
WARM_UP_S = 2  # of each relay, before the turns
GOAL_ACCEPTED_PER_S = 500
GOAL_P95_S = 1.0
# The listen backlog socketserver gives the receivers (5) resets some of the worker's new
# connections when many open at once; a portal's real server (nginx: 511) takes them.
BODY = "Hello! Is the bicycle still available? I could come by on Saturday morning."


@dataclass(frozen=True)
class Party:
    key: str
    member: str


@dataclass(frozen=True)
class Conversation:
    id: str
    initiator: Party
    recipient: Party


@dataclass
class Tally:
    """What one phase's clients saw: webhook id -> when the 201 was read, and failures."""

    accepted: dict[str, float] = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)
    most_behind_s: float = 0.0  # paced phases: the latest a message left after its time
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, webhook_id: str, at: float) -> None:
        with self.lock:
            self.accepted[webhook_id] = at

    def fail(self, what: str) -> None:
        with self.lock:
            self.errors[what] += 1

    def extend(self, other: Tally) -> None:
        with self.lock:
            self.accepted.update(other.accepted)
            self.errors.update(other.errors)


class Api:
    """One client's connection to the API, kept open where the server allows it
    (gunicorn's sync workers close it after each answer; http.client then opens the
    next one itself)."""

    def __init__(self, base_url: str) -> None:
        address = urlsplit(base_url)
        self.connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)

    def call(self, method: str, path: str, key: str, body: dict | None = None):
        self.connection.request(
            method,
            path,
            body=None if body is None else orjson.dumps(body),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        response = self.connection.getresponse()
        payload = response.read()
        return response.status, orjson.loads(payload) if payload else None

    def close(self) -> None:
        self.connection.close()


class Writer:
    """Sends relay messages for one client thread: into its conversations, parties taking
    turns, and now and then (given `ads`) to a new advertiser."""

    def __init__(self, api: Api, conversations: list[Conversation], ads, name: str):
        self.api = api
        self.conversations = conversations
        self.ads = ads  # [(ad id, key of a portal whose members may write to it)]
        self.name = name
        self.count = itertools.count(1)

    def send(self, tally: Tally) -> None:
        path, key, payload = self.next_message()
        post_message(
            self.api, tally, path, key, payload, lambda body: webhook_id_of(body["message"]["id"])
        )

    def next_message(self) -> tuple[str, str, dict]:
        """(path, key, body) of this client's next message."""
        number = next(self.count)
        if self.ads and number % NEW_CONTACT_EVERY == 0:
            ad_id, writer_key = self.ads[number // NEW_CONTACT_EVERY % len(self.ads)]
            path, key = f"/v1/ads/{ad_id}/contact", writer_key
            payload = {"member": f"m-{self.name}-{number}", "name": "Anna", "body": BODY}
        else:
            conversation = self.conversations[number % len(self.conversations)]
            party = (conversation.initiator, conversation.recipient)[
                number // len(self.conversations) % 2
            ]
            path, key = f"/v1/conversations/{conversation.id}/messages", party.key
            payload = {"member": party.member, "body": BODY}
        return path, key, payload


class BatchWriter:
    """Sends relay messages for one client thread, as Writer does, but `batch` to a request
    (POST /v1/messages/batch): each of its portals' members' next messages in their
    conversations (parties taking turns), one request per portal, with the openings by
    that portal's members owed so far (one message in NEW_CONTACT_EVERY opens a
    conversation)."""

    def __init__(self, api: Api, conversations: list[Conversation], ads, name: str, batch: int):
        self.api = api
        self.name = name
        # The ads each portal's members write to, by the portal's key.
        self.ads: dict[str, list[str]] = {}
        for ad_id, writer_key in ads:
            self.ads.setdefault(writer_key, []).append(ad_id)
        # Per side, its parties' messages by portal key, `batch` to a request (with the
        # openings owed, a request holds `batch` messages on average).
        per_request = max(1, round(batch * (NEW_CONTACT_EVERY - 1) / NEW_CONTACT_EVERY))
        self.rounds = []
        for side in ("initiator", "recipient"):
            by_key: dict[str, list[tuple[str, Party]]] = {}
            for conversation in conversations:
                party = getattr(conversation, side)
                by_key.setdefault(party.key, []).append((conversation.id, party))
            self.rounds.append(
                [
                    (key, parties[start : start + per_request])
                    for key, parties in by_key.items()
                    for start in range(0, len(parties), per_request)
                ]
            )
        self.round = itertools.count()
        self.requests: list = []
        self.since_opening = 0
        self.openings = itertools.count(1)

    def send(self, tally: Tally) -> None:
        if not self.requests:
            self.requests = list(self.rounds[next(self.round) % 2])
        key, parties = self.requests.pop()
        items = [
            {"conversation_id": conversation_id, "member": party.member, "body": BODY}
            for conversation_id, party in parties
        ]
        # One opening for each NEW_CONTACT_EVERY - 1 replies, by the portal's members.
        self.since_opening += len(parties)
        ads = self.ads.get(key, [])
        while ads and self.since_opening >= NEW_CONTACT_EVERY - 1:
            self.since_opening -= NEW_CONTACT_EVERY - 1
            number = next(self.openings)
            items.append(
                {
                    "ad_id": ads[number % len(ads)],
                    "member": f"m-{self.name}-{number}",
                    "name": "Anna",
                    "body": BODY,
                }
            )
        try:
            status, body = self.api.call("POST", "/v1/messages/batch", key, {"items": items})
        except (OSError, http.client.HTTPException) as error:
            self.api.close()
            tally.fail(type(error).__name__)
            return
        accepted_at = time.monotonic()
        if status != 200:
            tally.fail(f"HTTP {status}")
            return
        for result in body["results"]:
            if result["status"] == "created":
                tally.add(webhook_id_of(result["message"]["id"]), accepted_at)
            else:
                tally.fail(result["error"])


def post_message(
    api: Api,
    tally: Tally,
    path: str,
    key: str,
    payload: dict,
    webhook_id: Callable[[dict], str],
) -> None:
    """POSTs one message and counts it: accepted (under its webhook id, when the 201 was
    read) or failed."""
    try:
        status, body = api.call("POST", path, key, payload)
    except (OSError, http.client.HTTPException) as error:
        api.close()
        tally.fail(type(error).__name__)
        return
    accepted_at = time.monotonic()
    if status == 201:
        tally.add(webhook_id(body), accepted_at)
    else:
        tally.fail(f"HTTP {status}")


def webhook_id_of(message_id: str) -> str:
    return "msg_" + uuid.UUID(message_id).hex


class FloorWriter:
    """Sends messages to bench/minimal_relay.py's route, as Writer sends them to ours."""

    def __init__(self, api: Api, name: str) -> None:
        self.api = api
        self.name = name
        self.count = itertools.count(1)

    def send(self, tally: Tally) -> None:
        number = next(self.count)
        post_message(
            self.api,
            tally,
            f"/messages/{number % PORTALS}",
            "floor",
            {"member": f"m-{self.name}", "body": BODY},
            lambda body: f"floor_{body['id']}",
        )


# --- setting up ---------------------------------------------------------------------------


def create_portals(database_url: str) -> list[str]:
    """The portals' keys."""
    wiring = build_wiring(Settings(database_url=database_url))
    try:
        with unit_of_work(wiring.session_factory) as session:
            return [
                create_portal(
                    session,
                    slug=f"exchange-{index}",
                    name=f"Exchange {index}",
                    default_currencies=["EUR", "HOUR"],
                )[1].key
                for index in range(PORTALS)
            ]
    finally:
        wiring.close()


def publish_ads(api: Api, keys: list[str]) -> list[tuple[str, int, str]]:
    """Each portal's ads: [(ad id, portal index, advertiser's handle)]."""
    ads = []
    for index, key in enumerate(keys):
        for number in range(ADS_PER_PORTAL):
            status, body = api.call(
                "PUT",
                f"/v1/ads/ad-{number}",
                key,
                {
                    "kind": "offer",
                    "title": f"Bicycle repairs #{number}",
                    "body": "I fix punctures, brakes and gears. Bring your bike on Saturdays.",
                    "category": "home.repairs",
                    "location": {"lat": 45.76 + index, "lon": 4.83 + number / 10},
                    "privacy": "approximate",
                    "currencies": ["EUR", "HOUR"],
                    "language": "en",
                    "member": f"m-owner-{index}-{number}",
                },
            )
            if status != 201:
                raise SystemExit(f"publishing an ad failed: HTTP {status} {body}")
            ads.append((body["id"], index, f"m-owner-{index}-{number}"))
    return ads


def open_conversations(
    api: Api, keys: list[str], ads: list[tuple[str, int, str]], count: int
) -> tuple[list[Conversation], Tally]:
    """The conversations, and their first messages as accepted."""
    conversations = []
    first_messages = Tally()
    for number in range(count):
        ad_id, owner, owner_member = ads[number % len(ads)]
        writer = (owner + 1 + number % (PORTALS - 1)) % PORTALS
        member = f"m-writer-{number}"
        status, body = api.call(
            "POST",
            f"/v1/ads/{ad_id}/contact",
            keys[writer],
            {"member": member, "name": "Anna", "body": BODY},
        )
        if status != 201:
            raise SystemExit(f"opening a conversation failed: HTTP {status} {body}")
        first_messages.add(webhook_id_of(body["message"]["id"]), time.monotonic())
        conversations.append(
            Conversation(
                body["conversation"]["id"],
                initiator=Party(keys[writer], member),
                recipient=Party(keys[owner], owner_member),
            )
        )
    return conversations, first_messages


# --- the phases -------------------------------------------------------------------------------


def saturate(writers: list[Writer], duration_s: float) -> tuple[Tally, float]:
    """Every writer sends as fast as the API answers; (tally, seconds it took)."""
    tally = Tally()
    until = time.monotonic() + duration_s

    def run(writer: Writer) -> None:
        while time.monotonic() < until:
            writer.send(tally)

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(writer,)) for writer in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tally, time.monotonic() - started


def paced(writers: list[Writer], rate: float, duration_s: float) -> Tally:
    """Messages at a steady `rate`, the writers taking turns: message n leaves at
    start + n / rate (or as soon as its writer is free, if it is late). Those not sent
    by the end of the phase are not sent: an API slower than the rate shows as fewer
    messages accepted, not as a longer phase."""
    tally = Tally()
    start = time.monotonic() + 0.1
    end = start + duration_s
    total = int(rate * duration_s)

    def run(index: int, writer: Writer) -> None:
        behind = 0.0
        for number in range(index, total, len(writers)):
            due = start + number / rate
            now = time.monotonic()
            if now >= end:
                break
            wait_s = due - now
            if wait_s > 0:
                time.sleep(wait_s)
            else:
                behind = max(behind, -wait_s)
            writer.send(tally)
        with tally.lock:
            tally.most_behind_s = max(tally.most_behind_s, behind)

    threads = [
        threading.Thread(target=run, args=(index, writer)) for index, writer in enumerate(writers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tally


def arrivals(receivers: list[WebhookReceiver]) -> dict[str, float]:
    """Webhook id -> when its first verified request arrived."""
    first: dict[str, float] = {}
    for receiver in receivers:
        for delivery in receiver.deliveries:
            if delivery.verified and delivery.webhook_id not in first:
                first[delivery.webhook_id] = delivery.received_at
    return first


def drain(receivers: list[WebhookReceiver], tally: Tally) -> tuple[dict[str, float], float]:
    """Waits until every accepted message has arrived verified (or DRAIN_TIMEOUT_S);
    (arrivals, seconds waited)."""
    started = time.monotonic()
    while True:
        arrived = arrivals(receivers)
        if tally.accepted.keys() <= arrived.keys():
            return arrived, time.monotonic() - started
        if time.monotonic() - started > DRAIN_TIMEOUT_S:
            return arrived, float("inf")
        time.sleep(0.1)


@dataclass(frozen=True)
class Latency:
    count: int
    missing: int
    p50_s: float
    p95_s: float
    p99_s: float
    max_s: float


def latency(tally: Tally, arrived: dict[str, float]) -> Latency:
    delays = sorted(
        arrived[webhook] - accepted_at
        for webhook, accepted_at in tally.accepted.items()
        if webhook in arrived
    )
    missing = len(tally.accepted) - len(delays)
    if len(delays) < 2:
        return Latency(len(delays), missing, *([float("nan")] * 4))
    cuts = statistics.quantiles(delays, n=100, method="inclusive")
    return Latency(len(delays), missing, cuts[49], cuts[94], cuts[98], delays[-1])


def describe(figures: Latency) -> str:
    text_ = (
        f"p50 {figures.p50_s * 1000:.0f} ms, p95 {figures.p95_s * 1000:.0f} ms, "
        f"p99 {figures.p99_s * 1000:.0f} ms, max {figures.max_s * 1000:.0f} ms"
    )
    if figures.missing:
        text_ += f"; {figures.missing} NOT DELIVERED within {DRAIN_TIMEOUT_S} s"
    return text_


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


@dataclass
class Side:
    """A relay in the throughput turns (ours or the floor): its clients and receivers, a
    CpuMeter of its parts, and what its turns added up to."""

    writers: list  # Writer or FloorWriter
    receivers: list[WebhookReceiver]
    meter: Callable[[], CpuMeter]
    tally: Tally = field(default_factory=Tally)  # every turn's
    elapsed_s: float = 0.0
    per_turn: list[float] = field(default_factory=list)  # accepted/s
    delivered_meanwhile: int = 0  # arrived before their turn ended
    longest_drain_s: float = 0.0
    cpu: Counter = field(default_factory=Counter)

    @property
    def accepted_per_s(self) -> float:
        return len(self.tally.accepted) / self.elapsed_s

    def take_turn(self, duration_s: float) -> None:
        """Saturates for `duration_s`, then waits until the turn's messages all arrived."""
        meter = self.meter()
        tally, elapsed_s = saturate(self.writers, duration_s)
        self.cpu.update(meter.stop())
        self.delivered_meanwhile += len(arrivals(self.receivers).keys() & tally.accepted.keys())
        _, drain_s = drain(self.receivers, tally)
        self.longest_drain_s = max(self.longest_drain_s, drain_s)
        self.tally.extend(tally)
        self.elapsed_s += elapsed_s
        self.per_turn.append(len(tally.accepted) / elapsed_s)

    def warm_up(self, duration_s: float) -> None:
        """A turn not counted: every server process is loaded and has its connections."""
        tally, _ = saturate(self.writers, duration_s)
        drain(self.receivers, tally)

    def close(self) -> None:
        for writer in self.writers:
            writer.api.close()


@contextlib.contextmanager
def floor_relay(database_url: str, *, clients: int):
    """bench/minimal_relay.py, ready to take turns: as many gunicorn workers as ours, one
    deliverer, receivers and clients like ours. Yields its Side."""
    url = libpq_url(database_url)
    minimal_relay.create_table(url)
    secrets = [new_secret() for _ in range(PORTALS)]
    receivers = [WebhookReceiver([secret]).start() for secret in secrets]
    webhooks = {str(index): [receivers[index].url, secrets[index]] for index in range(PORTALS)}
    deliverer = subprocess.Popen(
        [sys.executable, "-m", "bench.minimal_relay"],
        env={**os.environ, "BENCH_DATABASE_URL": url, "BENCH_WEBHOOKS": orjson.dumps(webhooks)},
        cwd=ROOT,
    )
    try:
        with gunicorn_app(
            "bench.minimal_relay:app", workers=DEFAULT_WORKERS, env={"BENCH_DATABASE_URL": url}
        ) as server:
            side = Side(
                writers=[
                    FloorWriter(Api(server.base_url), f"f{index}") for index in range(clients)
                ],
                receivers=receivers,
                meter=lambda: relay_meter(api=server, worker=deliverer, database_url=database_url),
            )
            try:
                yield side
            finally:
                side.close()
    finally:
        deliverer.terminate()
        deliverer.wait(timeout=30)
        for receiver in receivers:
            receiver.stop()


def cpu_per_message(cpu: dict[str, float], messages: int) -> str:
    return ", ".join(
        f"{name} {seconds / messages * 1000:.1f} ms"
        for name, seconds in cpu.items()
        if name in ("API", "worker", "PostgreSQL")
    )


@dataclass
class Relay:
    """The directory under test: its API under gunicorn, one delivering worker, portals
    whose webhooks are receivers here, their ads and open conversations."""

    database_url: str
    server: subprocess.Popen
    worker: subprocess.Popen
    keys: list[str]
    receivers: list[WebhookReceiver]
    ads: list[tuple[str, int, str]]
    conversations: list[Conversation]
    per_client: int  # conversations

    def writers(
        self,
        count: int,
        *,
        base_url: str | None = None,
        first: int = 0,
        contacts: bool = True,
        batch: int = 1,
    ) -> list[Writer | BatchWriter]:
        """`count` clients of the API at `base_url` (ours by default), each writing in
        its own `per_client` conversations from the `first` client's on, its messages
        about `batch` to a request."""
        ads = [(ad_id, self.keys[(owner + 1) % PORTALS]) for ad_id, owner, _ in self.ads]
        writers: list[Writer | BatchWriter] = []
        for index in range(first, first + count):
            api = Api(base_url or self.server.base_url)
            own = self.conversations[index * self.per_client : (index + 1) * self.per_client]
            name = f"c{index}-{uuid.uuid4().hex[:6]}"
            if batch > 1:
                writers.append(BatchWriter(api, own, ads if contacts else [], name, batch))
            else:
                writers.append(
                    Writer(api, own[:CONVERSATIONS_PER_CLIENT], ads if contacts else [], name)
                )
        return writers

    def meter(self, api: subprocess.Popen | None = None) -> CpuMeter:
        """A CpuMeter of the API at `api` (ours by default), the worker and PostgreSQL."""
        return relay_meter(
            api=api or self.server, worker=self.worker, database_url=self.database_url
        )


@contextlib.contextmanager
def directory_relay(
    database_url: str,
    *,
    clients: int,
    worker_log: Path,
    per_client: int = CONVERSATIONS_PER_CLIENT,
):
    """Yields the directory's Relay, with `per_client` conversations for each of
    `clients` writers."""
    env = {
        "DIRECTORY_WEBHOOK_ALLOW_LOOPBACK": "1",
        # A few portals here open as many conversations as a whole federation would, with
        # a few advertisers.
        "DIRECTORY_RELAY_CONVERSATIONS_PER_PORTAL_PER_HOUR": "10000000",
        "DIRECTORY_RELAY_CONVERSATIONS_WITH_ONE_MEMBER_PER_HOUR": "10000000",
    }
    with gunicorn(database_url, workers=DEFAULT_WORKERS, env=env) as server:
        keys = create_portals(database_url)
        setup = Api(server.base_url)
        receivers = []
        worker = None
        try:
            for key in keys:
                _, secret = setup.call("GET", "/v1/portals/me/webhook-secret", key)
                receiver = WebhookReceiver([secret["secret"]]).start()
                receivers.append(receiver)
                status, body = setup.call(
                    "PATCH", "/v1/portals/me", key, {"webhook_url": receiver.url}
                )
                if status != 200:
                    raise SystemExit(f"setting the webhook failed: HTTP {status} {body}")
            ads = publish_ads(setup, keys)
            conversations, first_messages = open_conversations(
                setup, keys, ads, per_client * clients
            )
            setup.close()
            worker = start_worker(database_url, worker_log)
            # The conversations' first messages go out as soon as the worker is up.
            drain(receivers, first_messages)
            yield Relay(
                database_url, server, worker, keys, receivers, ads, conversations, per_client
            )
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(timeout=60)
            for receiver in receivers:
                receiver.stop()


# --- the run ---------------------------------------------------------------------------------


def start_worker(database_url: str, log_path: Path) -> subprocess.Popen:
    with log_path.open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "directory", "worker"],
            env={
                **os.environ,
                "DIRECTORY_DATABASE_URL": database_url,
                "DIRECTORY_WEBHOOK_ALLOW_LOOPBACK": "1",
                "DIRECTORY_LOG_LEVEL": "WARNING",
            },
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def relay_meter(*, api: subprocess.Popen, worker: subprocess.Popen, database_url: str) -> CpuMeter:
    """A CpuMeter of a relay's parts: the API's processes, the delivering worker,
    PostgreSQL, and this process (clients and receivers)."""
    postmaster = postmaster_pid(database_url)
    return CpuMeter(
        {
            "API": lambda: [api.pid, *children(api.pid)],
            "worker": lambda: [worker.pid],
            "PostgreSQL": lambda: [postmaster, *children(postmaster)],
            "bench clients + receivers": lambda: [os.getpid()],
        }
    )


def retried_deliveries(database_url: str) -> tuple[int, int, int]:
    """(deliveries, attempted more than once, still pending)."""
    wiring = build_wiring(Settings(database_url=database_url))
    try:
        with wiring.engine.connect() as connection:
            row = connection.execute(
                text(
                    "SELECT count(*), count(*) FILTER (WHERE attempts > 1),"
                    " count(*) FILTER (WHERE state = 'pending') FROM deliveries"
                )
            ).one()
    finally:
        wiring.close()
    return row[0], row[1], row[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--turns", type=int, default=6, help="throughput turns of each relay (default 6)"
    )
    parser.add_argument(
        "--turn", type=float, default=5, help="seconds of each throughput turn (default 5)"
    )
    parser.add_argument(
        "--clients", type=int, default=8, help="concurrent clients of the throughput turns"
    )
    parser.add_argument(
        "--duration", type=float, default=30, help="seconds of each latency phase (default 30)"
    )
    parser.add_argument(
        "--rate",
        default="100,300",
        help="steady rates of the latency phases, messages/s (default 100,300)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=10,
        help="messages per request of the batched throughput turns, on average (POST "
        "/v1/messages/batch; default 10; 1: no batched turns)",
    )
    args = parser.parse_args()
    if not 1 <= args.batch <= MAX_BATCH_MESSAGES:
        parser.error(f"--batch: from 1 to {MAX_BATCH_MESSAGES}")
    rates = [float(rate) for rate in args.rate.split(",")]
    batched_turns = args.batch > 1

    with (
        tempfile.TemporaryDirectory(prefix="directory-bench-relay-") as folder,
        database() as url,
    ):
        worker_log = Path(folder) / "worker.log"
        with directory_relay(
            url,
            # The batched turns' clients write in conversations of their own.
            clients=max(args.clients * (2 if batched_turns else 1), LATENCY_THREADS),
            worker_log=worker_log,
            # About `batch` conversations for each portal on each side: full batches.
            per_client=max(CONVERSATIONS_PER_CLIENT, args.batch * PORTALS),
        ) as relay:
            # (a) throughput, one message a request and (a2) batched, in turns with (c)
            ours = Side(relay.writers(args.clients), relay.receivers, relay.meter)
            batched = Side(
                relay.writers(args.clients, first=args.clients, batch=args.batch),
                relay.receivers,
                relay.meter,
            )
            with floor_relay(url, clients=args.clients) as floor:
                sides = [ours, floor] + ([batched] if batched_turns else [])
                for side in sides:
                    side.warm_up(WARM_UP_S)
                for turn in range(args.turns):
                    # Each goes first as often as the others: none gains from the drift.
                    for side in sides[turn % len(sides) :] + sides[: turn % len(sides)]:
                        side.take_turn(args.turn)
            ours.close()
            batched.close()
            saturated = latency(ours.tally, arrivals(relay.receivers))
            saturated_batched = latency(batched.tally, arrivals(relay.receivers))

            # (b) latency at steady rates
            steady = []
            for rate in rates:
                clients = relay.writers(LATENCY_THREADS)
                paced_tally = paced(clients, rate, args.duration)
                arrived, _ = drain(relay.receivers, paced_tally)
                for client in clients:
                    client.api.close()
                steady.append((rate, paced_tally, latency(paced_tally, arrived)))
            total, retried, pending = retried_deliveries(url)
        log = worker_log.read_text().strip()
        requests_seen = sum(len(receiver.deliveries) for receiver in relay.receivers)
        unverified = sum(
            not delivery.verified
            for receiver in relay.receivers
            for delivery in receiver.deliveries
        )

    cores = usable_cores()
    print(f"setup:                 {PORTALS} portals with webhooks, {len(relay.ads)} ads, "
          f"{len(relay.conversations)} conversations; API: gunicorn, {DEFAULT_WORKERS} workers; "
          f"1 delivery worker; {cores} cores")  # fmt: skip
    report_throughput(
        "(a) throughput:       ",
        ours,
        saturated,
        args,
        "one message a request",
        cores,
    )
    if batched_turns:
        report_throughput(
            "(a2) batched:         ",
            batched,
            saturated_batched,
            args,
            f"about {args.batch} messages a request, openings among them (POST /v1/messages/batch)",
            cores,
        )
    for rate, paced_tally, figures in steady:
        achieved = len(paced_tally.accepted) / args.duration
        print(f"(b) latency at {rate:,.0f}/s:  {describe(figures)}  "
              f"({figures.count:,} messages, one a request, {achieved:,.0f}/s accepted, "
              f"client at most {paced_tally.most_behind_s * 1000:.0f} ms behind its pace"
              + (f", refused/failed {dict(paced_tally.errors)}" if paced_tally.errors else "")
              + ")")  # fmt: skip
    floor_accepted = len(floor.tally.accepted)
    floor_delivered = len(arrivals(floor.receivers).keys() & floor.tally.accepted.keys())
    floor_busy = sum(floor.cpu.values())
    print(f"(c) floor:             {floor.accepted_per_s:,.0f} messages accepted/s "
          f"(bench/minimal_relay.py, one message a request, in turns with (a): "
          f"{floor_accepted:,} in {floor.elapsed_s:.1f} s, {floor_delivered:,} delivered; turns "
          f"{min(floor.per_turn):,.0f}-{max(floor.per_turn):,.0f}/s; machine busy "
          f"{floor_busy / floor.elapsed_s / cores:.0%}; CPU per message: "
          f"{cpu_per_message(floor.cpu, floor_accepted)})")  # fmt: skip
    for label, side in [("(a)", ours)] + ([("(a2)", batched)] if batched_turns else []):
        pairs = sorted(
            mine / theirs for mine, theirs in zip(side.per_turn, floor.per_turn, strict=True)
        )
        print(f"    {label} / floor: {side.accepted_per_s / floor.accepted_per_s:.2f} over all "
              f"turns; turn by turn {pairs[0]:.2f} lowest, {statistics.median(pairs):.2f} "
              f"median, {pairs[-1]:.2f} highest")  # fmt: skip
    print(f"receivers:             {requests_seen:,} requests, {unverified} unverified; "
          f"deliveries {total:,}, {retried:,} tried more than once, {pending:,} still pending")  # fmt: skip
    print("goals:")
    # Accepted faster than the worker delivers, messages pile up: the rate counts only
    # while deliveries keep up (p95 acceptance -> delivery under the latency goal).
    for label, side, figures in [("one a request", ours, saturated)] + (
        [(f"about {args.batch} a request", batched, saturated_batched)] if batched_turns else []
    ):
        kept_up = figures.p95_s < GOAL_P95_S
        print(f"  >= {GOAL_ACCEPTED_PER_S} messages accepted/s, {label}: "
              f"{met(side.accepted_per_s >= GOAL_ACCEPTED_PER_S and kept_up)} "
              f"({side.accepted_per_s:,.0f}/s, the floor {floor.accepted_per_s:,.0f}/s; "
              f"p95 acceptance -> delivery {figures.p95_s * 1000:,.0f} ms"
              + ("" if kept_up else ": deliveries fell behind") + ")")  # fmt: skip
    for rate, paced_tally, figures in steady:
        ok = figures.p95_s < GOAL_P95_S and not figures.missing
        achieved = len(paced_tally.accepted) / args.duration
        # Below the rate asked for, the figure is for the rate the API could take.
        shortfall = f", only {achieved:,.0f}/s accepted" if achieved < 0.95 * rate else ""
        print(f"  p95 acceptance -> delivery < {GOAL_P95_S:.0f} s at {rate:,.0f}/s: "
              f"{met(ok)} ({figures.p95_s * 1000:.0f} ms{shortfall})")  # fmt: skip
    if log:
        lines = log.splitlines()
        print(f"worker log ({len(lines)} lines, last ones):")
        print("\n".join("  " + line for line in lines[-5:]))


def report_throughput(
    label: str, side: Side, saturated: Latency, args, how: str, cores: int
) -> None:
    """Prints a throughput side's figures."""
    accepted = len(side.tally.accepted)
    print(f"{label} {side.accepted_per_s:,.0f} messages accepted/s  "
          f"({accepted:,} in {side.elapsed_s:.1f} s: {args.turns} turns of {args.turn:g} s, "
          f"{args.clients} clients, 1 in {NEW_CONTACT_EVERY} a new conversation; {how}; turns "
          f"{min(side.per_turn):,.0f}-{max(side.per_turn):,.0f}/s)")  # fmt: skip
    if side.tally.errors:
        print(f"    refused/failed:    {dict(side.tally.errors)}")
    print(f"    delivered meanwhile: {side.delivered_meanwhile:,} "
          f"({side.delivered_meanwhile / side.elapsed_s:,.0f}/s); the rest of a turn's "
          f"arrived within {side.longest_drain_s:.1f} s of its end")  # fmt: skip
    print(f"    acceptance -> delivery (saturated): {describe(saturated)}")
    busy = sum(side.cpu.values())
    print("    CPU share:         "
          + ", ".join(f"{name} {seconds / busy:.0%}" for name, seconds in side.cpu.items())
          + f" (machine busy {busy / side.elapsed_s / cores:.0%}; CPU per message accepted: "
          + cpu_per_message(side.cpu, accepted) + ")")  # fmt: skip
    if side.cpu["other"] > 0.1 * busy:
        print("    WARNING: other programs used the machine meanwhile; the figures are low")


if __name__ == "__main__":
    main()
