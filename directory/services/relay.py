"""The contact relay: a member of one portal writes to the owner of an ad, usually of
another portal, and the two talk on without learning who or where the other is.

Each party is shown to the other only as a random alias, made for that conversation
(two conversations of one member cannot be linked by their aliases), with the display
name the member chose and the community (portal) they belong to. Member handles stay
with their own portal. Every message is written in the same transaction as its
delivery (the outbox, see services/deliveries.py), so an accepted message is never lost.

A suspended portal is cut off from the relay: its key is refused, its ads cannot be
contacted, nobody can write in its members' conversations (post_message), and the
worker sends it nothing until it is reactivated (deliveries.claim_due).

Limits bound what reaches a member unasked: a member, a portal, and a portal's members
with any one member open only so many conversations an hour (_check_opening_limits), and
a party sends only so many messages in a row before the other answers (post_message).

A conversation ends when a party blocks it or is erased by their community (or their
community closes): the other party's portal, unless it is the same one, is told once by a
conversation.ended event (tell_ended; delivered as messages are).

A community may block another (services/portal_blocks.py): no conversation opens between
a member of either and an ad of the other's, and nobody writes in one they have, either
way, until it is unblocked. The conversations are not ended (a block can be lifted), and
what was accepted before it is delivered."""

from __future__ import annotations

import dataclasses
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import orjson
from sqlalchemy import TextClause, any_, bindparam, exists, func, insert, or_, select, text
from sqlalchemy.orm import Session

from directory import cursors
from directory.db import (
    IDEMPOTENCY_KEY_LOCK_NAMESPACE,
    OPEN_CONVERSATION_LOCK_NAMESPACE,
    OPENINGS_WITH_ONE_MEMBER_LOCK_NAMESPACE,
    PORTAL_WRITE_LOCK_NAMESPACE,
)
from directory.errors import (
    Conflict,
    DirectoryError,
    Forbidden,
    InvalidInput,
    NotFound,
    TooManyRequests,
)
from directory.models import (
    Ad,
    Conversation,
    Delivery,
    DeliveryState,
    Message,
    Portal,
    PortalBlock,
    PortalStatus,
    Role,
    Visibility,
)
from directory.services import deliveries
from directory.services.portals import AuthenticatedPortal

ALIAS_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # no 0/o, 1/l: read aloud safely
ALIAS_CHARS = 10  # ~50 bits: aliases of one member never repeat in practice
RATE_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class RelayLimits:
    conversations_per_member_per_hour: int
    conversations_per_portal_per_hour: int
    # By one portal's members with one member (an advertiser): a portal making up handles
    # could otherwise send one advertiser as many conversations as the whole portal may open.
    conversations_with_one_member_per_hour: int
    # Messages a party may send in a row before the other answers: with the limits on
    # new conversations, this bounds what reaches a member unasked (the recipient need
    # not block a flood, it stops by itself).
    unanswered_messages: int


def new_alias() -> str:
    return "member-" + "".join(secrets.choice(ALIAS_ALPHABET) for _ in range(ALIAS_CHARS))


# --- opening and writing ---------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    created: bool  # False: an earlier request with the same idempotency key made it
    # As the sender's portal sees them, when the message was made by this request.
    conversation: ConversationView | None = None
    message: MessageView | None = None


def _has_blocked(blocker, blocked):
    """Whether the portal `blocker` has blocked `blocked` (ids, as SQL): one look-up of
    portal_blocks' primary key, inside the statement the relay runs anyway."""
    return exists().where(
        PortalBlock.__table__.c.blocker_portal_id == blocker,
        PortalBlock.__table__.c.blocked_portal_id == blocked,
    )


def _community_blocked(*, by_own: bool, other: str, other_slug: str) -> Conflict:
    """The refusal when a block stands between the two parties' communities; `by_own`:
    the caller's community made it (said first when both did: that one it can lift)."""
    if by_own:
        message = (
            f"your community has blocked {other}'s ({other_slug}); unblocking it lets its "
            "members and yours talk again"
        )
    else:
        message = f"{other}'s community does not accept contact from yours"
    return Conflict(message, code="community_blocked")


# Built once: composing them cost more than running them, on the relay's hot path.
_sender_portal = Portal.__table__.alias("sender_portal")
_CONTACTABLE_ADS = (
    select(
        Ad.__table__.c.id,
        Ad.__table__.c.title,
        Ad.__table__.c.portal_id,
        Ad.__table__.c.member,
        Ad.__table__.c.accepts_contact,
        Portal.__table__.c.slug.label("portal_slug"),
        Portal.__table__.c.name.label("portal_name"),
        # The answer shows both communities.
        _sender_portal.c.slug.label("sender_slug"),
        _sender_portal.c.name.label("sender_portal_name"),
        _has_blocked(_sender_portal.c.id, Ad.__table__.c.portal_id).label("sender_blocked"),
        _has_blocked(Ad.__table__.c.portal_id, _sender_portal.c.id).label("advertiser_blocked"),
    )
    .join(Portal.__table__, Portal.__table__.c.id == Ad.__table__.c.portal_id)
    .join(_sender_portal, _sender_portal.c.id == bindparam("sender_id"))
    .where(
        Ad.__table__.c.id == any_(bindparam("ad_ids")),
        Ad.__table__.c.expires_at > func.now(),
        Portal.__table__.c.status == PortalStatus.ACTIVE,
        or_(
            Ad.__table__.c.visibility == Visibility.PUBLIC,
            Ad.__table__.c.portal_id == bindparam("sender_id"),
        ),
    )
    # Locked in the order the ads' writers lock them (services/ads.py _load_existing: a
    # portal's, by external id): a batch's openings and a write of several of the ads
    # never wait for each other in a circle.
    .order_by(Ad.__table__.c.portal_id, Ad.__table__.c.external_id)
    # Kept from being deleted until the conversation that names it is written (a delete
    # already under way is waited for, then the ad is not found): FOR KEY SHARE, which
    # SQLAlchemy writes for read=True with key_share=True (key_share alone is FOR NO KEY
    # UPDATE, which queued every other community's opening of the ad behind this one,
    # for as long as a batch of 100 takes). A write of the ad waits: its writer locks
    # it FOR UPDATE (services/ads.py _load_existing).
    .with_for_update(read=True, key_share=True, of=Ad.__table__)
)
_OPEN_CONVERSATION = insert(Conversation.__table__).returning(*Conversation.__table__.c)
# An opening whose first message lost its idempotency key to a racing request: the
# conversation, still only this transaction's, goes with it.
_UNOPEN_CONVERSATION = text("DELETE FROM conversations WHERE id = :id")
# Messages written together when one of them lost its key (_write_planned): their
# deliveries go with them (ON DELETE CASCADE).
_UNWRITE_MESSAGES = text("DELETE FROM messages WHERE id = ANY(CAST(:ids AS uuid[]))")

MAX_BATCH_MESSAGES = 100


@dataclass(frozen=True)
class Opening:
    """A member of the sending portal writes to an ad's advertiser: a new conversation."""

    ad_id: uuid.UUID
    member: str
    name: str
    body: str
    idempotency_key: str | None


@dataclass(frozen=True)
class Reply:
    """A message in a conversation, by one of its parties: `member` says which, when both
    are members of the calling portal."""

    conversation_id: uuid.UUID
    member: str
    name: str | None
    body: str
    idempotency_key: str | None


def open_conversation(
    session: Session,
    *,
    sender: AuthenticatedPortal,
    ad_id: uuid.UUID,
    member: str,
    name: str,
    body: str,
    idempotency_key: str | None,
    limits: RelayLimits,
) -> Sent:
    """A member of `sender` writes to the owner of an ad: a new conversation and its first
    message, as a batch of one (post_messages), its refusal raised."""
    return _only(
        post_messages(
            session,
            sender=sender,
            messages=[Opening(ad_id, member, name, body, idempotency_key)],
            limits=limits,
        )
    )


