"""The background worker: relay events delivered to portals' webhooks, periodic
housekeeping and, with the Meilisearch engine, the search index kept in step with the
change feed.

Deliveries run in their own thread (`Deliverer`): woken by NOTIFY when a message is
accepted or a conversation ends, and polling besides (a missed notification, a retry
coming due), it leases due deliveries and sends them from a thread pool. Several workers
may run at once.

Each periodic job runs on its own schedule: housekeeping, the re-checks of verified
websites and, with Meilisearch, indexing. A failing job is logged and tried again
after a growing, jittered delay; it never stops the worker nor the other jobs (Meilisearch
or the database restarting is an ordinary event)."""

from __future__ import annotations

import logging
import queue
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from directory import Wiring
from directory.db import libpq_url, unit_of_work, with_connect_timeout
from directory.services import deliveries, relay, websites
from directory.services.housekeeping import HousekeepingReport, close_stale_sync_sessions
from directory.webhooks.delivery import DeliveryResult, Outcome, WebhookSender
from directory.webhooks.signing import signed_headers

log = logging.getLogger("directory.worker")
HOUSEKEEPING_INTERVAL_S = 60
# How long one round of housekeeping goes on through a backlog (staged sync items,
# overdue deliveries, old messages) before it lets the other jobs run.
PURGE_TIME_BUDGET_S = 10
# New and changed ads reach search results within about this long.
INDEXING_INTERVAL_S = 1
# Searches already leave expired ads out: removing their documents only saves space.
EXPIRED_PURGE_INTERVAL_S = 600
# Pages of the feed per indexing round, so a long backlog still lets the other jobs run.
INDEXING_PAGES_PER_ROUND = 20
MAX_BACKOFF_S = 300
# The deliverer and its listener try the database again at least this often while it is
# away, so messages flow again within about this long of its return, not minutes later.
DELIVERY_MAX_BACKOFF_S = 30
# Webhooks in flight at once: most of their time is spent waiting on portals' answers
# (a tenth of a second across the internet: 320 a second from one worker). Each round
# claims what the threads freed meanwhile, and a claim costs about what several
# deliveries do: bench/delivery_drain.py's backlog drained at 642 a second using 0.96 ms
# of the worker's CPU and 0.52 ms of PostgreSQL's per delivery with 16 threads and 4 to
# a portal, and at 993 a second using 0.72 and 0.28 ms with 32 and 8.
DELIVERY_THREADS = 32
# Deliveries are looked for at least this often without a notification.
DELIVERY_POLL_S = 1.0
# After a wake-up, how long to wait for more messages before claiming: batches under
# load, for a few milliseconds of latency.
DELIVERY_BATCH_WAIT_S = 0.01
LISTEN_TIMEOUT_S = 1.0  # how soon the listener notices the worker stopping
# Verified websites are looked at again one per round: a slow site holds the other jobs
# for one fetch at most (10 s), and a worker gets through 1,440 a day.
WEBSITE_RECHECK_INTERVAL_S = 60


@dataclass
class Job:
    name: str
    interval_s: float
    run: Callable[[Wiring], None]
    failures: int = 0
    due_at: float = 0.0  # time.monotonic(): every job runs in the first round

    def run_if_due(self, wiring: Wiring, now: float) -> None:
        if now < self.due_at:
            return
        try:
            self.run(wiring)
        except Exception as error:
            self.failures += 1
            delay = min(
                self.interval_s * 2 ** (self.failures - 1), max(MAX_BACKOFF_S, self.interval_s)
            )
            # Jitter: workers that failed together do not all retry together.
            delay *= random.uniform(0.75, 1.25)
            log_failure(self.name, self.failures, delay, error)
            self.due_at = time.monotonic() + delay
        else:
            self.failures = 0
            self.due_at = time.monotonic() + self.interval_s


def delivery_backoff_s(failures: int) -> float:
    """How long the deliverer, or its listener, waits after `failures` failed tries in a
    row: doubling from the poll interval, at most DELIVERY_MAX_BACKOFF_S, jittered so that
    workers that failed together do not all try again together."""
    delay = min(DELIVERY_POLL_S * 2.0 ** min(failures, 32), DELIVERY_MAX_BACKOFF_S)
    return delay * random.uniform(0.75, 1.25)


def log_failure(what: str, failures: int, delay: float, error: Exception) -> None:
    """A failed try of a job or of the deliverer. With the database away, one line a try
    (it fails at every try until it is back), not a traceback each time."""
    if isinstance(error, OperationalError):
        reason = str(error.orig).strip().split("\n", 1)[0]
        log.warning(
            "%s failed (%d in a row), the database is unavailable: %s; next try in %.0f s",
            what,
            failures,
            reason,
            delay,
        )
    else:
        log.exception("%s failed (%d in a row); next try in %.0f s", what, failures, delay)


