"""Deliveries of relay events to portals: the outbox the worker drains by webhook, and
the inbox portals poll. An event counts as delivered as soon as either channel
succeeded; it is delivered at least once, always under the same id.

Two events: `message.created`, a message for one of the portal's members, and
`conversation.ended`, sent to the other party's portal when a party blocks a
conversation or is erased by their community (services/relay.py tell_ended). A portal
learns of neither of its own members' doings: members of one portal talking to each
other get no `conversation.ended`.

The worker's side: `claim_due` leases due deliveries (several workers never take the
same one: FOR UPDATE SKIP LOCKED, then a lease), the worker sends the webhooks outside
any transaction, and `record_outcome` writes what happened. A worker killed in between
leaves its deliveries to come due again when their lease runs out.

Nothing is sent to a suspended portal (the operator's cut-off: abuse, a compromised
site). Its pending deliveries are not claimed, so no attempt is counted, and go out
once it is reactivated (at the worker's next poll: a reactivation sends no NOTIFY). The
delivery period runs on meanwhile: a suspension longer than it leaves them failed, in
the inbox the portal reads again once reactivated, as for a portal whose endpoint was
down that long."""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from sqlalchemy import (
    Integer,
    Interval,
    Select,
    Text,
    all_,
    bindparam,
    cast,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Session

from directory.errors import InvalidInput
from directory.models import (
    Conversation,
    Delivery,
    DeliveryChannel,
    DeliveryState,
    Message,
    Portal,
    Role,
)
from directory.webhooks.delivery import Outcome

# NOTIFY channel on which a new delivery wakes the workers (at commit, not before).
NOTIFY_CHANNEL = "directory_deliveries"
EVENT_MESSAGE_CREATED = "message.created"
EVENT_CONVERSATION_ENDED = "conversation.ended"
# How each event's id (webhook-id) begins, before its message's or conversation's uuid.
MESSAGE_EVENT_PREFIX = "msg_"
ENDED_EVENT_PREFIX = "end_"
# The next attempt of a delivery that waits in the inbox only (its portal has no working
# webhook): never, as far as the worker is concerned. Not 'infinity', which Python's
# datetime cannot hold.
PARKED = datetime(9999, 12, 31, tzinfo=UTC)
# A new delivery's first attempt, in SQL, of the recipient's row of `portals` (and
# :parked, PARKED): now when the portal has a working webhook, else parked for its inbox.
FIRST_ATTEMPT_SQL = (
    "CASE WHEN portals.webhook_url IS NOT NULL AND portals.webhook_disabled_at IS NULL"
    " THEN now() ELSE :parked END"
)
# The attempt count is a smallint: it stops at its top rather than overflow, which failed
# the whole claim, every round, and no portal received anything again. An endpoint failing
# long enough under short retries reaches it (every 10 s for 4 days), and so does a
# delivery whose sending fails each time (re-claimed at each lease's end).
MAX_ATTEMPTS_COUNTED = 32767
# Overdue deliveries failed per call: after a long suspension, or a worker away, the
# backlog goes in short transactions (worker.housekeeping), not one past the statement
# timeout at every try.
FAIL_BATCH = 10_000
# Part of each retry delay left to chance, so that deliveries that failed together
# (an endpoint down) do not all come back at once.
RETRY_JITTER = 0.5


@dataclass(frozen=True)
class DeliveryPolicy:
    first_retry: timedelta
    max_retry: timedelta
    give_up_after: timedelta
    lease: timedelta


def wake_deliverers(session: Session) -> None:
    session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})


def resume_webhooks(session: Session, *, portal_id: int) -> int:
    """The portal's webhook works (again): its pending deliveries are due now."""
    result = session.execute(
        update(Delivery)
        .where(Delivery.portal_id == portal_id, Delivery.state == DeliveryState.PENDING)
        .values(next_attempt_at=text("now()"))
    )
    wake_deliverers(session)
    return result.rowcount