def post_message(
    session: Session,
    *,
    sender: AuthenticatedPortal,
    conversation_id: uuid.UUID,
    member: str,
    name: str | None,
    body: str,
    idempotency_key: str | None,
    limits: RelayLimits,
) -> Sent:
    """A party writes in a conversation: a batch of one (post_messages), its refusal
    raised."""
    return _only(
        post_messages(
            session,
            sender=sender,
            messages=[Reply(conversation_id, member, name, body, idempotency_key)],
            limits=limits,
        )
    )


def _only(outcomes: list[Sent | DirectoryError]) -> Sent:
    (outcome,) = outcomes
    if isinstance(outcome, DirectoryError):
        raise outcome
    return outcome


def post_messages(
    session: Session,
    *,
    sender: AuthenticatedPortal,
    messages: Sequence[Opening | Reply],
    limits: RelayLimits,
) -> list[Sent | DirectoryError]:
    """Messages, in one transaction, in the order given: what each sent (or had sent
    before, with the same idempotency key), or why it was refused. A refused message
    leaves the others as they are: nothing of it is written. Several at once are for a
    portal that relays its members' messages in turns (from a queue, a cron job).

    An opening (Opening) needs an ad the member can see (public, or their own portal's),
    unexpired, that accepts contact, and is counted against the limits on new
    conversations. A message in a conversation (Reply) is refused while either party's
    community blocks the other's, or the other party's portal is suspended: nothing may
    flow to it (the conversation stays readable), and once the party has sent as many
    messages in a row as the limits allow, until the other answers."""
    openings = [message for message in messages if isinstance(message, Opening)]
    replies = [message for message in messages if isinstance(message, Reply)]
    # Every lock first, each kind in one order, the kinds in the order every writer takes
    # them (a member's openings, the ads' portals' write locks, the ads, a portal's
    # openings with one advertiser, conversations, then idempotency keys): two batches,
    # or a batch and an erasure, a closing or a write of the ads, never wait for each
    # other in a circle.
    ads = (
        _lock_openings(session, sender=sender, openings=openings, alone=len(messages) == 1)
        if openings
        else {}
    )
    # Locked: the messages of a conversation are numbered one after the other, and a
    # retry racing its original finds it once the lock is ours. Read with both
    # communities, as the answer shows them: this is the hot path of the relay. Plain
    # rows, not ORM objects: they are only read (the write is APPEND_MESSAGES).
    conversations = (
        {
            row.id: row._asdict()
            for row in session.execute(
                _LOCK_CONVERSATIONS,
                {
                    "conversation_ids": sorted({reply.conversation_id for reply in replies}),
                    "portal_id": sender.id,
                },
            )
        }
        if replies
        else {}
    )
    # Then the idempotency keys, each once, in one order: a message waits for another
    # request's message under the same key (the key's unique index) before it is written,
    # and two batches using two keys in opposite orders (for other messages; a retry of
    # one waits for its original on the locks above) each held one while waiting for
    # the other. With one key, a request waits for nothing once its message is written.
    keys = {message.idempotency_key for message in messages} - {None}
    if len(keys) > 1:
        _lock_keys(session, IDEMPOTENCY_KEY_LOCK_NAMESPACE, [f"{sender.id}:{key}" for key in keys])
    outcomes: list[Sent | DirectoryError | None] = []
    # The messages are written together, in one statement (_write_planned): an opening's
    # conversation at once, its first message with the others. Those planned so far are
    # written first whenever the next item must see them in the table: one uses a key
    # they use (a replay is looked up there).
    planned: list[_Planned] = []
    for message in messages:
        if message.idempotency_key is not None and message.idempotency_key in {
            plan.reply.idempotency_key for plan in planned
        }:
            _write_planned(session, planned, conversations, outcomes, sender=sender, limits=limits)
        try:
            try:
                plan = _plan_item(session, message, ads, conversations, sender, limits)
            except DirectoryError as refusal:
                # A limit counted planned messages (in a row in the conversation) or
                # conversations (openings), one of which may yet lose its key to a
                # racing request and not go in: written first, they leave the table as
                # it will be, and the message is checked against that.
                if not _counted_planned(refusal, message, planned):
                    raise
                _write_planned(
                    session, planned, conversations, outcomes, sender=sender, limits=limits
                )
                plan = _plan_item(session, message, ads, conversations, sender, limits)
        except DirectoryError as refusal:
            outcomes.append(refusal)
            continue
        if isinstance(plan, Sent):  # sent before
            outcomes.append(plan)
            continue
        plan.index = len(outcomes)
        outcomes.append(None)  # once written
        planned.append(plan)
        # The next message in it is planned from the row as this one leaves it.
        conversations[plan.reply.conversation_id] = plan.after
    _write_planned(session, planned, conversations, outcomes, sender=sender, limits=limits)
    return outcomes  # type: ignore[return-value]  # every place was filled


def _plan_item(
    session: Session,
    message: Opening | Reply,
    ads: dict,
    conversations: dict,
    sender: AuthenticatedPortal,
    limits: RelayLimits,
) -> Sent | _Planned:
    """An item of post_messages, its locks taken: sent before, or planned."""
    if isinstance(message, Opening):
        return _open(session, ads.get(message.ad_id), message, sender=sender, limits=limits)
    return _plan(
        session, conversations.get(message.conversation_id), message, sender=sender, limits=limits
    )


def _counted_planned(
    refusal: DirectoryError, message: Opening | Reply, planned: list[_Planned]
) -> bool:
    """Whether a limit that refused `message` counted planned messages, not yet written."""
    if refusal.code == "awaiting_reply":
        return any(plan.reply.conversation_id == message.conversation_id for plan in planned)
    if refusal.code == "too_many_conversations":
        return any(plan.opened for plan in planned)
    return False


# Advisory locks until the transaction ends, in one order: the keys' lock ids (the
# namespace and each key hashed), each once, ascending.
_ADVISORY_XACT_LOCKS = text(
    """
    SELECT pg_advisory_xact_lock(:namespace, lock_id)
    FROM (SELECT DISTINCT hashtext(key) AS lock_id
          FROM unnest(CAST(:keys AS text[])) AS key
          ORDER BY lock_id) AS locks
    """
)


def _lock_openings(
    session: Session, *, sender: AuthenticatedPortal, openings: list[Opening], alone: bool
) -> dict[uuid.UUID, object]:
    """Takes the locks the openings write under, and reads their ads: the contactable
    ones, by id (a row of _CONTACTABLE_ADS). `alone`: the request is this one opening."""
    # Openings by one member wait for each other: a retry racing its original finds it
    # (_open), and two openings cannot both pass the limits.
    _lock_keys(
        session,
        OPEN_CONVERSATION_LOCK_NAMESPACE,
        [_member_key(sender.id, opening.member) for opening in openings],
    )
    ad_ids = sorted({opening.ad_id for opening in openings})
    if not alone:
        # A request that holds an ad while it waits for more (another ad, a
        # conversation) first shares the write lock of the ads' portals, as an ad write
        # does: a replace or a resync deletes the ads it was not given in the order it
        # finds them, and an erasure of more ads than one write takes deletes them write
        # by write (their conversations locked as each goes), not in the order the ads
        # are locked here; each holds that lock alone, so the two never wait for each
        # other in a circle. A single contact holds one ad and waits for nothing after
        # it: it does not queue behind a resync of the advertiser's portal.
        session.execute(
            _SHARE_PORTAL_WRITES, {"namespace": PORTAL_WRITE_LOCK_NAMESPACE, "ad_ids": ad_ids}
        )
    ads = {
        ad.id: ad
        for ad in session.execute(_CONTACTABLE_ADS, {"ad_ids": ad_ids, "sender_id": sender.id})
    }
    # The portal's openings with an advertiser wait for each other too, whichever of its
    # members makes them: the limit with one member is against a portal making up
    # handles, each of which holds only its own lock above, and sending them at once.
    _lock_keys(
        session,
        OPENINGS_WITH_ONE_MEMBER_LOCK_NAMESPACE,
        [f"{sender.id}:{ad.portal_id}:{ad.member}" for ad in ads.values()],
    )
    return ads


