"""Portals, their API keys and their profile."""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import bindparam, func, literal, or_, select, update
from sqlalchemy.orm import Session

from directory.db import add_unique
from directory.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated
from directory.models import AdChange, ChangeOp, Ledger, Portal, PortalKey, PortalStatus
from directory.models.ads import Ad, Visibility
from directory.services import deliveries
from directory.services.ads import AdUsage, ad_usage, global_id_prefix
from directory.services.currencies import require_known_currencies
from directory.text import SINGLE_LINE_REFUSED, is_blank
from directory.webhooks.signing import new_secret
from directory.webhooks.urls import UnsafeUrl, check_webhook_url

# A recognisable prefix lets secret scanners spot a leaked key; the checksum lets them
# tell a real key from random text without asking us.
KEY_PREFIX = "cdir_"
KEY_RANDOM_CHARS = 40  # base62: ~238 bits of randomness
KEY_CHECKSUM_CHARS = 6
KEY_LENGTH = len(KEY_PREFIX) + KEY_RANDOM_CHARS + KEY_CHECKSUM_CHARS
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Writing last_used_at on every request would turn each read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=5)


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        chars.append(BASE62[digit])
    return "".join(reversed(chars))


def generate_key() -> str:
    body = "".join(secrets.choice(BASE62) for _ in range(KEY_RANDOM_CHARS))
    checksum = _base62(zlib.crc32(body.encode()), KEY_CHECKSUM_CHARS)
    return KEY_PREFIX + body + checksum


_KEY_SHAPE = re.compile(
    f"{re.escape(KEY_PREFIX)}([{BASE62}]{{{KEY_RANDOM_CHARS}}})([{BASE62}]{{{KEY_CHECKSUM_CHARS}}})"
)


def looks_like_key(value: str) -> bool:
    """True for a well-formed key with a valid checksum (whether or not it exists)."""
    shape = _KEY_SHAPE.fullmatch(value)
    if shape is None:
        return False
    body, checksum = shape.groups()
    return checksum == _base62(zlib.crc32(body.encode()), KEY_CHECKSUM_CHARS)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedKey:
    id: int
    portal_slug: str
    key: str  # shown once, never stored
    hint: str


@dataclass(frozen=True)
class AuthenticatedPortal:
    id: int
    slug: str


SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
# Single-line profile text and its limits (the columns' lengths). Control characters
# break logs and terminals (`portals list` prints names as they are).
PROFILE_TEXT_LIMITS = {"name": 200, "contact": 320}
MAX_WEBSITE_LENGTH = 2048
# Random bytes of a website verification token (services.websites): 32 URL-safe characters.
VERIFICATION_TOKEN_BYTES = 24


def check_profile(fields: dict) -> None:
    """Name, contact and website however they come in (the API or the CLI): refused as
    InvalidInput naming the field. Other fields are left to their own checks."""
    for field, limit in PROFILE_TEXT_LIMITS.items():
        value = fields.get(field)
        if value is None:
            continue
        if is_blank(value) or len(value) > limit:
            raise InvalidInput(
                f"{field} must be 1 to {limit} characters, not all blank", field=field
            )
        if SINGLE_LINE_REFUSED.search(value):
            raise InvalidInput(
                f"{field} must be a single line without control characters", field=field
            )
    website = fields.get("website")
    if website is not None:
        _check_website(website)


def _check_website(website: str) -> None:
    if len(website) > MAX_WEBSITE_LENGTH:
        raise InvalidInput(
            f"website must be at most {MAX_WEBSITE_LENGTH} characters", field="website"
        )
    # The website is the ads' global identity: a URL it cannot be made of is refused.
    if any(char.isspace() or not char.isprintable() for char in website) or (
        global_id_prefix(website) is None
    ):
        raise InvalidInput(
            "website must be an http(s) URL with a host, such as https://sel.example.org",
            field="website",
        )
    # Credentials have no place in a public identity: the profile would show them, and
    # the worker's log of its re-checks of the website would write them down.
    if "@" in urlsplit(website).netloc:
        raise InvalidInput(
            "website must not contain a user name or password (user@ or user:password@)",
            field="website",
        )