def park_webhooks(session: Session, *, portal_id: int) -> None:
    """The portal has no working webhook: its pending deliveries wait in the inbox.

    Those another transaction holds are passed over: a worker's round recording their
    outcome parks them itself (record_outcome reads the webhook gone), and one claiming
    them finds it gone, or reads so when it records. Waited for, they deadlocked two
    workers' rounds recording a 410 from one portal (each holding its delivery, then
    the portal's row), and the round ended lost all its outcomes."""
    held_by_none = (
        select(Delivery.id)
        .where(Delivery.portal_id == portal_id, Delivery.state == DeliveryState.PENDING)
        .with_for_update(skip_locked=True)
    )
    session.execute(
        update(Delivery)
        .where(Delivery.id.in_(held_by_none.scalar_subquery()))
        .values(next_attempt_at=PARKED)
    )


# --- what is delivered ---------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One delivery as the recipient's portal receives it, by webhook or in the inbox."""

    delivery_id: int
    webhook_id: str
    portal_id: int
    state: DeliveryState
    attempts: int
    payload: dict  # {"type", "timestamp", "data"}

    def body(self) -> bytes:
        return orjson.dumps(self.payload)


def webhook_id(message_id: uuid.UUID) -> str:
    """The id a message is delivered under, by webhook and in the inbox alike: stable
    across retries, so a portal can drop what it already has."""
    return f"{MESSAGE_EVENT_PREFIX}{message_id.hex}"


def ended_webhook_id(conversation_id: uuid.UUID) -> str:
    """The id of the event telling that the conversation ended (it ends once)."""
    return f"{ENDED_EVENT_PREFIX}{conversation_id.hex}"


@dataclass(frozen=True)
class EventKey:
    """What an event id names: a message, or a conversation that ended."""

    message_id: uuid.UUID | None = None
    ended_conversation_id: uuid.UUID | None = None


def event_key_of(value: str) -> EventKey | None:
    """The EventKey of an event id, None if `value` is not one."""
    prefix, hex_digits = value[:4], value[4:]
    if prefix not in (MESSAGE_EVENT_PREFIX, ENDED_EVENT_PREFIX) or not _HEX_UUID.fullmatch(
        hex_digits
    ):
        return None
    named = uuid.UUID(hex=hex_digits)
    if prefix == MESSAGE_EVENT_PREFIX:
        return EventKey(message_id=named)
    return EventKey(ended_conversation_id=named)


# Exactly 32 lowercase hex digits, as the ids are written: uuid.UUID(hex=) also takes
# capitals, braces, dashes, "urn:uuid:" and, through int(), underscores, so that several
# spellings would name one event.
_HEX_UUID = re.compile(r"[0-9a-f]{32}")


def _delivery_of(key: EventKey):
    """The condition on deliveries that picks the event of `key`."""
    if key.message_id is not None:
        return Delivery.message_id == key.message_id
    return Delivery.ended_conversation_id == key.ended_conversation_id


# The worker's statements are built once, of table columns: composing them and going
# through the ORM cost more than running them.
_deliveries = Delivery.__table__
_messages = Message.__table__
_conversations = Conversation.__table__
_sender_portal = Portal.__table__.alias("sender_portal")


def _events_of(deliveries_) -> Select:
    """What an Event is made of, for each delivery of `deliveries_` (the table, or the
    claim's CTE of the same columns): a message's, or a conversation's end (the message's
    columns NULL)."""
    return (
        select(
            deliveries_.c.id.label("delivery_id"),
            deliveries_.c.portal_id,
            deliveries_.c.state,
            deliveries_.c.attempts,
            deliveries_.c.created_at.label("event_created_at"),
            _messages.c.id.label("message_id"),
            _messages.c.seq,
            _messages.c.body,
            _messages.c.created_at,
            _messages.c.sender_role,
            _conversations,
            _sender_portal.c.slug.label("sender_slug"),
            _sender_portal.c.name.label("sender_portal_name"),
        )
        .select_from(deliveries_)
        .outerjoin(_messages, _messages.c.id == deliveries_.c.message_id)
        .join(
            _conversations,
            _conversations.c.id
            == func.coalesce(_messages.c.conversation_id, deliveries_.c.ended_conversation_id),
        )
        .outerjoin(_sender_portal, _sender_portal.c.id == _messages.c.sender_portal_id)
        .order_by(deliveries_.c.id)
    )


def _event(row, now: str) -> Event:
    """An Event from a row of _events_of's columns."""
    if row.message_id is None:
        return _ended_event(row, now)
    return _message_event(row, now)