# The write locks of the ads' portals (services/ads.py lock_portal_writes), shared, each
# once, by portal id. An ad never moves to another portal: read before its lock, its
# portal is the one it has when locked.
_SHARE_PORTAL_WRITES = text(
    """
    SELECT pg_advisory_xact_lock_shared(:namespace, portal_id)
    FROM (SELECT DISTINCT CAST(portal_id AS integer) AS portal_id
          FROM ads WHERE id = ANY(CAST(:ad_ids AS uuid[]))
          ORDER BY portal_id) AS portals
    """
)


def _lock_keys(session: Session, namespace: int, keys: list[str]) -> None:
    if keys:
        session.execute(_ADVISORY_XACT_LOCKS, {"namespace": namespace, "keys": keys})


def _member_key(portal_id: int, member: str) -> str:
    return f"{portal_id}:{member}"


def _open(
    session: Session, ad, opening: Opening, *, sender: AuthenticatedPortal, limits: RelayLimits
) -> Sent | _Planned:
    """An opening, once its locks are taken and its ad read (`ad`, a row of
    _CONTACTABLE_ADS; None: there is none the member may contact): what was sent before
    under its idempotency key, or its conversation written and its first message planned
    (_write_planned takes the conversation back should the message not go in). Refused
    before anything is written."""
    if opening.idempotency_key is not None:
        replay = _replayed(
            session,
            sender=sender,
            member=opening.member,
            idempotency_key=opening.idempotency_key,
            body=opening.body,
            name=opening.name,
            ad_id=opening.ad_id,
        )
        if replay is not None:
            return replay
    if ad is None:
        raise NotFound(
            f"no ad {opening.ad_id} to contact: it does not exist, has expired or was withdrawn",
            field="ad_id",
            code="ad_not_found",
            details={"location": "path"},
        )
    if not ad.accepts_contact:
        raise Conflict(
            "the advertiser has turned contact off for this ad",
            code="contact_disabled",
        )
    if ad.sender_blocked or ad.advertiser_blocked:
        raise _community_blocked(
            by_own=ad.sender_blocked, other="the advertiser", other_slug=ad.portal_slug
        )
    if ad.portal_id == sender.id and ad.member == opening.member:
        raise InvalidInput("a member cannot contact their own ad", field="member")
    _check_opening_limits(
        session,
        sender=sender,
        member=opening.member,
        recipient_portal_id=ad.portal_id,
        recipient_member=ad.member,
        limits=limits,
    )
    initiator_alias = new_alias()
    recipient_alias = new_alias()
    while recipient_alias == initiator_alias:  # one chance in 2**50
        recipient_alias = new_alias()
    # Opened when its first message was sent, not when the transaction began: the gap
    # would show the recipient how long this opening waited for the member's earlier
    # ones (the lock above), which links the member's conversations.
    now = datetime.now(UTC)
    conversation = session.execute(
        _OPEN_CONVERSATION,
        {
            "id": uuid.uuid4(),
            "created_at": now,
            "ad_id": ad.id,
            "ad_title": ad.title,
            "initiator_portal_id": sender.id,
            "initiator_member": opening.member,
            "initiator_alias": initiator_alias,
            "initiator_name": opening.name,
            "recipient_portal_id": ad.portal_id,
            "recipient_member": ad.member,
            "recipient_alias": recipient_alias,
            "message_count": 0,
        },
    ).one()
    # As _CONVERSATIONS would read it: both portals are active (the sender's key was
    # taken, the ad's portal read so), and no block stands between them (read above).
    opened = {
        **conversation._asdict(),
        "initiator_slug": ad.sender_slug,
        "initiator_portal_name": ad.sender_portal_name,
        "initiator_portal_status": PortalStatus.ACTIVE,
        "recipient_slug": ad.portal_slug,
        "recipient_portal_name": ad.portal_name,
        "recipient_portal_status": PortalStatus.ACTIVE,
        "initiator_blocked": False,
        "recipient_blocked": False,
    }
    first = Reply(conversation.id, opening.member, None, opening.body, opening.idempotency_key)
    return _planned(opened, first, Role.INITIATOR, now, opened=True)


@dataclass
class _Planned:
    """A message in a conversation, checked, to be written (post_messages)."""

    reply: Reply
    role: Role
    before: dict  # the conversation (a row of _CONVERSATIONS as a dict) before it
    after: dict  # ... and after it
    message_id: uuid.UUID
    sent_at: datetime
    opened: bool = False  # an opening's first message: its conversation was made for it
    index: int = -1  # its place among the batch's outcomes


def _plan(
    session: Session,
    conversation: dict | None,
    reply: Reply,
    *,
    sender: AuthenticatedPortal,
    limits: RelayLimits,
) -> Sent | _Planned:
    """A message, once its conversation is locked (a row of _CONVERSATIONS as a dict;
    None: the portal has no such conversation): what was sent before under its
    idempotency key, or the message checked and ready to write. Refused (raised) before
    anything is written."""
    row = None if conversation is None else SimpleNamespace(**conversation)
    role = _role_of(row, sender, reply.member)
    if reply.idempotency_key is not None:
        replay = _replayed(
            session,
            sender=sender,
            member=reply.member,
            idempotency_key=reply.idempotency_key,
            body=reply.body,
            name=reply.name,
            conversation_id=reply.conversation_id,
        )
        if replay is not None:
            return replay
    refusal = _refusal(row, role, limits)
    if refusal is not None:
        raise refusal
    return _planned(conversation, reply, role, datetime.now(UTC))


def _planned(
    conversation: dict, reply: Reply, role: Role, sent_at: datetime, *, opened: bool = False
) -> _Planned:
    """The message `reply` by `role`, sent at `sent_at`, after `conversation` (a row of
    _CONVERSATIONS as a dict): the conversation as it leaves it."""
    in_a_row = conversation["unanswered_messages"] if conversation["last_sender"] is role else 0
    after = {
        **conversation,
        "message_count": conversation["message_count"] + 1,
        "last_message_at": sent_at,
        "last_sender": role,
        "unanswered_messages": in_a_row + 1,
    }
    if reply.name is not None:
        after[f"{role.value}_name"] = reply.name
    return _Planned(reply, role, conversation, after, uuid.uuid4(), sent_at, opened)


def _write_planned(
    session: Session,
    planned: list[_Planned],
    conversations: dict,
    outcomes: list,
    *,
    sender: AuthenticatedPortal,
    limits: RelayLimits,
) -> None:
    """Writes the planned messages and puts what each sent in its place in `outcomes`;
    `planned` is emptied. Several go in one statement (APPEND_MESSAGES): a statement per
    message cost the batch most of its time. Should one lose its idempotency key to a
    racing request, the statement is undone and they go one at a time, each checked again
    against the conversation as the ones before it left it."""
    if len(planned) > 1:
        parameters = _append_messages_parameters(planned, sender)
        if session.execute(APPEND_MESSAGES, parameters).scalar_one() == len(planned):
            for plan in planned:
                outcomes[plan.index] = _sent(plan, sender=sender, limits=limits)
            planned.clear()
            return
        # The others' rows go again, their deliveries with them; the conversations were
        # left as they were. Taken back so, not by a savepoint around every statement:
        # that cost the common case two round trips.
        session.execute(_UNWRITE_MESSAGES, {"ids": parameters["message_ids"]})
    # One at a time, from each conversation as it was before them.
    for plan in reversed(planned):
        conversations[plan.reply.conversation_id] = plan.before
    for plan in planned:
        conversation = conversations[plan.reply.conversation_id]
        try:
            refusal = _refusal(SimpleNamespace(**conversation), plan.role, limits)
            if refusal is not None:
                raise refusal
            again = _planned(conversation, plan.reply, plan.role, plan.sent_at, opened=plan.opened)
            outcomes[plan.index] = _append(session, again, sender=sender, limits=limits)
        except DirectoryError as refusal:
            if plan.opened:  # the conversation, still only this transaction's, goes with it
                session.execute(_UNOPEN_CONVERSATION, {"id": plan.reply.conversation_id})
            outcomes[plan.index] = refusal
            continue
        conversations[plan.reply.conversation_id] = again.after
    planned.clear()


