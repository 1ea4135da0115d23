"""A community leaving the directory for good: its portal is closed by an operator.

Closing keeps the portal's row, with its slug and name only: the other side of its
members' conversations still reads which community they were with, and the slug is
never given to another portal (whose ads would pass for the old community's). Everything
else it held goes: its ads, its members (as erase_member does for one), its staged
resyncs, its keys (revoked, and no longer labelled), its website, contact, webhook and
ledger, and the blocks it made of other portals (those others made of it stay: they
concern only their makers). Its community currencies stay: other portals' ads may accept them, and they hold
nothing personal."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from directory.errors import Conflict
from directory.models import Ad, Portal, PortalKey, PortalStatus, SyncSession
from directory.services import portal_blocks, relay
from directory.services.ads import Lifetimes, delete_ads, lock_portal_writes
from directory.services.portals import claim_website, get_portal
from directory.webhooks.signing import new_secret


@dataclass(frozen=True)
class Closure:
    ads_deleted: int
    conversations_ended: int
    messages_deleted: int
    keys_revoked: int
    already_closed: bool = False


def close_portal(session: Session, *, portal_slug: str, lifetimes: Lifetimes) -> Closure:
    """Close a suspended portal, for good. Only a suspended one: its keys have been
    refused since, so no request of its own is still writing (an ad write under way is
    waited for besides). Closing a closed portal changes nothing."""
    # FOR NO KEY UPDATE: an ad write under way, which the write lock below waits for, may
    # still have to insert, and an insert locks the portal's row for its key (FOR KEY
    # SHARE): FOR UPDATE held that against it, and the two deadlocked.
    portal = get_portal(session, slug=portal_slug, lock=True, key_share=True)
    if portal.status is PortalStatus.CLOSED:
        return Closure(0, 0, 0, 0, already_closed=True)
    if portal.status is not PortalStatus.SUSPENDED:
        raise Conflict(
            f"portal {portal_slug!r} is {portal.status.value}: suspend it first (its keys are "
            "then refused, and its requests under way end), then close it",
            field="slug",
            code="portal_not_suspended",
        )
    lock_portal_writes(session, portal.id, exclusive=True)
    # In the relay's order, before the ads' deletes lock them in theirs.
    relay.lock_conversations_of(session, portal_id=portal.id)
    # Its public ads left public view when it was suspended; each is told deleted again.
    ads_deleted = delete_ads(
        session,
        portal_id=portal.id,
        external_ids=list(session.scalars(select(Ad.external_id).where(Ad.portal_id == portal.id))),
        lifetimes=lifetimes,
    )
    session.execute(delete(SyncSession).where(SyncSession.portal_id == portal.id))
    conversations = relay.erase_portal_conversations(session, portal_id=portal.id)
    portal_blocks.delete_blocks_by(session, portal_id=portal.id)
    keys_revoked = session.execute(
        update(PortalKey)
        .where(PortalKey.portal_id == portal.id, PortalKey.revoked_at.is_(None))
        .values(revoked_at=func.now())
    ).rowcount
    # A key's label may say whose it was ("Odile's laptop"); its digest and dates are all
    # that refusing it as revoked needs.
    session.execute(update(PortalKey).where(PortalKey.portal_id == portal.id).values(label=None))
    _forget_profile(portal)
    portal.status = PortalStatus.CLOSED
    portal.updated_at = func.now()
    return Closure(
        ads_deleted=ads_deleted,
        conversations_ended=conversations.conversations,
        messages_deleted=conversations.messages,
        keys_revoked=keys_revoked,
    )


def _forget_profile(portal: Portal) -> None:
    """All of the profile but the slug and the name. The website is free for another
    portal to verify (a successor of the community, say)."""
    portal.website = None
    claim_website(portal)  # no identity, token nor verification for no website
    portal.website_checked_at = None
    portal.website_token_seen_at = None
    portal.contact = None
    portal.description = None
    portal.webhook_url = None
    portal.webhook_secret = new_secret()  # never used: the column holds one always
    portal.webhook_previous_secret = None
    portal.webhook_previous_secret_expires_at = None
    portal.webhook_rotation_key = None
    portal.webhook_rotation_overlap_hours = None
    portal.webhook_disabled_at = None
    portal.webhook_disabled_reason = None
    portal.ledger = None