def housekeeping(wiring: Wiring) -> None:
    """Expired sync sessions and their staged items, deliveries past their period, and
    the relay's retention, a batch a transaction each, for PURGE_TIME_BUDGET_S in all
    (each gets a batch at least): a long backlog goes over several rounds, and the
    other jobs, and a stop, are not kept waiting. Each runs whatever the others do, so
    that one failing (a lock held past the statement timeout, a deadlock) does not keep
    the others from running; the first failure is raised once all have run, for the
    job to log and retry."""
    deadline = time.monotonic() + PURGE_TIME_BUDGET_S
    failures = []
    for step in (_sync_sessions, _fail_expired_deliveries, _relay_retention):
        try:
            step(wiring, deadline=deadline)
        except Exception as error:
            failures.append(error)
    if failures:
        raise failures[0]


def _sync_sessions(wiring: Wiring, *, deadline: float) -> None:
    report = HousekeepingReport(0, 0)
    while True:
        with unit_of_work(wiring.session_factory) as session:
            report += close_stale_sync_sessions(session)
        if not report.more or time.monotonic() > deadline:
            break
    if report.expired_sync_sessions or report.purged_sync_items:
        log.info("housekeeping: %s", report)


def _fail_expired_deliveries(wiring: Wiring, *, deadline: float) -> None:
    give_up_after = timedelta(hours=wiring.settings.delivery_give_up_after_hours)
    failed = 0
    while True:
        with unit_of_work(wiring.session_factory) as session:
            batch = deliveries.fail_expired(session, give_up_after=give_up_after)
        failed += batch
        if batch < deliveries.FAIL_BATCH or time.monotonic() > deadline:
            break
    if failed:
        log.warning("relay: %d events could not be delivered in time; marked failed", failed)


def _relay_retention(wiring: Wiring, *, deadline: float) -> None:
    purged = purge_old_messages(wiring, deadline=deadline)
    if purged.messages or purged.conversations:
        log.info("relay retention: %s", purged)


def purge_old_messages(
    wiring: Wiring, *, batch: int = relay.PURGE_BATCH, deadline: float | None = None
) -> relay.PurgeReport:
    """The relay's retention, a batch a transaction, until `deadline` (time.monotonic(),
    PURGE_TIME_BUDGET_S from now unless given): a long backlog (the retention just
    shortened) is purged over several rounds, and the other jobs run in between."""
    retention = timedelta(days=wiring.settings.relay_retention_days)
    if deadline is None:
        deadline = time.monotonic() + PURGE_TIME_BUDGET_S
    purged = relay.PurgeReport(0, 0)
    while True:
        with unit_of_work(wiring.session_factory) as session:
            purged += relay.purge_old_messages(session, retention=retention, limit=batch)
        if not purged.more or time.monotonic() > deadline:
            return purged


def website_recheck(wiring: Wiring) -> None:
    """Looks for the token of the verified website whose turn it is (services.websites):
    between two transactions, as a verification does."""
    settings = wiring.settings
    with unit_of_work(wiring.session_factory) as session:
        challenge = websites.claim_recheck(
            session, interval=timedelta(days=settings.website_recheck_days)
        )
    if challenge is None:
        return
    failure = websites.why_token_missing(challenge, allow_loopback=settings.webhook_allow_loopback)
    with unit_of_work(wiring.session_factory) as session:
        result = websites.record_recheck(
            session,
            challenge=challenge,
            failure=failure,
            grace=timedelta(days=settings.website_recheck_grace_days),
        )
    if result is websites.RecheckResult.WITHDRAWN:
        log.warning(
            "website %s of portal %d: token missing for %d days, verification withdrawn: %s",
            challenge.website,
            challenge.portal_id,
            settings.website_recheck_grace_days,
            failure,
        )
    elif result is websites.RecheckResult.HELD:
        log.warning(
            "website %s of portal %d: token missing for %d days, but no other website's "
            "token was found in the last day either: kept verified, as the directory may "
            "be the one cut off (`directory portals unverify-website` withdraws it): %s",
            challenge.website,
            challenge.portal_id,
            settings.website_recheck_grace_days,
            failure,
        )
    elif result is websites.RecheckResult.FAILING:
        log.info("website %s of portal %d: %s", challenge.website, challenge.portal_id, failure)


def search_indexing(wiring: Wiring) -> None:
    from directory.search import indexing

    applied = indexing.catch_up(wiring, max_pages=INDEXING_PAGES_PER_ROUND)
    if applied:
        log.info("search index: %d changes applied", applied)


def expired_purge(wiring: Wiring) -> None:
    from directory.search import indexing

    indexing.purge_expired(wiring)