def _append_messages_parameters(planned: list[_Planned], sender: AuthenticatedPortal) -> dict:
    """APPEND_MESSAGES' parameters for the planned messages, in their order."""
    # Each conversation as the last of its messages here leaves it.
    last = {plan.reply.conversation_id: plan.after for plan in planned}
    return {
        "message_ids": [plan.message_id for plan in planned],
        "conversation_ids": [plan.reply.conversation_id for plan in planned],
        "seqs": [plan.after["message_count"] for plan in planned],
        "roles": [plan.role.value for plan in planned],
        "idempotency_keys": [plan.reply.idempotency_key for plan in planned],
        "bodies": [plan.reply.body for plan in planned],
        "sent_at": [plan.sent_at for plan in planned],
        "recipient_portal_ids": [
            plan.before[f"{plan.role.other.value}_portal_id"] for plan in planned
        ],
        "sender_portal_id": sender.id,
        "final_ids": list(last),
        "final_counts": [after["message_count"] for after in last.values()],
        "final_times": [after["last_message_at"] for after in last.values()],
        "final_unanswered": [after["unanswered_messages"] for after in last.values()],
        "final_senders": [after["last_sender"].value for after in last.values()],
        "final_initiator_names": [after["initiator_name"] for after in last.values()],
        "final_recipient_names": [after["recipient_name"] for after in last.values()],
        "parked": deliveries.PARKED,
        "channel": deliveries.NOTIFY_CHANNEL,
    }


def _refusal(conversation, role: Role, limits: RelayLimits) -> Conflict | None:
    """Why the party `role` may not write in the conversation now (post_messages refuses
    with it), or None: from a row of _CONVERSATIONS, which reads the parties' portals and the
    blocks between them with the conversation. A conversation's view shows it to the
    party's portal (`sending`) before its member writes."""
    if _member(conversation, role.other) is None:
        return Conflict(
            "the other party has left the directory (their community erased them); no "
            "more messages can be sent in this conversation",
            code="party_erased",
        )
    if conversation.blocked_at is not None:
        return Conflict(
            "this conversation was blocked by "
            + ("you" if conversation.blocked_by is role else "the other party")
            + "; no more messages can be sent in it",
            code="conversation_blocked",
        )
    # For a message, read with the conversation's lock, as is the status below: a block
    # committed while the message waited for that lock lets it through, as one sent a
    # moment earlier would have been.
    own_block, their_block = _blocks_of(conversation, role)
    if own_block or their_block:
        return _community_blocked(
            by_own=own_block,
            other="the other party",
            other_slug=_portal_slug(conversation, role.other),
        )
    # Read without a lock on the portal (every message would queue on its row): a
    # suspension committed meanwhile lets a message through to the outbox, where the
    # worker holds it like the others (deliveries.claim_due).
    if _portal_status(conversation, role.other) != PortalStatus.ACTIVE:
        return Conflict(
            "the other party's community is suspended from the directory and cannot "
            "receive messages now; the conversation can still be read",
            code="recipient_portal_suspended",
        )
    if _messages_left(conversation, role, limits) == 0:
        return Conflict(
            f"you have sent {conversation.unanswered_messages} messages in a row in this "
            "conversation; the other party must answer before you write again",
            field="member",
            code="awaiting_reply",
        )
    return None


def _messages_left(conversation, role: Role, limits: RelayLimits) -> int:
    """How many more messages the party may send before the other answers."""
    if conversation.last_sender is not role:
        return limits.unanswered_messages
    return max(limits.unanswered_messages - conversation.unanswered_messages, 0)


def _sending(conversation, role: Role, limits: RelayLimits) -> Sending:
    refusal = _refusal(conversation, role, limits)
    return Sending(
        refusal=None if refusal is None else refusal.code,
        messages_left=_messages_left(conversation, role, limits),
    )


def block_conversation(
    session: Session, *, caller: AuthenticatedPortal, conversation_id: uuid.UUID, member: str
) -> None:
    """A party ends the conversation: no one can write in it any more, and the other
    party's portal is told (conversation.ended). Blocking twice changes nothing."""
    conversation = session.scalar(
        select(Conversation)
        .where(Conversation.id == conversation_id, _has_party_portal(caller.id))
        .with_for_update()
    )
    role = _role_of(conversation, caller, member)
    if conversation.blocked_at is None:
        # Ended already when the other party was erased: nothing new to tell.
        ongoing = _member(conversation, role.other) is not None
        conversation.blocked_at = datetime.now(UTC)
        conversation.blocked_by = role
        # Written now, told or not: the answer reads the conversation with a statement of
        # its own (_CONVERSATIONS), which the session does not flush before.
        session.flush()
        if ongoing:
            tell_ended(session, [conversation.id])


def lock_member_openings(session: Session, *, portal_id: int, member: str) -> None:
    """Until the transaction ends, the member opens no other conversation."""
    _lock_keys(session, OPEN_CONVERSATION_LOCK_NAMESPACE, [_member_key(portal_id, member)])


def _role_of(conversation, portal: AuthenticatedPortal, member: str) -> Role:
    """Which party `member` of `portal` is, in a Conversation (or a row of its columns).
    A conversation the portal has no part in does not exist, as far as it may know."""
    roles = [] if conversation is None else _portal_roles(conversation, portal.id)
    if not roles:
        raise NotFound(
            "no such conversation for this portal",
            field="conversation_id",
            code="conversation_not_found",
            details={"location": "path"},
        )
    for role in roles:
        if _member(conversation, role) == member:
            return role
    raise Forbidden(
        "this member is not a party to the conversation", field="member", code="not_a_party"
    )


def _portal_roles(conversation: Conversation, portal_id: int) -> list[Role]:
    roles = []
    if conversation.initiator_portal_id == portal_id:
        roles.append(Role.INITIATOR)
    if conversation.recipient_portal_id == portal_id:
        roles.append(Role.RECIPIENT)
    return roles


def _member(conversation: Conversation, role: Role) -> str | None:
    """The party's handle; None once erased."""
    if role is Role.INITIATOR:
        return conversation.initiator_member
    return conversation.recipient_member


def _portal_status(conversation, role: Role) -> PortalStatus:
    """The status of a party's portal, from a row of _CONVERSATIONS."""
    if role is Role.INITIATOR:
        return conversation.initiator_portal_status
    return conversation.recipient_portal_status


def _portal_slug(conversation, role: Role) -> str:
    """The slug of a party's portal, from a row of _CONVERSATIONS."""
    if role is Role.INITIATOR:
        return conversation.initiator_slug
    return conversation.recipient_slug


def _blocks_of(conversation, role: Role) -> tuple[bool, bool]:
    """Whether the party's community has blocked the other's, and the other's the
    party's, from a row of _CONVERSATIONS."""
    if role is Role.INITIATOR:
        return conversation.initiator_blocked, conversation.recipient_blocked
    return conversation.recipient_blocked, conversation.initiator_blocked


def _has_party_portal(portal_id):
    """In a conversation's locking read: only a party's portal takes the lock, so that
    another portal is never held up by it, and cannot time whether the id exists."""
    return or_(
        Conversation.initiator_portal_id == portal_id,
        Conversation.recipient_portal_id == portal_id,
    )


# The two parties' portals, as joined to a conversation.
initiator_portal = Portal.__table__.alias("initiator_portal")
recipient_portal = Portal.__table__.alias("recipient_portal")