def _message_event(row, now: str) -> Event:
    """What crosses to the recipient's portal: the message, its own member's handle, and
    of the sender only the conversation's alias, the chosen display name and the
    community."""
    sender = row.sender_role
    recipient = sender.other
    to_member, to_alias, _ = _party(row, recipient)
    _, from_alias, from_name = _party(row, sender)
    data = {
        "message": {
            "id": str(row.message_id),
            "seq": row.seq,
            "body": row.body,
            "sent_at": row.created_at.isoformat(),
        },
        "conversation": _conversation_data(row),
        "to": {"role": recipient.value, "member": to_member, "alias": to_alias},
        "from": {
            "role": sender.value,
            "alias": from_alias,
            "name": from_name,
            "portal": {"slug": row.sender_slug, "name": row.sender_portal_name},
        },
    }
    return _delivered_as(row, webhook_id(row.message_id), EVENT_MESSAGE_CREATED, data, now)


def _ended_event(row, now: str) -> Event:
    """What crosses to the portal of the party who did not end the conversation: its own
    member's handle, and why it ended. Who blocked is the other party (a portal is not
    told of its own members' blocks), and an erased party has nothing left to tell."""
    to = Role.INITIATOR if row.portal_id == row.initiator_portal_id else Role.RECIPIENT
    to_member, to_alias, _ = _party(row, to)
    other_member, other_alias, _ = _party(row, to.other)
    data = {
        "conversation": _conversation_data(row),
        "to": {"role": to.value, "member": to_member, "alias": to_alias},
        "ended": {
            # Erased after blocking: the erasure is what the other side reads now.
            "reason": "party_erased" if other_member is None else "blocked",
            "by": {"role": to.other.value, "alias": other_alias},
            "at": row.event_created_at.isoformat(),
        },
    }
    return _delivered_as(row, ended_webhook_id(row.id), EVENT_CONVERSATION_ENDED, data, now)


def _delivered_as(row, event_id: str, event_type: str, data: dict, now: str) -> Event:
    """The Event of the delivery in `row`, under `event_id`, carrying `data`."""
    return Event(
        delivery_id=row.delivery_id,
        webhook_id=event_id,
        portal_id=row.portal_id,
        state=row.state,
        attempts=row.attempts,
        payload={"type": event_type, "timestamp": now, "data": data},
    )


def _conversation_data(row) -> dict:
    return {
        "id": str(row.id),
        "ad": {"id": None if row.ad_id is None else str(row.ad_id), "title": row.ad_title},
    }


def _party(conversation, role: Role) -> tuple[str, str, str | None]:
    """A party's handle, alias and name, from a conversation or a row holding its columns."""
    if role is Role.INITIATOR:
        return (
            conversation.initiator_member,
            conversation.initiator_alias,
            conversation.initiator_name,
        )
    return conversation.recipient_member, conversation.recipient_alias, conversation.recipient_name


# --- the inbox ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboxPage:
    events: list[Event]
    next_since: str | None  # None: nothing more for now


def inbox(session: Session, *, portal_id: int, since: str | None, limit: int) -> InboxPage:
    """What has not reached the portal yet (by either channel), oldest first, after the
    event `since` names. An event stays here until acknowledged or delivered by webhook.

    The cursor is the id of a page's last event, not a position in the directory's
    deliveries: those count every portal's events, and the gaps between a portal's
    own would show how much the others write, and when."""
    after = _position_after(session, portal_id=portal_id, since=since)
    # One statement, so that the page and whether more follow are of one moment: events
    # read apart from their ids could have been purged in between, the whole page too.
    rows = session.execute(
        _INBOX_PAGE, {"portal_id": portal_id, "after": after, "limit": limit + 1}
    ).all()
    now = datetime.now(UTC).isoformat()
    found = [_event(row, now) for row in rows[:limit]]
    next_since = found[-1].webhook_id if len(rows) > limit else None
    return InboxPage(found, next_since)


_INBOX_PAGE = (
    _events_of(_deliveries)
    .where(
        _deliveries.c.portal_id == bindparam("portal_id"),
        _deliveries.c.state != DeliveryState.DELIVERED,
        _deliveries.c.id > bindparam("after"),
    )
    .limit(bindparam("limit"))
)