def website_identity(website: str | None) -> str | None:
    """What makes a website one portal's (Portal.website_identity): the digest of the
    global-id prefix it gives its ads, so every spelling of one site is the same."""
    prefix = global_id_prefix(website)
    return None if prefix is None else hashlib.sha256(prefix.encode()).hexdigest()


def claim_website(portal: Portal) -> None:
    """A portal's new website (or none): its identity, a new verification token, and no
    verification until the portal proves the website is its own (services.websites).
    Only for a change of identity: another spelling of the same site keeps all three."""
    portal.website_identity = website_identity(portal.website)
    portal.website_verification_token = (
        None if portal.website_identity is None else secrets.token_urlsafe(VERIFICATION_TOKEN_BYTES)
    )
    portal.website_verified_at = None
    portal.website_verified_by = None
    portal.website_recheck_failing_since = None
    portal.website_recheck_failure = None


def create_portal(
    session: Session,
    *,
    slug: str,
    name: str,
    website: str | None = None,
    contact: str | None = None,
    default_currencies: list[str] | None = None,
    webhook_url: str | None = None,
    allow_loopback: bool = False,
) -> tuple[Portal, IssuedKey]:
    if not SLUG.fullmatch(slug):
        raise InvalidInput(
            "slug must be 1 to 40 lowercase letters, digits or '-', starting and ending "
            "with a letter or digit",
            field="slug",
        )
    check_profile({"name": name, "website": website, "contact": contact})
    if webhook_url is not None:
        check_outbound_url(
            webhook_url,
            field="webhook_url",
            code="unsafe_webhook_url",
            allow_loopback=allow_loopback,
        )
    portal = Portal(
        slug=slug,
        name=name,
        website=website,
        contact=contact,
        default_currencies=default_currencies or [],
        webhook_url=webhook_url,
        webhook_secret=new_secret(),
    )
    claim_website(portal)
    add_unique(
        session,
        portal,
        conflicts={
            "uq_portals_slug": Conflict(f"a portal with slug {slug!r} exists already", field="slug")
        },
    )
    if default_currencies:
        require_known_currencies(
            session, codes=default_currencies, field="default_currencies", portal=portal
        )
    return portal, issue_key(session, portal_slug=slug)


def get_portal(
    session: Session, *, slug: str, lock: bool = False, key_share: bool = False
) -> Portal:
    """The portal of that slug. With `lock`, its row is locked until the transaction ends:
    FOR UPDATE, or with `key_share` FOR NO KEY UPDATE (which does not wait for writes
    that only refer to the portal, nor holds them up)."""
    query = select(Portal).where(Portal.slug == slug)
    portal = session.scalar(query.with_for_update(key_share=key_share) if lock else query)
    if portal is None:
        raise NotFound(f"no portal with slug {slug!r}", field="slug")
    return portal


@dataclass(frozen=True)
class Profile:
    """A portal's profile as it reads it: the portal, and its ads against its limit."""

    portal: Portal
    ads: AdUsage


def profile(session: Session, *, portal_id: int, max_ads: int) -> Profile:
    """`max_ads`: the directory's limit on a portal's ads (DIRECTORY_PORTAL_MAX_ADS)."""
    portal = session.get_one(Portal, portal_id)
    return Profile(portal, ad_usage(session, portal=portal, max_ads=max_ads))


# The highest limit an operator may set on a portal's ads (Portal.max_ads), as high as
# DIRECTORY_PORTAL_MAX_ADS may go; 0 refuses the portal any new ad.
MAX_ADS_CEILING = 10**9