# A conversation with what its view and post_message read of its parties' portals. Built
# once: composing it cost more than running it, on the relay's hot path.
_CONVERSATIONS = (
    select(
        Conversation.__table__,
        initiator_portal.c.slug.label("initiator_slug"),
        initiator_portal.c.name.label("initiator_portal_name"),
        initiator_portal.c.status.label("initiator_portal_status"),
        recipient_portal.c.slug.label("recipient_slug"),
        recipient_portal.c.name.label("recipient_portal_name"),
        recipient_portal.c.status.label("recipient_portal_status"),
        # Whether each party's community has blocked the other's.
        _has_blocked(initiator_portal.c.id, recipient_portal.c.id).label("initiator_blocked"),
        _has_blocked(recipient_portal.c.id, initiator_portal.c.id).label("recipient_blocked"),
    )
    .join(
        initiator_portal,
        initiator_portal.c.id == Conversation.__table__.c.initiator_portal_id,
    )
    .join(
        recipient_portal,
        recipient_portal.c.id == Conversation.__table__.c.recipient_portal_id,
    )
)
_LOCK_CONVERSATIONS = (
    _CONVERSATIONS.where(
        Conversation.__table__.c.id == any_(bindparam("conversation_ids")),
        _has_party_portal(bindparam("portal_id")),
    )
    .order_by(Conversation.__table__.c.id)
    .with_for_update(of=Conversation.__table__)
)


# One statement for one message or several: each its row, its delivery (due now when the
# recipient's portal has a working webhook, else parked for the inbox) and its place
# (`seqs`, numbered by post_messages from the locked conversations); each conversation
# as its last message leaves it (`final_*`); and the NOTIFY that wakes the workers at
# commit. A statement per message cost a batch most of its time (and ten ORM round
# trips made a single message four times slower). The deliveries are made in the
# messages' order: a portal receives them so. Returns how many messages went in.
#
# An idempotency key taken by a request that committed while this one waited on it (the
# unique constraint decides, not the look-up before) inserts no message: the
# conversations are then left as they were, and a single message has written nothing
# (a batch goes on with its other messages, post_messages); of several, the others' rows
# and deliveries are written, and _write_planned undoes the statement.
APPEND_MESSAGES = text(
    f"""
    WITH planned AS (
        SELECT * FROM unnest(
            CAST(:message_ids AS uuid[]), CAST(:conversation_ids AS uuid[]),
            CAST(:seqs AS integer[]), CAST(:roles AS text[]),
            CAST(:idempotency_keys AS text[]), CAST(:bodies AS text[]),
            CAST(:sent_at AS timestamptz[]), CAST(:recipient_portal_ids AS integer[])
        ) WITH ORDINALITY AS planned(message_id, conversation_id, seq, role,
                                     idempotency_key, body, sent_at, recipient_portal_id,
                                     place)
    ), message AS (
        INSERT INTO messages (id, conversation_id, seq, sender_role, sender_portal_id,
                              idempotency_key, body, created_at)
        SELECT message_id, conversation_id, seq, role, :sender_portal_id, idempotency_key,
               body, sent_at
        FROM planned ORDER BY place
        ON CONFLICT ON CONSTRAINT uq_messages_sender_portal_id_idempotency_key DO NOTHING
        RETURNING id
    ), conversation AS (
        UPDATE conversations SET
            message_count = final.message_count,
            last_message_at = final.last_message_at,
            unanswered_messages = final.unanswered_messages,
            last_sender = final.last_sender,
            initiator_name = final.initiator_name,
            recipient_name = final.recipient_name
        FROM unnest(
            CAST(:final_ids AS uuid[]), CAST(:final_counts AS integer[]),
            CAST(:final_times AS timestamptz[]), CAST(:final_unanswered AS integer[]),
            CAST(:final_senders AS text[]), CAST(:final_initiator_names AS text[]),
            CAST(:final_recipient_names AS text[])
        ) AS final(id, message_count, last_message_at, unanswered_messages, last_sender,
                   initiator_name, recipient_name)
        WHERE conversations.id = final.id
          AND (SELECT count(*) FROM message) = cardinality(CAST(:message_ids AS uuid[]))
    ), delivery AS (
        INSERT INTO deliveries (message_id, portal_id, next_attempt_at)
        SELECT message.id, portals.id, {deliveries.FIRST_ATTEMPT_SQL}
        FROM message
        JOIN planned ON planned.message_id = message.id
        JOIN portals ON portals.id = planned.recipient_portal_id
        ORDER BY planned.place
    )
    SELECT (SELECT count(*) FROM message) FROM pg_notify(:channel, '')
    """
)


def _append(
    session: Session, plan: _Planned, *, sender: AuthenticatedPortal, limits: RelayLimits
) -> Sent:
    """One message and its delivery to the other party's portal, in this transaction:
    what it sent."""
    if not session.execute(APPEND_MESSAGES, _append_messages_parameters([plan], sender)).scalar():
        # The key went to a request that raced this one. Not to this same message: a
        # retry of it (the same member, in the same conversation or opening the same
        # ad) waits for its original on the conversation's row lock or the member's
        # opening lock, and finds it as a replay before getting here. The statement
        # wrote nothing; an opening takes its conversation back (_write_planned).
        raise _key_reused()
    return _sent(plan, sender=sender, limits=limits)


def _sent(plan: _Planned, *, sender: AuthenticatedPortal, limits: RelayLimits) -> Sent:
    """What a message made now sent: the message, and the conversation as it left it."""
    message = MessageView(
        id=plan.message_id,
        seq=plan.after["message_count"],
        sender=plan.role,
        body=plan.reply.body,
        sent_at=plan.sent_at,
        delivery=_senders_delivery_view(DeliveryState.PENDING, None),
    )
    view = _conversation_view(SimpleNamespace(**plan.after), sender.id, limits)
    return Sent(view.id, plan.message_id, created=True, conversation=view, message=message)


def _replayed(
    session: Session,
    *,
    sender: AuthenticatedPortal,
    member: str,
    idempotency_key: str,
    body: str,
    name: str | None,
    ad_id: uuid.UUID | None = None,
    conversation_id: uuid.UUID | None = None,
) -> Sent | None:
    """The message an earlier request with this key made, if any; a key used for a
    different message (or by another of the portal's members, or under another name) is
    an error rather than a silent loss of the new one. The name is compared with the
    party's name now: a message sends one only to set it."""
    row = session.execute(
        select(
            Message.id,
            Message.conversation_id,
            Message.body,
            Message.seq,
            Message.sender_role,
            Conversation.ad_id,
            Conversation.initiator_member,
            Conversation.recipient_member,
            Conversation.initiator_name,
            Conversation.recipient_name,
        )
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(Message.sender_portal_id == sender.id, Message.idempotency_key == idempotency_key)
    ).one_or_none()
    if row is None:
        return None
    by_initiator = row.sender_role is Role.INITIATOR
    sent_by = row.initiator_member if by_initiator else row.recipient_member
    named = row.initiator_name if by_initiator else row.recipient_name
    same = (
        row.body == body
        and sent_by == member
        and (name is None or name == named)
        and (
            (conversation_id is not None and row.conversation_id == conversation_id)
            # An ad deleted since leaves its conversation without an id to compare: the
            # same member's same words under the same key are this message, sent.
            or (ad_id is not None and row.seq == 1 and row.ad_id in (ad_id, None))
        )
    )
    if not same:
        raise _key_reused()
    return Sent(row.conversation_id, row.id, created=False)


def _key_reused() -> Conflict:
    return Conflict(
        "this idempotency_key was already used for a different message",
        field="idempotency_key",
        code="idempotency_key_reused",
    )


# Each count stops at its limit: the work is bounded by the limit, not by how many
# conversations a busy portal opened in the hour. Served by the three "opened" indexes.
_RECENT_OPENINGS = text(
    """
    SELECT
      (SELECT count(*) FROM (
         SELECT 1 FROM conversations
         WHERE initiator_portal_id = :portal_id AND initiator_member = :member
           AND created_at > :since
         LIMIT :member_limit) AS by_member),
      (SELECT count(*) FROM (
         SELECT 1 FROM conversations
         WHERE initiator_portal_id = :portal_id AND created_at > :since
         LIMIT :portal_limit) AS by_portal),
      (SELECT count(*) FROM (
         SELECT 1 FROM conversations
         WHERE recipient_portal_id = :recipient_portal_id
           AND recipient_member = :recipient_member
           AND initiator_portal_id = :portal_id AND created_at > :since
         LIMIT :recipient_limit) AS with_recipient),
      -- The advertiser blocked a conversation with this member, either way round: no
      -- new one opens between them (each branch an index scan of the recipient's).
      EXISTS (
        SELECT 1 FROM conversations
        WHERE recipient_portal_id = :recipient_portal_id
          AND recipient_member = :recipient_member
          AND initiator_portal_id = :portal_id AND initiator_member = :member
          AND blocked_by = 'recipient'
        UNION ALL
        SELECT 1 FROM conversations
        WHERE recipient_portal_id = :portal_id AND recipient_member = :member
          AND initiator_portal_id = :recipient_portal_id
          AND initiator_member = :recipient_member
          AND blocked_by = 'initiator') AS blocked_by_recipient
    """
)