def acknowledge(session: Session, *, portal_id: int, webhook_ids: list[str]) -> int:
    """Marks the portal's events as delivered (through the inbox); acknowledging again,
    or an event delivered by webhook meanwhile, changes nothing. Returns how many were
    newly acknowledged."""
    message_ids, ended_conversation_ids = [], []
    for index, value in enumerate(webhook_ids):
        key = event_key_of(value)
        if key is None:
            raise InvalidInput(
                f"{value!r} is not an event id of the inbox (msg_ or end_, and 32 hex digits)",
                field=f"ids.{index}",
            )
        if key.message_id is not None:
            message_ids.append(key.message_id)
        else:
            ended_conversation_ids.append(key.ended_conversation_id)
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.portal_id == portal_id,
            or_(
                Delivery.message_id.in_(message_ids),
                Delivery.ended_conversation_id.in_(ended_conversation_ids),
            ),
            Delivery.state != DeliveryState.DELIVERED,
        )
        .values(
            state=DeliveryState.DELIVERED,
            delivered_at=text("now()"),
            delivered_via=DeliveryChannel.INBOX,
        )
    )
    return result.rowcount


def _position_after(session: Session, *, portal_id: int, since: str | None) -> int:
    """The delivery id to read after: that of the portal's event `since`, or 0 (from the
    oldest) when there is none, or when that event is no longer there (purged) or is not
    the portal's, which then says nothing of other portals' events."""
    if since is None:
        return 0
    key = event_key_of(since)
    if key is not None:
        position = session.scalar(
            select(Delivery.id).where(_delivery_of(key), Delivery.portal_id == portal_id)
        )
        return position or 0
    # "d" and a delivery id: next_since before it became an event id, from a portal that
    # was paging while the directory was upgraded. Read from the oldest: reading after the
    # id would let a portal find its events' places among everyone's by trying numbers.
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if since[:1] == "d" and since[1:].isascii() and since[1:].isdigit() and len(since) < 20:
        return 0
    raise InvalidInput(
        "since must be a next_since value from the inbox, or the id of one of its events",
        field="since",
        details={"location": "query"},
    )


# --- the worker's side -----------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    event: Event
    url: str
    secrets: list[str]  # the current secret, and the previous one during a rotation


# One statement: the lease, and all that the webhooks need (their events and where and
# how to sign them). The worker runs it at each wake-up, for as few as one event.
#
# A suspended portal's deliveries are passed over where they stand, not moved: nothing
# has to put them back on reactivation. Each claim reads past those that are due (under
# half a microsecond each); there are few, as nothing new can be written to a suspended
# portal, and none after the delivery period (fail_expired). The suspended portals are
# an array computed once per statement from their small index, as in search.
_NOT_TO_A_SUSPENDED_PORTAL = text(
    "deliveries.portal_id <> ALL(ARRAY(SELECT id FROM portals WHERE status <> 'active'))"
)
#
# Each portal has at most `per_portal` deliveries in flight in a worker (`in_flight`, a
# JSON object of portal id to count, says how many it has; `busy`, the portals at that
# already, are not looked at): a portal whose endpoint takes the full timeouts, with
# many messages due, would otherwise take every thread, and every other portal's
# webhooks would wait behind its. The oldest due are looked at (`window` of them, a few
# times `limit`, locked as the claim goes), and taken oldest first, each portal's up to
# its room; the rest are let go at the end of the transaction.
_candidates = (
    select(_deliveries.c.id, _deliveries.c.portal_id, _deliveries.c.next_attempt_at)
    .where(
        _deliveries.c.state == DeliveryState.PENDING,
        _deliveries.c.next_attempt_at <= func.now(),
        _NOT_TO_A_SUSPENDED_PORTAL,
        _deliveries.c.portal_id != all_(bindparam("busy", type_=ARRAY(Integer))),
    )
    .order_by(_deliveries.c.next_attempt_at)
    .limit(bindparam("window", type_=Integer))
    .with_for_update(skip_locked=True)
    .cte("candidates")
)
_in_flight = cast(
    bindparam("in_flight", type_=JSONB).op("->>")(cast(_candidates.c.portal_id, Text)), Integer
)
_ranked = select(
    _candidates.c.id,
    _candidates.c.next_attempt_at,
    func.row_number()
    .over(
        partition_by=_candidates.c.portal_id,
        order_by=(_candidates.c.next_attempt_at, _candidates.c.id),
    )
    .label("nth"),
    (bindparam("per_portal", type_=Integer) - func.coalesce(_in_flight, 0)).label("room"),
).subquery("ranked")
_due = (
    select(_ranked.c.id)
    .where(_ranked.c.nth <= _ranked.c.room)
    .order_by(_ranked.c.next_attempt_at, _ranked.c.id)
    .limit(bindparam("limit", type_=Integer))
    .cte("due")
)
_claimed = (
    update(_deliveries)
    .where(_deliveries.c.id == _due.c.id)
    .values(
        next_attempt_at=func.now() + bindparam("lease", type_=Interval),
        attempts=func.least(cast(_deliveries.c.attempts, Integer) + 1, MAX_ATTEMPTS_COUNTED),
    )
    .returning(
        _deliveries.c.id,
        _deliveries.c.portal_id,
        _deliveries.c.state,
        _deliveries.c.attempts,
        _deliveries.c.created_at,
        _deliveries.c.message_id,
        _deliveries.c.ended_conversation_id,
    )
    .cte("claimed")
)
_recipient_portal = Portal.__table__.alias("recipient_portal")
_CLAIM = (
    _events_of(_claimed)
    .add_columns(
        _recipient_portal.c.webhook_url,
        _recipient_portal.c.webhook_disabled_at,
        _recipient_portal.c.webhook_secret,
        _recipient_portal.c.webhook_previous_secret,
        _recipient_portal.c.webhook_previous_secret_expires_at,
    )
    .join(_recipient_portal, _recipient_portal.c.id == _claimed.c.portal_id)
)


