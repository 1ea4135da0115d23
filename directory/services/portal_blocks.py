"""A community blocking another: for a portal whose members are pestered by another
community's, without blocking conversation by conversation or waiting for the operator.

While a portal blocks another, no conversation opens between a member of either and an
ad of the other's, and nobody writes in a conversation they have, either way
(services/relay.py checks it in the statements it runs anyway), and neither portal's
searches find the other's ads (search/postgres.py). Conversations are held,
not ended: unblocking lets them go on, and what was accepted before the block is
delivered. The blocked portal learns of it when refused (409 community_blocked), as of
a suspension: it is a community's decision. Only the blocker's list shows it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from directory.errors import Conflict, Forbidden, InvalidInput, NotFound
from directory.models import Portal, PortalBlock, PortalStatus
from directory.services.portals import SLUG, AuthenticatedPortal

# Bounds the table (and a portal's unpaged list) whatever a portal sends; far more than
# a community would block.
MAX_BLOCKS_PER_PORTAL = 1_000
# The slug comes from GET/PUT/DELETE /v1/portals/me/blocked-portals/{slug}: errors about
# it name the path, not a JSON body.
IN_PATH = {"location": "path"}


@dataclass(frozen=True)
class BlockedPortal:
    slug: str
    name: str
    blocked_at: datetime


def list_blocked_portals(session: Session, *, portal: AuthenticatedPortal) -> list[BlockedPortal]:
    """The portals `portal` blocks, the latest blocked first: at most
    MAX_BLOCKS_PER_PORTAL, so never paged."""
    rows = session.execute(
        select(Portal.slug, Portal.name, PortalBlock.created_at)
        .join(PortalBlock, PortalBlock.blocked_portal_id == Portal.id)
        .where(PortalBlock.blocker_portal_id == portal.id)
        .order_by(PortalBlock.created_at.desc(), Portal.slug)
    )
    return [BlockedPortal(row.slug, row.name, row.created_at) for row in rows]


def block_portal(session: Session, *, portal: AuthenticatedPortal, slug: str) -> BlockedPortal:
    """`portal` blocks the portal `slug`. Blocking again changes nothing and answers the
    block as it stands, from when it was first made."""
    blocked = _portal_named(session, slug)
    if blocked.id == portal.id:
        raise InvalidInput("a portal cannot block itself", field="slug", details=IN_PATH)
    # Locked, so that two blocks at once cannot both take the last place, the second of
    # two identical ones finds the first's, and a closing committed meanwhile is seen.
    # FOR NO KEY UPDATE: the portal's relay messages and ad writes (which lock its row
    # for its key) go on meanwhile.
    status = session.scalar(
        select(Portal.status).where(Portal.id == portal.id).with_for_update(key_share=True)
    )
    if status is not PortalStatus.ACTIVE:
        raise Forbidden(
            f"portal {portal.slug!r} is {status.value}",
            field="Authorization",
            code="portal_suspended",
            details={"location": "headers"},
        )
    existing = session.get(PortalBlock, (portal.id, blocked.id))
    if existing is not None:
        return BlockedPortal(blocked.slug, blocked.name, existing.created_at)
    blocks = session.scalar(
        select(func.count())
        .select_from(PortalBlock)
        .where(PortalBlock.blocker_portal_id == portal.id)
    )
    if blocks >= MAX_BLOCKS_PER_PORTAL:
        raise Conflict(
            f"a portal blocks at most {MAX_BLOCKS_PER_PORTAL} portals; unblock one first",
            field="slug",
            code="too_many_blocks",
            details=IN_PATH,
        )
    blocked_at = session.scalar(
        insert(PortalBlock)
        .values(blocker_portal_id=portal.id, blocked_portal_id=blocked.id)
        .returning(PortalBlock.created_at)
    )
    return BlockedPortal(blocked.slug, blocked.name, blocked_at)


def unblock_portal(session: Session, *, portal: AuthenticatedPortal, slug: str) -> None:
    """`portal` no longer blocks the portal `slug`, if it did: conversations held by the
    block go on (unless the other portal blocks it too)."""
    unblocked = _portal_named(session, slug)
    session.execute(
        delete(PortalBlock).where(
            PortalBlock.blocker_portal_id == portal.id,
            PortalBlock.blocked_portal_id == unblocked.id,
        )
    )


def delete_blocks_by(session: Session, *, portal_id: int) -> None:
    """The blocks the portal made go (it is closing); those others made against it stay."""
    session.execute(delete(PortalBlock).where(PortalBlock.blocker_portal_id == portal_id))


def _portal_named(session: Session, slug: str) -> Portal:
    if not SLUG.fullmatch(slug):
        raise InvalidInput(
            "slug must be a portal's slug: 1 to 40 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit",
            field="slug",
            details=IN_PATH,
        )
    found = session.scalar(select(Portal).where(Portal.slug == slug))
    if found is None:
        raise NotFound(f"no portal with slug {slug!r}", field="slug", details=IN_PATH)
    return found
