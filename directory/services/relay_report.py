"""What the relay's operators watch for abuse: per portal, how the conversations its
members opened with other communities lately were received. A portal whose members write
to many who never answer, or who block them, is sending unwanted messages; the operator
asks its team to act, or suspends it (`directory portals suspend`).

Counts only: no member, alias, name or word of any conversation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, literal, or_, select
from sqlalchemy.orm import Session

from directory.models import Conversation, Portal, PortalBlock, PortalStatus, Role


@dataclass(frozen=True)
class PortalRelayActivity:
    slug: str
    name: str
    status: PortalStatus
    opened: int  # conversations its members opened with other communities' members
    unanswered: int  # of those, the other party never wrote in
    blocked: int  # of those, the other party blocked
    blocked_by_portals: int  # communities blocking the portal now (at the time of the report)

    @property
    def blocked_share(self) -> float | None:
        return self.blocked / self.opened if self.opened else None

    @property
    def unanswered_share(self) -> float | None:
        return self.unanswered / self.opened if self.opened else None


@dataclass(frozen=True)
class RelayReport:
    since: datetime  # conversations opened since, by the database's clock
    portals: list[PortalRelayActivity]  # the most blocked share first


def relay_report(session: Session, *, days: int) -> RelayReport:
    """The portals whose members opened a conversation with another community in the last
    `days` days, or that another community blocks, most often blocked first. A
    conversation within one community is its own business and not counted."""
    since = session.scalar(select(func.now() - timedelta(days=days)))
    opened = (
        select(
            Conversation.initiator_portal_id.label("portal_id"),
            func.count().label("opened"),
            func.count()
            .filter(
                # The advertiser never wrote: every message is the initiator's, in a row.
                and_(
                    Conversation.last_sender == Role.INITIATOR,
                    Conversation.unanswered_messages == Conversation.message_count,
                )
            )
            .label("unanswered"),
            func.count().filter(Conversation.blocked_by == Role.RECIPIENT).label("blocked"),
        )
        .where(
            Conversation.created_at >= since,
            Conversation.initiator_portal_id != Conversation.recipient_portal_id,
        )
        .group_by(Conversation.initiator_portal_id)
        .subquery()
    )
    blockers = (
        select(PortalBlock.blocked_portal_id.label("portal_id"), func.count().label("blockers"))
        .group_by(PortalBlock.blocked_portal_id)
        .subquery()
    )
    zero = literal(0)
    rows = session.execute(
        select(
            Portal.slug,
            Portal.name,
            Portal.status,
            func.coalesce(opened.c.opened, zero).label("opened"),
            func.coalesce(opened.c.unanswered, zero).label("unanswered"),
            func.coalesce(opened.c.blocked, zero).label("blocked"),
            func.coalesce(blockers.c.blockers, zero).label("blockers"),
        )
        .outerjoin(opened, opened.c.portal_id == Portal.id)
        .outerjoin(blockers, blockers.c.portal_id == Portal.id)
        .where(or_(opened.c.portal_id.is_not(None), blockers.c.portal_id.is_not(None)))
    )
    portals = [
        PortalRelayActivity(
            row.slug, row.name, row.status, row.opened, row.unanswered, row.blocked, row.blockers
        )
        for row in rows
    ]
    portals.sort(key=lambda p: (-(p.blocked_share or 0), -p.blocked_by_portals, -p.opened, p.slug))
    return RelayReport(since=since, portals=portals)