# How many more due deliveries than it can take a claim looks at, for portals other
# than those whose room it fills.
CLAIM_WINDOW_FACTOR = 4
# A worker's webhooks in flight to one portal at most: a quarter of its threads
# (worker.DELIVERY_THREADS), so that one endpoint that stalls, or a few, leave the others
# theirs. At a tenth of a second an answer, that is still 80 a second to one portal, more
# than a community's members write; a web server's worker pool takes 8 at once.
PER_PORTAL_IN_FLIGHT = 8


def claim_due(
    session: Session,
    *,
    limit: int,
    lease: timedelta,
    per_portal: int = PER_PORTAL_IN_FLIGHT,
    in_flight: Mapping[int, int] | None = None,
) -> list[Claim]:
    """Leases up to `limit` due deliveries to this worker (their next attempt moves past
    the lease, and their attempt count goes up), but none to a suspended portal, and no
    more to a portal than leaves it `per_portal` in flight with those it has in flight
    already (`in_flight`, by portal id), the oldest due first."""
    in_flight = {portal: count for portal, count in (in_flight or {}).items() if count > 0}
    rows = session.execute(
        _CLAIM,
        {
            "limit": limit,
            "window": limit * CLAIM_WINDOW_FACTOR,
            "per_portal": per_portal,
            "in_flight": {str(portal): count for portal, count in in_flight.items()},
            "busy": [portal for portal, count in in_flight.items() if count >= per_portal],
            "lease": lease,
        },
    ).all()
    now = datetime.now(UTC)
    timestamp = now.isoformat()
    claims = []
    parked = set()
    for row in rows:
        if row.webhook_url is None or row.webhook_disabled_at is not None:
            # The webhook went away after the event was queued: inbox only.
            if row.portal_id not in parked:
                park_webhooks(session, portal_id=row.portal_id)
                parked.add(row.portal_id)
            continue
        claims.append(Claim(_event(row, timestamp), row.webhook_url, signing_secrets(row, now)))
    return claims


def signing_secrets(portal, now: datetime) -> list[str]:
    """What signs a portal's webhooks at `now` (a Portal, or a row of its columns): its
    secret, and during a rotation's overlap the previous one too."""
    signing = [portal.webhook_secret]
    if (
        portal.webhook_previous_secret is not None
        and portal.webhook_previous_secret_expires_at is not None
        and portal.webhook_previous_secret_expires_at > now
    ):
        signing.append(portal.webhook_previous_secret)
    return signing


def record_delivered(session: Session, *, delivered: list[tuple[int, int | None]]) -> None:
    """Webhooks that were delivered, as (delivery id, HTTP status): one statement for
    all. A delivery acknowledged in the inbox meanwhile keeps its first success; one
    marked failed meanwhile (its delivery period ended while this last attempt was on
    its way) is delivered after all: the portal's 2xx says so."""
    if not delivered:
        return
    ids, statuses = zip(*delivered, strict=True)
    session.execute(
        text(
            "UPDATE deliveries SET state = 'delivered', delivered_at = now(),"
            " delivered_via = 'webhook', last_status = outcome.status, last_error = NULL"
            " FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS smallint[]))"
            " AS outcome(id, status)"
            " WHERE deliveries.id = outcome.id AND deliveries.state <> 'delivered'"
        ),
        {"ids": list(ids), "statuses": list(statuses)},
    )