def set_max_ads(session: Session, *, portal_slug: str, max_ads: int | None) -> Portal:
    """Set the most ads the portal may store, or with None give it the directory's
    limit again. A limit below what it stores deletes nothing: its ads stay, and may be
    changed or deleted, while new ones are refused until it stores fewer."""
    if max_ads is not None and not 0 <= max_ads <= MAX_ADS_CEILING:
        raise InvalidInput(
            f"max_ads must be a whole number from 0 to {MAX_ADS_CEILING}", field="max_ads"
        )
    # Locked for the change: a closing committed meanwhile is seen here.
    portal = get_portal(session, slug=portal_slug, lock=True, key_share=True)
    if portal.status is PortalStatus.CLOSED:
        raise _closed(portal_slug)
    portal.max_ads = max_ads
    portal.updated_at = datetime.now(UTC)
    session.flush()
    return portal


def list_portals(session: Session) -> list[tuple[Portal, int, int]]:
    """Every portal with its count of ads and of live keys."""
    ads = select(func.count()).select_from(Ad).where(Ad.portal_id == Portal.id).scalar_subquery()
    keys = (
        select(func.count())
        .select_from(PortalKey)
        .where(PortalKey.portal_id == Portal.id, PortalKey.revoked_at.is_(None))
        .scalar_subquery()
    )
    return [tuple(row) for row in session.execute(select(Portal, ads, keys).order_by(Portal.slug))]


def _closed(portal_slug: str) -> Conflict:
    return Conflict(
        f"portal {portal_slug!r} is closed: it left the directory for good, and keeps "
        "nothing to come back with; register a new portal",
        field="slug",
        code="portal_closed",
    )


# A key's label: a note for the operator, printed by `portals keys` (the column's length).
MAX_KEY_LABEL_LENGTH = 100


def issue_key(session: Session, *, portal_slug: str, label: str | None = None) -> IssuedKey:
    """A new key for the portal; none for a closed one (services/closing.py). Its row is
    locked against a closing under way, whose end this then reads."""
    if label is not None and (
        is_blank(label) or len(label) > MAX_KEY_LABEL_LENGTH or SINGLE_LINE_REFUSED.search(label)
    ):
        raise InvalidInput(
            f"label must be 1 to {MAX_KEY_LABEL_LENGTH} characters on a single line, "
            "without control characters",
            field="label",
        )
    portal = get_portal(session, slug=portal_slug, lock=True, key_share=True)
    if portal.status is PortalStatus.CLOSED:
        raise _closed(portal_slug)
    key = generate_key()
    row = PortalKey(portal_id=portal.id, digest=key_digest(key), hint=key[:12], label=label)
    session.add(row)
    session.flush()
    return IssuedKey(id=row.id, portal_slug=portal.slug, key=key, hint=row.hint)


def list_keys(session: Session, *, portal_slug: str) -> list[PortalKey]:
    portal = get_portal(session, slug=portal_slug)
    return list(
        session.scalars(
            select(PortalKey).where(PortalKey.portal_id == portal.id).order_by(PortalKey.id)
        )
    )


def revoke_key(session: Session, *, portal_slug: str, key_id: int) -> PortalKey:
    portal = get_portal(session, slug=portal_slug)
    key = session.scalar(
        select(PortalKey).where(PortalKey.id == key_id, PortalKey.portal_id == portal.id)
    )
    if key is None:
        raise NotFound(f"portal {portal_slug!r} has no key {key_id}", field="key_id")
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
    return key


def set_status(session: Session, *, portal_slug: str, status: PortalStatus) -> Portal:
    """Suspend or reactivate a portal. A suspended portal's public ads leave the feed
    (and search) as deletions, and come back as upserts when it is reactivated."""
    portal = get_portal(session, slug=portal_slug, lock=True)
    if portal.status is PortalStatus.CLOSED:
        raise _closed(portal_slug)
    if portal.status == status:
        return portal
    portal.status = status
    portal.updated_at = func.now()
    op = ChangeOp.DELETE if status == PortalStatus.SUSPENDED else ChangeOp.UPSERT
    _log_public_ads(session, portal_id=portal.id, op=op)
    return portal