def _check_opening_limits(
    session: Session,
    *,
    sender: AuthenticatedPortal,
    member: str,
    recipient_portal_id: int,
    recipient_member: str,
    limits: RelayLimits,
) -> None:
    # Called under the member's opening lock and the portal's with the advertiser
    # (_lock_openings): exact for the member and with the advertiser; the portal's
    # count may let concurrent openings by several members all through.
    since = datetime.now(UTC) - RATE_WINDOW
    by_member_count, by_portal_count, with_recipient_count, blocked = session.execute(
        _RECENT_OPENINGS,
        {
            "portal_id": sender.id,
            "member": member,
            "recipient_portal_id": recipient_portal_id,
            "recipient_member": recipient_member,
            "since": since,
            "member_limit": limits.conversations_per_member_per_hour,
            "portal_limit": limits.conversations_per_portal_per_hour,
            "recipient_limit": limits.conversations_with_one_member_per_hour,
        },
    ).one()
    if blocked:
        # Blocking a conversation would hold back nobody if they could open another at
        # once, under a new alias. Saying so tells the member's portal that this ad's
        # advertiser is the one who blocked them, as a limit with one member tells
        # that two ads share an advertiser: less than letting them write again.
        raise Conflict(
            "the advertiser blocked a conversation with this member: no new one opens between them",
            field="member",
            code="blocked_by_advertiser",
        )
    opened_by_sender = (Conversation.initiator_portal_id == sender.id) & (
        Conversation.created_at > since
    )
    if by_member_count >= limits.conversations_per_member_per_hour:
        raise _too_many_openings(
            session,
            f"this member opened {by_member_count} conversations in the last hour, the most "
            "allowed; they can write in the ones they have",
            opened_by_sender,
            Conversation.initiator_member == member,
            field="member",
        )
    if by_portal_count >= limits.conversations_per_portal_per_hour:
        raise _too_many_openings(
            session,
            f"this portal's members opened {by_portal_count} conversations in the last hour, "
            "the most allowed for one portal",
            opened_by_sender,
        )
    if with_recipient_count >= limits.conversations_with_one_member_per_hour:
        raise _too_many_openings(
            session,
            f"this portal's members opened {with_recipient_count} conversations with this "
            "advertiser in the last hour, the most allowed with one member",
            opened_by_sender,
            Conversation.recipient_portal_id == recipient_portal_id,
            Conversation.recipient_member == recipient_member,
        )


def _too_many_openings(
    session: Session, message: str, *counted, field: str | None = None
) -> TooManyRequests:
    """The refusal of an opening past a limit, which lifts when the oldest of the
    conversations it counted (`counted`: their conditions) leaves the hour."""
    oldest = session.scalar(select(func.min(Conversation.created_at)).where(*counted))
    return TooManyRequests(
        message, field=field, code="too_many_conversations", retry_after_s=_retry_after(oldest)
    )


def _retry_after(oldest: datetime | None) -> int:
    if oldest is None:
        return 1
    wait = oldest + RATE_WINDOW - datetime.now(UTC)
    return max(1, int(wait.total_seconds()) + 1)


# --- reading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PortalRef:
    slug: str
    name: str


@dataclass(frozen=True)
class Sending:
    """Whether a party may write in the conversation now, as post_message would answer."""

    refusal: str | None  # the code post_message would refuse with; None: it may write
    messages_left: int  # in a row, before the other party answers

    @property
    def allowed(self) -> bool:
        return self.refusal is None


@dataclass(frozen=True)
class PartyView:
    role: Role
    alias: str
    name: str | None
    portal: PortalRef
    member: str | None  # only for the party's own portal
    portal_id: int  # for the directory's own use: never shown
    erased: bool = False  # by their portal: no handle, no name, no messages any more
    sending: Sending | None = None  # only for the party's own portal, while not erased


@dataclass(frozen=True)
class DeliveryView:
    state: DeliveryState
    # Only for the recipient's portal: they are about how it takes its messages.
    attempts: int | None
    delivered_at: datetime | None  # to the minute for the sender's portal
    delivered_via: str | None
    last_error: str | None


@dataclass(frozen=True)
class MessageView:
    id: uuid.UUID
    seq: int
    sender: Role
    body: str
    sent_at: datetime
    delivery: DeliveryView


@dataclass(frozen=True)
class ConversationView:
    id: uuid.UUID
    ad_id: uuid.UUID | None
    ad_title: str | None  # None once the advertiser was erased
    your_roles: list[Role]
    initiator: PartyView
    recipient: PartyView
    blocked_at: datetime | None
    blocked_by: Role | None
    message_count: int
    created_at: datetime
    last_message_at: datetime
    messages: list[MessageView] | None = None
    next_after: int | None = None  # the seq to ask for the following messages after


def get_conversation(
    session: Session,
    *,
    viewer: AuthenticatedPortal,
    conversation_id: uuid.UUID,
    limits: RelayLimits,
    after: int = 0,
    limit: int = 50,
) -> ConversationView:
    """The conversation as `viewer` (one of its parties' portals) may see it, with its
    messages after seq `after`."""
    summary = get_conversation_summary(
        session, viewer=viewer, conversation_id=conversation_id, limits=limits
    )
    rows = session.execute(
        select(Message, Delivery)
        .join(Delivery, Delivery.message_id == Message.id)
        .where(Message.conversation_id == conversation_id, Message.seq > after)
        .order_by(Message.seq)
        .limit(limit + 1)
    ).all()
    messages = [_message_view(message, delivery, viewer.id) for message, delivery in rows[:limit]]
    return dataclasses.replace(
        summary,
        messages=messages,
        next_after=messages[-1].seq if len(rows) > limit else None,
    )


def get_conversation_summary(
    session: Session,
    *,
    viewer: AuthenticatedPortal,
    conversation_id: uuid.UUID,
    limits: RelayLimits,
) -> ConversationView:
    """The conversation without its messages."""
    conversation = session.execute(
        _CONVERSATIONS.where(
            Conversation.__table__.c.id == conversation_id, _has_party_portal(viewer.id)
        )
    ).one_or_none()
    if conversation is None:
        raise NotFound(
            "no such conversation for this portal",
            field="conversation_id",
            code="conversation_not_found",
            details={"location": "path"},
        )
    return _conversation_view(conversation, viewer.id, limits)


def get_message(
    session: Session, *, viewer: AuthenticatedPortal, message_id: uuid.UUID
) -> MessageView:
    row = session.execute(
        select(Message, Delivery, Conversation)
        .join(Delivery, Delivery.message_id == Message.id)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(Message.id == message_id)
    ).one_or_none()
    if row is None or not _portal_roles(row.Conversation, viewer.id):
        raise NotFound("no such message for this portal", field="message_id")
    return _message_view(row.Message, row.Delivery, viewer.id)


def _message_view(message: Message, delivery: Delivery, viewer_id: int) -> MessageView:
    return MessageView(
        id=message.id,
        seq=message.seq,
        sender=message.sender_role,
        body=message.body,
        sent_at=message.created_at,
        delivery=_delivery_view(delivery, viewer_is_recipient=delivery.portal_id == viewer_id),
    )


@dataclass(frozen=True)
class ConversationPage:
    conversations: list[ConversationView]
    next_cursor: str | None