def jobs_for(wiring: Wiring) -> list[Job]:
    jobs = [
        Job("housekeeping", HOUSEKEEPING_INTERVAL_S, housekeeping),
        Job("website re-checks", WEBSITE_RECHECK_INTERVAL_S, website_recheck),
    ]
    if wiring.settings.search_engine == "meilisearch":
        jobs.append(Job("search indexing", INDEXING_INTERVAL_S, search_indexing))
        jobs.append(Job("expired ads purge", EXPIRED_PURGE_INTERVAL_S, expired_purge))
    return jobs


def run(wiring: Wiring, *, once: bool = False) -> bool:
    """Run until stopped (or one round of every job, and of deliveries, with `once`);
    False when the last run of some job failed."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("worker started")
    jobs = jobs_for(wiring)
    deliverer = Deliverer(wiring, stop)
    if once:
        deliverer.deliver_due()
    else:
        deliverer.start()
    while not stop.is_set():
        for job in jobs:
            if stop.is_set():
                break
            job.run_if_due(wiring, time.monotonic())
        if once:
            break
        stop.wait(max(0.0, min(job.due_at for job in jobs) - time.monotonic()))
    deliverer.join()
    log.info("worker stopped")
    return all(job.failures == 0 for job in jobs) and deliverer.failures == 0


class Deliverer:
    """Sends due relay events to their portals' webhooks, DELIVERY_THREADS at a time.

    It claims no more deliveries than it has free threads, so a lease never runs out
    while a delivery waits its turn here. A slow or dead endpoint holds one thread for
    at most the sender's timeouts, and its retries are spaced out by the backoff.

    Under load, work is done in batches: a wake-up waits a moment for more messages
    before claiming, and the webhooks delivered meanwhile are recorded in one statement
    (a claim and a record per message cost more than sending it)."""

    def __init__(
        self, wiring: Wiring, stop: threading.Event, *, sender: WebhookSender | None = None
    ):
        settings = wiring.settings
        self.wiring = wiring
        self.stop = stop
        # As many kept-alive connections per portal as deliveries in flight. Tests pass a
        # sender with shorter timeouts.
        self.sender = sender or WebhookSender(connections_per_pool=DELIVERY_THREADS)
        self.policy = deliveries.DeliveryPolicy(
            first_retry=timedelta(seconds=settings.delivery_first_retry_s),
            max_retry=timedelta(seconds=settings.delivery_max_retry_s),
            give_up_after=timedelta(hours=settings.delivery_give_up_after_hours),
            lease=timedelta(seconds=settings.delivery_lease_s),
        )
        self.pool = ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="deliver")
        self.free = threading.Semaphore(DELIVERY_THREADS)
        # Webhooks being sent, by portal: a claim gives no portal more than
        # deliveries.PER_PORTAL_IN_FLIGHT at once.
        self.in_flight: Counter[int] = Counter()
        self.in_flight_lock = threading.Lock()
        self.finished: queue.SimpleQueue[tuple[deliveries.Claim, DeliveryResult]] = (
            queue.SimpleQueue()
        )
        self.woken = threading.Event()
        self.failures = 0  # consecutive failed rounds (database unreachable...)
        self.thread = threading.Thread(target=self._run, name="deliverer", daemon=True)
        self.listener = threading.Thread(target=self._listen, name="listener", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.listener.start()

    def join(self) -> None:
        if self.thread.is_alive():
            self.woken.set()
            self.thread.join()
        self.pool.shutdown(wait=True)  # deliveries in flight finish...
        try:
            self.record_finished()  # ...and are recorded
        except Exception:
            log.exception("recording the last deliveries failed; they will be sent again")
        self.sender.close()

    def deliver_due(self) -> bool:
        """One round: records what was sent since the last round, claims what is due (as
        much as there are free threads) and sends it; True when every free thread got a
        delivery, so more may be due right away. Called by `worker --once`, it also
        waits for them to be sent and recorded."""
        taken = 0
        while self.free.acquire(blocking=False):
            taken += 1
        finished = self._take_finished()
        if not taken and not finished:
            return False
        try:
            # One transaction a round, not one to record and one to claim: under load a
            # round handles a few messages, and each transaction costs as much as one.
            # A round that fails leaves what it sent to be sent again (same webhook-id),
            # as a worker that dies does.
            with self.in_flight_lock:
                in_flight = dict(self.in_flight)
            with unit_of_work(self.wiring.session_factory) as session:
                self._record(session, finished)
                claims = (
                    deliveries.claim_due(
                        session, limit=taken, lease=self.policy.lease, in_flight=in_flight
                    )
                    if taken
                    else []
                )
        except Exception:
            for _ in range(taken):
                self.free.release()
            raise
        for _ in range(taken - len(claims)):
            self.free.release()
        claimed = Counter(claim.event.portal_id for claim in claims)
        with self.in_flight_lock:
            self.in_flight.update(claimed)
        futures = [self.pool.submit(self._deliver, claim) for claim in claims]
        if self.thread is not threading.current_thread():
            wait(futures)  # `worker --once`: the round ends when its deliveries do
            self.record_finished()
        # More may be due at once: every free thread got one, or a portal's room filled
        # up in this claim (its other due deliveries took the places of other portals'
        # in the window looked at; the next claim passes it over).
        filled = any(
            in_flight.get(portal, 0) + count >= deliveries.PER_PORTAL_IN_FLIGHT
            for portal, count in claimed.items()
        )
        return bool(claims) and (len(claims) == taken or filled)

    def record_finished(self) -> None:
        """Writes the outcomes of the webhooks sent since the last call. Until then, a
        worker that dies leaves them to be sent again (same webhook-id) when their
        lease runs out: at least once, never lost."""
        finished = self._take_finished()
        if finished:
            with unit_of_work(self.wiring.session_factory) as session:
                self._record(session, finished)

    def _take_finished(self) -> list[tuple[deliveries.Claim, DeliveryResult]]:
        finished = []
        while True:
            try:
                finished.append(self.finished.get_nowait())
            except queue.Empty:
                return finished

    def _record(
        self, session: Session, finished: list[tuple[deliveries.Claim, DeliveryResult]]
    ) -> None:
        delivered = [
            (claim.event.delivery_id, result.status)
            for claim, result in finished
            if result.outcome is Outcome.DELIVERED
        ]
        deliveries.record_delivered(session, delivered=delivered)
        for claim, result in finished:
            if result.outcome is Outcome.DELIVERED:
                continue
            state = deliveries.record_outcome(
                session,
                delivery_id=claim.event.delivery_id,
                url=claim.url,
                outcome=result.outcome,
                status=result.status,
                error=result.error,
                retry_after=None
                if result.retry_after_s is None
                else timedelta(seconds=result.retry_after_s),
                policy=self.policy,
            )
            log.info(
                "webhook %s to portal %d: %s (%s); now %s",
                claim.event.webhook_id,
                claim.event.portal_id,
                result.outcome,
                result.reason_to_log,
                state,
            )

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                more_due = self.deliver_due()
                self.failures = 0
            except Exception as error:
                self.failures += 1
                delay = delivery_backoff_s(self.failures)
                log_failure("claiming deliveries", self.failures, delay, error)
                self.stop.wait(delay)
                continue
            if more_due:
                continue  # rather than wait for a wake-up
            # Nothing more due: sleep until a message arrives (NOTIFY), a thread frees up,
            # or the poll interval passes (retries coming due, a missed notification);
            # then a moment more, for the messages arriving with it.
            self.woken.wait(DELIVERY_POLL_S)
            self.stop.wait(DELIVERY_BATCH_WAIT_S)
            self.woken.clear()

    def _deliver(self, claim: deliveries.Claim) -> None:
        try:
            event = claim.event
            body = event.body()
            headers = signed_headers(
                secrets=claim.secrets,
                webhook_id=event.webhook_id,
                timestamp=int(time.time()),
                body=body,
            )
            result = self.sender.send(
                claim.url,
                headers=headers,
                body=body,
                allow_loopback=self.wiring.settings.webhook_allow_loopback,
            )
            self.finished.put((claim, result))
        except Exception:
            # Not recorded: the lease runs out and the delivery comes due again.
            log.exception("delivering %s failed", claim.event.webhook_id)
        finally:
            with self.in_flight_lock:
                self.in_flight[claim.event.portal_id] -= 1
                if self.in_flight[claim.event.portal_id] <= 0:
                    del self.in_flight[claim.event.portal_id]
            self.free.release()
            self.woken.set()

    def _listen(self) -> None:
        """Wakes the deliverer on NOTIFY; reconnects (with backoff) when the database goes."""
        url = libpq_url(with_connect_timeout(self.wiring.settings.database_url))
        failures = 0
        while not self.stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True) as connection:
                    connection.execute(f"LISTEN {deliveries.NOTIFY_CHANNEL}")
                    failures = 0
                    self.woken.set()  # anything sent while we were not listening
                    while not self.stop.is_set():
                        for _ in connection.notifies(timeout=LISTEN_TIMEOUT_S, stop_after=1):
                            self.woken.set()
            except psycopg.Error:
                failures += 1
                delay = delivery_backoff_s(failures)
                log.warning("listening for new messages failed; again in %.0f s", delay)
                self.stop.wait(delay)