# Built once, of table columns: composing the statement and going through the ORM cost
# more than running it, and every authenticated request runs it.
_KEY_LOOKUP = (
    select(
        PortalKey.__table__.c.id,
        PortalKey.__table__.c.revoked_at,
        PortalKey.__table__.c.last_used_at,
        Portal.__table__.c.id,
        Portal.__table__.c.slug,
        Portal.__table__.c.status,
    )
    .join(Portal.__table__, Portal.__table__.c.id == PortalKey.__table__.c.portal_id)
    .where(PortalKey.__table__.c.digest == bindparam("digest"))
)
# The row lock this takes lasts until the request ends (a sync commit: minutes): a row
# that another request holds is skipped, not waited for; that one is writing it anyway.
_STALE_KEY = (
    select(PortalKey.__table__.c.id)
    .where(
        PortalKey.__table__.c.id == bindparam("key_id"),
        or_(
            PortalKey.__table__.c.last_used_at.is_(None),
            PortalKey.__table__.c.last_used_at < bindparam("cutoff"),
        ),
    )
    .with_for_update(skip_locked=True)
)
_TOUCH_KEY = (
    update(PortalKey.__table__)
    .where(PortalKey.__table__.c.id.in_(_STALE_KEY.scalar_subquery()))
    .values(last_used_at=bindparam("now"))
)


# Where a refused key came from, for the error to name it.
_KEY_HEADER = {"field": "Authorization", "details": {"location": "headers"}}


def authenticate(session: Session, *, key: str | None) -> AuthenticatedPortal:
    """The portal that owns this key; the key is checked on every request, so a
    revoked key or a suspended portal is refused on the very next one."""
    if not key:
        raise Unauthenticated(
            "this request needs a portal key: Authorization: Bearer <key>", **_KEY_HEADER
        )
    if not looks_like_key(key):
        raise Unauthenticated("the portal key is malformed", **_KEY_HEADER)
    row = session.execute(_KEY_LOOKUP, {"digest": key_digest(key)}).one_or_none()
    if row is None:
        raise Unauthenticated("unknown portal key", **_KEY_HEADER)
    key_id, revoked_at, last_used_at, portal_id, slug, status = row
    if revoked_at is not None:
        raise Unauthenticated("this portal key has been revoked", code="key_revoked", **_KEY_HEADER)
    if status != PortalStatus.ACTIVE:
        raise Forbidden(f"portal {slug!r} is suspended", code="portal_suspended", **_KEY_HEADER)
    now = datetime.now(UTC)
    cutoff = now - LAST_USED_RESOLUTION
    if last_used_at is None or last_used_at < cutoff:
        session.execute(_TOUCH_KEY, {"key_id": key_id, "cutoff": cutoff, "now": now})
    return AuthenticatedPortal(id=portal_id, slug=slug)


PROFILE_FIELDS = (
    "name",
    "website",
    "contact",
    "description",
    "default_currencies",
    "webhook_url",
    "ledger",
)


def _writable_portal(session: Session, portal_id: int) -> Portal:
    """The portal, locked, for a change by its own request. Its key was checked at the
    request's start; a suspension or a closing committed since is seen here, under the
    lock, so a request under way cannot change a closed portal's profile back."""
    portal = session.get_one(Portal, portal_id, with_for_update=True)
    if portal.status is not PortalStatus.ACTIVE:
        raise Forbidden(
            f"portal {portal.slug!r} is {portal.status.value}",
            code="portal_suspended",
            **_KEY_HEADER,
        )
    return portal