def list_conversations(
    session: Session,
    *,
    viewer: AuthenticatedPortal,
    member: str | None,
    cursor: str | None,
    limit: int,
    limits: RelayLimits,
    ad_id: uuid.UUID | None = None,
) -> ConversationPage:
    """The viewer's conversations (or one member's, or those about one ad), newest
    activity first."""
    involved = _has_party_portal(viewer.id)
    if member is not None:
        involved = or_(
            (Conversation.initiator_portal_id == viewer.id)
            & (Conversation.initiator_member == member),
            (Conversation.recipient_portal_id == viewer.id)
            & (Conversation.recipient_member == member),
        )
    query = _CONVERSATIONS.where(involved)
    if ad_id is not None:
        query = query.where(Conversation.ad_id == ad_id)
    if cursor is not None:
        last_at, last_id = _decode_cursor(cursor)
        query = query.where(
            (Conversation.last_message_at < last_at)
            | ((Conversation.last_message_at == last_at) & (Conversation.id < last_id))
        )
    rows = session.execute(
        query.order_by(Conversation.last_message_at.desc(), Conversation.id.desc()).limit(limit + 1)
    ).all()
    page = rows[:limit]
    views = [_conversation_view(row, viewer.id, limits) for row in page]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = _encode_cursor(page[-1].last_message_at, page[-1].id)
    return ConversationPage(views, next_cursor)


CURSOR_PREFIX = "c1."


def _encode_cursor(at: datetime, conversation_id: uuid.UUID) -> str:
    return cursors.encode(CURSOR_PREFIX, orjson.dumps([at.isoformat(), str(conversation_id)]))


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        at, conversation_id = orjson.loads(cursors.decode(CURSOR_PREFIX, cursor))
        if not isinstance(conversation_id, str):
            raise TypeError
        return cursors.aware_time(at), uuid.UUID(conversation_id)
    except (ValueError, TypeError):  # orjson.JSONDecodeError is a ValueError
        raise InvalidInput(
            "cursor must be a next_cursor value from this list, unchanged",
            field="cursor",
            code="invalid_cursor",
            details={"location": "query"},
        ) from None


def _conversation_view(conversation, viewer_id: int, limits: RelayLimits) -> ConversationView:
    """As the portal `viewer_id` sees it, from a row of _CONVERSATIONS (or an object with
    its columns as attributes)."""

    def party(role: Role) -> PartyView:
        if role is Role.INITIATOR:
            portal_id, alias, name, member, portal = (
                conversation.initiator_portal_id,
                conversation.initiator_alias,
                conversation.initiator_name,
                conversation.initiator_member,
                PortalRef(conversation.initiator_slug, conversation.initiator_portal_name),
            )
        else:
            portal_id, alias, name, member, portal = (
                conversation.recipient_portal_id,
                conversation.recipient_alias,
                conversation.recipient_name,
                conversation.recipient_member,
                PortalRef(conversation.recipient_slug, conversation.recipient_portal_name),
            )
        own = portal_id == viewer_id
        return PartyView(
            role=role,
            alias=alias,
            name=name,
            portal=portal,
            member=member if own else None,
            portal_id=portal_id,
            erased=member is None,
            sending=_sending(conversation, role, limits) if own and member is not None else None,
        )

    return ConversationView(
        id=conversation.id,
        ad_id=conversation.ad_id,
        ad_title=conversation.ad_title,
        your_roles=_portal_roles(conversation, viewer_id),
        initiator=party(Role.INITIATOR),
        recipient=party(Role.RECIPIENT),
        blocked_at=conversation.blocked_at,
        blocked_by=conversation.blocked_by,
        message_count=conversation.message_count,
        created_at=conversation.created_at,
        last_message_at=conversation.last_message_at,
    )


def _delivery_view(delivery: Delivery, *, viewer_is_recipient: bool) -> DeliveryView:
    if not viewer_is_recipient:
        return _senders_delivery_view(delivery.state, delivery.delivered_at)
    return DeliveryView(
        state=delivery.state,
        attempts=delivery.attempts,
        delivered_at=delivery.delivered_at,
        delivered_via=None if delivery.delivered_via is None else delivery.delivered_via.value,
        last_error=delivery.last_error,
    )


def _senders_delivery_view(state: DeliveryState, delivered_at: datetime | None) -> DeliveryView:
    """The sender's portal learns whether its message arrived, and about when: not how the
    other community takes its messages (webhook or inbox), how often its endpoint failed,
    nor the exact instant, which the message shares with all that the other portal took
    in the same go (one acknowledgement, one worker round), whoever they were from."""
    return DeliveryView(
        state=state,
        attempts=None,
        delivered_at=None
        if delivered_at is None
        else delivered_at.replace(second=0, microsecond=0),
        delivered_via=None,
        last_error=None,
    )


# --- erasure ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ErasedConversations:
    conversations: int
    messages: int


def _erase_parties(party: str) -> TextClause:
    """The statement that empties, in each conversation, the side of the parties that
    `party` (SQL of `{role}_portal_id`, `{role}_member`) picks, under the conversation's
    row lock: a message being written in it waits, then finds the party gone. The SET
    expressions read the row as it was, so both sides are decided before either changes."""
    as_initiator = party.format(role="initiator")
    as_recipient = party.format(role="recipient")
    return text(
        f"""
        UPDATE conversations SET
            initiator_member = CASE WHEN as_initiator THEN NULL ELSE initiator_member END,
            initiator_name = CASE WHEN as_initiator THEN NULL ELSE initiator_name END,
            recipient_member = CASE WHEN as_recipient THEN NULL ELSE recipient_member END,
            recipient_name = CASE WHEN as_recipient THEN NULL ELSE recipient_name END,
            ad_title = CASE WHEN as_recipient THEN NULL ELSE ad_title END,
            -- Their ad is deleted with them, unless it was given to another member since:
            -- the husk points at nothing then either.
            ad_id = CASE WHEN as_recipient THEN NULL ELSE ad_id END
        FROM (SELECT id, {as_initiator} AS as_initiator, {as_recipient} AS as_recipient,
                     -- Whether this erasure ends it: it was not over already.
                     blocked_at IS NULL AND initiator_member IS NOT NULL
                         AND recipient_member IS NOT NULL AS ongoing
              FROM conversations
              WHERE ({as_initiator}) OR ({as_recipient})
              ORDER BY id  -- locked in one order by every erasure: none deadlocks another
              FOR UPDATE) AS party
        WHERE conversations.id = party.id
        RETURNING conversations.id, party.ongoing
        """
    )


_ERASE_MEMBER = _erase_parties("{role}_portal_id = :portal_id AND {role}_member = :member")
# Every member of the portal not erased yet.
_ERASE_PORTAL = _erase_parties("{role}_portal_id = :portal_id AND {role}_member IS NOT NULL")


# Every conversation of a portal's member, or of all its members, locked in id order (the
# order post_messages locks them in), with those about the member's ads: an ad may have
# been given to them since its conversations opened.
_LOCK_MEMBER_CONVERSATIONS = text(
    """
    SELECT id FROM conversations
    WHERE (initiator_portal_id = :portal_id AND initiator_member = :member)
       OR (recipient_portal_id = :portal_id AND recipient_member = :member)
       OR ad_id IN (SELECT id FROM ads WHERE portal_id = :portal_id AND member = :member)
    ORDER BY id
    FOR UPDATE
    """
)
_LOCK_PORTAL_CONVERSATIONS = text(
    """
    SELECT id FROM conversations
    WHERE initiator_portal_id = :portal_id OR recipient_portal_id = :portal_id
    ORDER BY id
    FOR UPDATE
    """
)


def lock_conversations_of(session: Session, *, portal_id: int, member: str | None = None) -> None:
    """Locks the conversations of `member` of the portal (None: of all its members), for
    an erasure or a closing, before it deletes their ads. Each ad deleted locks its
    conversations as it goes (their ad_id is set to null), ads a write of 1,000 at a
    time and in no set order: a batch writing in two of them (post_messages, in id
    order) and the deleter would wait for each other in a circle."""
    if member is None:
        session.execute(_LOCK_PORTAL_CONVERSATIONS, {"portal_id": portal_id})
    else:
        session.execute(_LOCK_MEMBER_CONVERSATIONS, {"portal_id": portal_id, "member": member})