def record_outcome(
    session: Session,
    *,
    delivery_id: int,
    url: str,
    outcome: Outcome,
    status: int | None,
    error: str | None,
    retry_after: timedelta | None,
    policy: DeliveryPolicy,
) -> DeliveryState | None:
    """What one attempt, sent to `url`, came to. Returns the delivery's state, or None
    when it no longer exists (purged meanwhile)."""
    delivery = session.scalar(select(Delivery).where(Delivery.id == delivery_id).with_for_update())
    if delivery is None:
        return None
    if delivery.state is DeliveryState.DELIVERED:
        return delivery.state  # acknowledged in the inbox meanwhile: that success stands
    delivery.last_status = status
    delivery.last_error = None if error is None else error[:300]
    if outcome is Outcome.DELIVERED:
        record_delivered(session, delivered=[(delivery_id, status)])
        return DeliveryState.DELIVERED
    if delivery.state is not DeliveryState.PENDING:
        return delivery.state  # failed meanwhile: its delivery period is over
    webhook = session.execute(
        select(Portal.webhook_url, Portal.webhook_disabled_at).where(
            Portal.id == delivery.portal_id
        )
    ).one()
    if webhook.webhook_url != url or webhook.webhook_disabled_at is not None:
        # The portal set another URL (or none) while this attempt was on its way, or its
        # webhook was disabled: that decides the next attempt, due now at the new URL,
        # parked for the inbox otherwise (as the change did to the portal's deliveries
        # that no round held), and the old endpoint's answer, a 410 say, says nothing
        # of the new one.
        working = webhook.webhook_url is not None and webhook.webhook_disabled_at is None
        delivery.next_attempt_at = func.now() if working else PARKED
        return delivery.state
    now = datetime.now(UTC)
    if outcome is Outcome.GONE:
        disable_webhook(
            session,
            portal_id=delivery.portal_id,
            reason=f"the endpoint answered 410 Gone on {now:%Y-%m-%d %H:%M} UTC",
        )
        return delivery.state
    give_up_at = delivery.created_at + policy.give_up_after
    if now >= give_up_at:
        delivery.state = DeliveryState.FAILED
        return delivery.state
    # In float seconds, doublings bounded: a timedelta overflowed after 43 doublings of 10 s,
    # which an endpoint failing for about a day reaches (retried every 30 to 60 min by then).
    doublings = min(max(0, delivery.attempts - 1), 64)
    seconds = min(
        policy.first_retry.total_seconds() * 2.0**doublings, policy.max_retry.total_seconds()
    )
    delay = timedelta(seconds=seconds) * (1 - RETRY_JITTER * random.random())
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.max_retry))
    # The last try comes at the end of the delivery period, not after it.
    delivery.next_attempt_at = min(now + delay, give_up_at)
    return delivery.state


def disable_webhook(session: Session, *, portal_id: int, reason: str) -> None:
    session.execute(
        update(Portal)
        .where(Portal.id == portal_id, Portal.webhook_disabled_at.is_(None))
        .values(webhook_disabled_at=text("now()"), webhook_disabled_reason=reason)
    )
    park_webhooks(session, portal_id=portal_id)


def fail_expired(session: Session, *, give_up_after: timedelta, limit: int = FAIL_BATCH) -> int:
    """Deliveries still pending after the delivery period are marked failed (parked
    inbox-only deliveries, and those held for a suspended portal, included); they stay
    in the inbox. At most `limit` a call, the oldest first; those another transaction
    holds are passed over (a round recording an attempt gives up on them itself, or
    delivers them), for the next call."""
    overdue = (
        select(Delivery.id)
        .where(
            Delivery.state == DeliveryState.PENDING,
            Delivery.created_at < func.now() - give_up_after,
        )
        .order_by(Delivery.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = session.execute(
        update(Delivery)
        .where(Delivery.id.in_(overdue.scalar_subquery()))
        .values(state=DeliveryState.FAILED)
    )
    return result.rowcount