def update_profile(
    session: Session, *, portal_id: int, changes: dict, allow_loopback: bool = False
) -> Portal:
    unknown = set(changes) - set(PROFILE_FIELDS)
    if unknown:
        raise ValueError(f"not profile fields: {sorted(unknown)}")
    check_profile(changes)
    # The URLs first, before the portal's row is locked: their hosts are resolved, which
    # may take seconds (RESOLVE_TIMEOUT_S), and under the lock every write referring to
    # the portal (a new ad, a message to one of its members) waited meanwhile.
    if changes.get("webhook_url") is not None:
        check_outbound_url(
            changes["webhook_url"],
            field="webhook_url",
            code="unsafe_webhook_url",
            allow_loopback=allow_loopback,
        )
    ledger = changes.get("ledger")
    ledger_checked = False
    # A ledger sent again as it is is not checked again (its host may be down for now).
    if ledger is not None and ledger != _ledger_of(session, portal_id):
        _check_ledger_url(ledger.url, allow_loopback=allow_loopback)
        ledger_checked = True
    portal = _writable_portal(session, portal_id)
    if "default_currencies" in changes:
        require_known_currencies(
            session,
            codes=changes["default_currencies"],
            field="default_currencies",
            portal=portal,
        )
    ledger_changed = "ledger" in changes and ledger != portal.ledger
    if ledger_changed and ledger is not None and not ledger_checked:
        # Another request changed the portal's ledger since it was read: rare enough to
        # check this one under the lock.
        _check_ledger_url(ledger.url, allow_loopback=allow_loopback)
    # The website makes the ads' global ids; a new one must be verified again.
    identity_changed = (
        "website" in changes and website_identity(changes["website"]) != portal.website_identity
    )
    # Only a verified website is in the ads' public view: from one unverified website to
    # another, nothing the feed tells changes (and a portal could write to it at will).
    global_ids_changed = identity_changed and portal.website_verified_at is not None
    for name, value in changes.items():
        setattr(portal, name, value)
    if identity_changed:
        claim_website(portal)
    if "webhook_url" in changes:
        # Setting the URL (again) is how a portal says its endpoint works: a webhook
        # disabled by a 410 comes back, and what waited in the inbox is sent too.
        portal.webhook_disabled_at = None
        portal.webhook_disabled_reason = None
        session.flush()
        if portal.webhook_url is None:
            deliveries.park_webhooks(session, portal_id=portal.id)
        else:
            deliveries.resume_webhooks(session, portal_id=portal.id)
    if global_ids_changed or ledger_changed:
        republish_public_ads(session, portal_id=portal.id, payable_only=not global_ids_changed)
    if changes:
        portal.updated_at = datetime.now(UTC)
    session.flush()
    return portal


def _ledger_of(session: Session, portal_id: int) -> Ledger | None:
    """The portal's ledger as committed, read without a lock."""
    row = session.execute(
        select(Portal.ledger_protocol, Portal.ledger_url, Portal.ledger_node).where(
            Portal.id == portal_id
        )
    ).one()
    return None if row.ledger_protocol is None else Ledger(*row)


def _check_ledger_url(url: str, *, allow_loopback: bool) -> None:
    check_outbound_url(
        url, field="ledger.url", code="unsafe_ledger_url", allow_loopback=allow_loopback
    )
    if "?" in url:
        # Payers' clients add the node's paths to the URL: a query would swallow them.
        raise InvalidInput(
            "ledger.url must not have a query (?…): it is the node's base URL, which "
            "payers' clients add the ledger's paths to",
            field="ledger.url",
        )


def republish_public_ads(session: Session, *, portal_id: int, payable_only: bool) -> None:
    """The portal's public ads go out again through the change feed, to search indexes
    and other followers, when a part of their public view kept on the portal changes: its
    website (their global_id: all of them) or its ledger (the payment block of those with
    an account: `payable_only`)."""
    _log_public_ads(session, portal_id=portal_id, op=ChangeOp.UPSERT, payable_only=payable_only)