def erase_member_conversations(
    session: Session, *, portal_id: int, member: str
) -> ErasedConversations:
    """The member of `portal_id` leaves every conversation they are a party to: its
    messages go, both parties' (with their deliveries, still pending or not), and the
    member's handle and name, and the ad's title when they were its advertiser. The
    conversation stays with its aliases, so that the other party's portal reads that it
    ended (party_erased), and the limits on new conversations still count it."""
    # An opening by the member under way is erased with the rest; one after is new.
    lock_member_openings(session, portal_id=portal_id, member=member)
    erased = session.execute(_ERASE_MEMBER, {"portal_id": portal_id, "member": member}).all()
    return _after_erasing(session, portal_id=portal_id, erased=erased)


def erase_portal_conversations(session: Session, *, portal_id: int) -> ErasedConversations:
    """Every member of `portal_id` leaves their conversations, as erase_member_conversations
    says. For a portal that can no longer write (closed): no opening can be under way."""
    erased = session.execute(_ERASE_PORTAL, {"portal_id": portal_id}).all()
    return _after_erasing(session, portal_id=portal_id, erased=erased)


def _after_erasing(session: Session, *, portal_id: int, erased) -> ErasedConversations:
    """The conversations' messages go, and so does any news of their end still owed to
    the erasing portal (it names the member); the other party's portal is told of the
    end, unless the conversation was over already."""
    conversation_ids = [row.id for row in erased]
    messages = _delete_messages(session, conversation_ids)
    if conversation_ids:
        session.execute(_DELETE_ENDS_OWED, {"ids": conversation_ids, "portal_id": portal_id})
    tell_ended(session, [row.id for row in erased if row.ongoing])
    return ErasedConversations(len(conversation_ids), messages)


# The ids as one array, not one parameter each: a statement takes at most 65,535, fewer
# than the conversations of a popular advertiser's year (or of a closing portal), and the
# erasure failed every time. A statement of its own after the conversations' update, not
# a CTE of it: a message committed while the update waited on its conversation's lock is
# seen only by a later statement.
_DELETE_MESSAGES = text("DELETE FROM messages WHERE conversation_id = ANY(CAST(:ids AS uuid[]))")


def _delete_messages(session: Session, conversation_ids: list[uuid.UUID]) -> int:
    if not conversation_ids:
        return 0
    return session.execute(_DELETE_MESSAGES, {"ids": conversation_ids}).rowcount


_DELETE_ENDS_OWED = text(
    "DELETE FROM deliveries"
    " WHERE ended_conversation_id = ANY(CAST(:ids AS uuid[])) AND portal_id = :portal_id"
)


# --- the news that a conversation ended -----------------------------------------------------

# The end of each conversation, to the portal of the party who neither ended it (blocked)
# nor was erased, in the outbox: due now when that portal has a working webhook, else
# parked for its inbox, as a message's delivery (APPEND_MESSAGES). None between members of
# one portal: it ended the conversation itself. ON CONFLICT: a conversation ends once.
_TELL_ENDED = text(
    f"""
    INSERT INTO deliveries (ended_conversation_id, portal_id, next_attempt_at)
    SELECT conversations.id, portals.id, {deliveries.FIRST_ATTEMPT_SQL}
    FROM conversations
    JOIN portals ON portals.id = CASE
        WHEN conversations.initiator_member IS NULL OR conversations.blocked_by = 'initiator'
        THEN conversations.recipient_portal_id ELSE conversations.initiator_portal_id END
    WHERE conversations.id = ANY(CAST(:ids AS uuid[]))
      AND conversations.initiator_portal_id <> conversations.recipient_portal_id
    ON CONFLICT (ended_conversation_id) DO NOTHING
    """
)


def tell_ended(session: Session, conversation_ids: list[uuid.UUID]) -> None:
    """The other party's portal of each conversation, which has just ended (blocked, or
    a party erased), receives a conversation.ended event (services/deliveries.py)."""
    if not conversation_ids:
        return
    inserted = session.execute(
        _TELL_ENDED, {"ids": conversation_ids, "parked": deliveries.PARKED}
    ).rowcount
    if inserted:
        deliveries.wake_deliverers(session)


# --- retention ---------------------------------------------------------------------------


# Messages (and emptied conversations) purged per call: after the retention is shortened
# on a large relay, the backlog goes in many short transactions, rather than in one that
# could outlast the statement timeout and be rolled back at every try.
PURGE_BATCH = 5_000


@dataclass(frozen=True)
class PurgeReport:
    messages: int
    conversations: int
    more: bool = False  # a batch was full: more may be due at once

    def __add__(self, other: PurgeReport) -> PurgeReport:
        return PurgeReport(
            self.messages + other.messages, self.conversations + other.conversations, other.more
        )


def purge_old_messages(
    session: Session, *, retention: timedelta, limit: int = PURGE_BATCH
) -> PurgeReport:
    """Messages older than the retention period go (their deliveries with them), except
    those still being delivered: the retention may be shorter than the delivery period.
    Conversations go with their last message, once no activity is newer and the news of
    their end, if any, is no longer being delivered, but not one blocked while both of
    its parties remain (the block would go with it). At most `limit`
    of each a call, oldest first."""
    cutoff = datetime.now(UTC) - retention
    still_delivering = (
        select(Delivery.id)
        .where(Delivery.message_id == Message.id, Delivery.state == DeliveryState.PENDING)
        .exists()
    )
    oldest_messages = (
        select(Message.id)
        .where(Message.created_at < cutoff, ~still_delivering)
        .order_by(Message.created_at)
        .limit(limit)
    )
    messages = session.execute(
        Message.__table__.delete().where(Message.id.in_(oldest_messages.scalar_subquery()))
    ).rowcount
    has_messages = select(Message.id).where(Message.conversation_id == Conversation.id).exists()
    end_being_told = (
        select(Delivery.id)
        .where(
            Delivery.ended_conversation_id == Conversation.id,
            Delivery.state == DeliveryState.PENDING,
        )
        .exists()
    )
    # A block stands while both of its parties do: it is what keeps the member blocked
    # from opening another conversation with the one who blocked them
    # (_check_opening_limits), and went with the conversation's last message (at once
    # when that was older than the retention, whenever the block was made). Its husk
    # holds no message, and goes once either party is erased.
    holds_a_block = (
        Conversation.blocked_by.is_not(None)
        & Conversation.initiator_member.is_not(None)
        & Conversation.recipient_member.is_not(None)
    )
    emptied_conversations = (
        select(Conversation.id)
        .where(
            Conversation.last_message_at < cutoff, ~has_messages, ~end_being_told, ~holds_a_block
        )
        .order_by(Conversation.last_message_at)
        .limit(limit)
        # Locked as chosen, and what another transaction holds is passed over: a message
        # being written in a conversation chosen as emptied (its last old message just
        # deleted) was waited for, then deleted with it, answered 201 and never
        # delivered. Locked, a row changed since this statement began is checked again
        # as it is now (a new message moved its last_message_at); one being written to,
        # blocked or erased is left for the next call, and its writer, if it comes after
        # the purge, finds no conversation rather than writes into one being deleted.
        .with_for_update(skip_locked=True)
    )
    conversations = session.execute(
        Conversation.__table__.delete().where(
            Conversation.id.in_(emptied_conversations.scalar_subquery())
        )
    ).rowcount
    # The news of its end, of a conversation kept for its block, goes as its messages
    # did: it would stay in an inbox that never acknowledged it. Looked for among the
    # conversations older than the retention, kept ones, by the delivery's unique key.
    ends_told = (
        select(Delivery.id)
        .join(Conversation, Conversation.id == Delivery.ended_conversation_id)
        .where(
            Conversation.last_message_at < cutoff,
            Delivery.state != DeliveryState.PENDING,
            Delivery.created_at < cutoff,
        )
        .limit(limit)
        .with_for_update(of=Delivery, skip_locked=True)
    )
    ends = session.execute(
        Delivery.__table__.delete().where(Delivery.id.in_(ends_told.scalar_subquery()))
    ).rowcount
    return PurgeReport(messages, conversations, more=max(messages, conversations, ends) >= limit)
