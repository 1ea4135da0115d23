"""A portal's members, as the directory knows them: only by the opaque handles their
portal gives them, on its ads, its conversations and its staged resyncs.

A member who leaves their community, or asks it to forget them, is erased here by their
portal: everything the directory holds under the handle goes at once, in one
transaction. The directory keeps no list of members, so erasing a handle it never saw,
or erasing twice, erases nothing and is no error."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from directory.models import Ad, SyncSession, SyncSessionItem, SyncStatus
from directory.services import relay
from directory.services.ads import Lifetimes, delete_ads, lock_portal_writes


@dataclass(frozen=True)
class Erasure:
    ads_deleted: int
    conversations_ended: int
    messages_deleted: int
    staged_ads_dropped: int


def erase_member(session: Session, *, portal_id: int, member: str, lifetimes: Lifetimes) -> Erasure:
    """Erase the member `member` of `portal_id`:
    - their ads are deleted, as a DELETE of each would (the feed and the search index
      are told);
    - in each conversation they are a party to, every message goes, with its delivery,
      and their handle and name (services/relay.py erase_member_conversations);
    - their ads staged in the portal's open sync sessions are dropped: a commit then
      treats them as omitted, which deletes nothing more; what committed or aborted
      sessions still hold of them until housekeeping purges it goes too.

    Whatever writes for the member and is under way ends first, and nothing starts until
    this transaction ends: an ad write or a sync commit that created the member's ads
    after the ads below were listed would leave them published (and a commit read its
    staged ads before they were dropped). The locks are taken in the order those writers
    take theirs, so that none deadlocks with the erasure: the member's openings (a
    contact they are making, relay.open_conversation), the portal's open sync sessions
    (a staging or a commit under way, services/sync.py), the portal's write lock, alone,
    as a commit holds it, then the member's conversations, in the relay's order."""
    relay.lock_member_openings(session, portal_id=portal_id, member=member)
    open_sessions = select(SyncSession.id).where(
        SyncSession.portal_id == portal_id, SyncSession.status == SyncStatus.OPEN
    )
    session.execute(open_sessions.order_by(SyncSession.id).with_for_update())
    lock_portal_writes(session, portal_id, exclusive=True)
    relay.lock_conversations_of(session, portal_id=portal_id, member=member)
    their_ads = select(Ad.external_id).where(Ad.portal_id == portal_id, Ad.member == member)
    ads_deleted = delete_ads(
        session,
        portal_id=portal_id,
        external_ids=list(session.scalars(their_ads)),
        lifetimes=lifetimes,
    )
    # After the ads: a contact made meanwhile held its ad (key share) until it committed,
    # so its conversation is among those erased now.
    conversations = relay.erase_member_conversations(session, portal_id=portal_id, member=member)
    # Every session of the portal's: a finished one keeps its items until housekeeping,
    # and they hold the member's handle and words. Only those of open sessions are
    # counted: a commit would have published them again.
    dropped = session.scalars(
        delete(SyncSessionItem)
        .where(
            SyncSessionItem.session_id == SyncSession.id,
            SyncSession.portal_id == portal_id,
            SyncSessionItem.data["member"].astext == member,
        )
        .returning(SyncSession.status)
    ).all()
    return Erasure(
        ads_deleted=ads_deleted,
        conversations_ended=conversations.conversations,
        messages_deleted=conversations.messages,
        staged_ads_dropped=sum(status is SyncStatus.OPEN for status in dropped),
    )