def _log_public_ads(
    session: Session, *, portal_id: int, op: ChangeOp, payable_only: bool = False
) -> None:
    """A feed entry `op` for each of the portal's public ads (with a ledger account, if
    `payable_only`). Expired ads are out of public view, and their entries said so."""
    ads = select(Ad.id, Ad.portal_id, literal(op.value)).where(
        Ad.portal_id == portal_id, Ad.visibility == Visibility.PUBLIC, Ad.expires_at > func.now()
    )
    if payable_only:
        ads = ads.where(Ad.ledger_account.is_not(None))
    session.execute(AdChange.__table__.insert().from_select(["ad_id", "portal_id", "op"], ads))


def check_outbound_url(url: str, *, field: str, code: str, allow_loopback: bool) -> None:
    """A URL the directory or members' clients will call (webhook, ledger): refused as
    InvalidInput naming `field` unless it leads to public addresses."""
    try:
        check_webhook_url(url, allow_loopback=allow_loopback, field=field)
    except UnsafeUrl as error:
        raise InvalidInput(str(error), field=field, code=code) from None


@dataclass(frozen=True)
class WebhookSecrets:
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None


MAX_SECRET_OVERLAP = timedelta(days=7)


def webhook_secrets(session: Session, *, portal_id: int) -> WebhookSecrets:
    """The secrets that sign the portal's webhooks now (deliveries.signing_secrets)."""
    portal = session.get_one(Portal, portal_id)
    if len(deliveries.signing_secrets(portal, datetime.now(UTC))) == 1:
        return WebhookSecrets(portal.webhook_secret, None, None)
    return WebhookSecrets(
        portal.webhook_secret,
        portal.webhook_previous_secret,
        portal.webhook_previous_secret_expires_at,
    )


def rotate_webhook_secret(
    session: Session, *, portal_id: int, overlap: timedelta, idempotency_key: str | None = None
) -> WebhookSecrets:
    """A new signing secret. The current one keeps signing beside it for `overlap`, so
    that the portal can switch its receiver over without losing a message; a rotation
    during an overlap ends the older one at once. Sent again with the `idempotency_key`
    of the latest rotation (its answer was lost), it answers the secrets as they are
    instead: rotating again would end at once the secret the portal's receiver holds.
    That key sent with another `overlap` is refused (Conflict idempotency_key_reused):
    the rotation asked for is not the one made. `overlap` is in whole hours."""
    if not timedelta(0) <= overlap <= MAX_SECRET_OVERLAP:
        raise InvalidInput(
            f"overlap must be between 0 and {MAX_SECRET_OVERLAP.days * 24} hours",
            field="overlap_hours",
        )
    overlap_hours, rest = divmod(overlap, timedelta(hours=1))
    if rest:
        raise InvalidInput("overlap must be a whole number of hours", field="overlap_hours")
    portal = _writable_portal(session, portal_id)
    if idempotency_key is not None and idempotency_key == portal.webhook_rotation_key:
        made_with = portal.webhook_rotation_overlap_hours
        if made_with is not None and made_with != overlap_hours:
            raise Conflict(
                f"this idempotency_key was used for the latest rotation, made with "
                f"overlap_hours {made_with}, not {overlap_hours}: the secrets are as that "
                "rotation left them (GET /v1/portals/me/webhook-secret); send a new key to "
                "rotate again",
                field="idempotency_key",
                code="idempotency_key_reused",
            )
        return webhook_secrets(session, portal_id=portal_id)
    portal.webhook_rotation_key = idempotency_key
    portal.webhook_rotation_overlap_hours = overlap_hours
    now = datetime.now(UTC)
    portal.webhook_previous_secret = portal.webhook_secret if overlap else None
    portal.webhook_previous_secret_expires_at = now + overlap if overlap else None
    portal.webhook_secret = new_secret()
    portal.updated_at = now
    session.flush()
    return webhook_secrets(session, portal_id=portal_id)
