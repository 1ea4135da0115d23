"""Ads: the upsert, delete and expire rules, applied one at a time or in batches.

Every write goes through `apply_changes`, so a single PUT, a batch and a sync-session
commit share one set of rules: the privacy snapping, the defaults, the idempotency
(an identical ad changes nothing), the version and the change log."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlsplit

import orjson
from geoalchemy2 import Geometry
from sqlalchemy import (
    ARRAY,
    Select,
    String,
    case,
    cast,
    delete,
    exists,
    func,
    select,
    text,
)
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from directory.db import (
    AD_COUNT_LOCK_NAMESPACE,
    PORTAL_WRITE_LOCK_NAMESPACE,
    insert_rows,
    unique_conflicts,
    update_rows,
)
from directory.errors import (
    VALIDATION_ERROR,
    Conflict,
    DirectoryError,
    InvalidInput,
    NotFound,
    PreconditionFailed,
)
from directory.geo import Point, Privacy, publishable_point
from directory.models import (
    Ad,
    AdKind,
    ChangeOp,
    LedgerProtocol,
    Portal,
    PortalStatus,
    PriceUnit,
)
from directory.models.ads import Visibility
from directory.services.categories import category_codes, require_known_category
from directory.services.currencies import unknown_currencies

MAX_BATCH_ITEMS = 1000
# How often a write decides again the ads that other writes created while it ran. Each
# round waits for one of those writes to commit; only creations and deletions of the
# same ads racing each other again and again use up more than two.
CREATION_RACE_ROUNDS = 5
ADS_EXTERNAL_ID_KEY = "uq_ads_portal_id_external_id"


class _CreatedMeanwhile(Exception):
    """Another write created one of the ads this write is creating."""


# "." and ".." are refused: clients remove them from URL paths (RFC 3986 dot segments),
# so such an ad could never be addressed.
EXTERNAL_ID = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9._:~-]{1,128}$")
EXTERNAL_ID_RULE = "1 to 128 letters, digits, '.', '_', ':', '~' or '-', and not '.' or '..'"


@dataclass(frozen=True, kw_only=True)
class Price:
    amount: Decimal
    currency: str
    unit: PriceUnit


# Not frozen: one is built per ad of a batch, and a frozen dataclass takes twice as long.
@dataclass(kw_only=True, slots=True)
class AdInput:
    """An ad as a portal submits it, already checked for shape by the API schemas."""

    kind: AdKind
    title: str
    body: str
    category: str
    member: str
    location: Point | None = None
    privacy: Privacy = Privacy.APPROXIMATE
    visibility: Visibility = Visibility.PUBLIC
    tags: tuple[str, ...] = ()
    currencies: tuple[str, ...] | None = None  # None: the portal's defaults
    price: Price | None = None
    language: str | None = None
    images: tuple[str, ...] = ()
    expires_at: datetime | None = None  # None: the default lifetime from the last change
    ledger_account: str | None = None
    accepts_contact: bool = True  # False: nobody may open a conversation about the ad

    def with_publishable_location(self) -> AdInput:
        """The ad with the only location that may be stored for it (publishable_point):
        what is kept of it before it becomes an ad, such as a staged sync item."""
        return replace(self, location=publishable_point(self.location, self.privacy))

    def to_json(self) -> dict:
        # Written out rather than dataclasses.asdict: this runs for every ad of a batch.
        location, price = self.location, self.price
        return {
            "kind": self.kind.value,
            "title": self.title,
            "body": self.body,
            "category": self.category,
            "member": self.member,
            "location": None if location is None else {"lat": location.lat, "lon": location.lon},
            "privacy": self.privacy.value,
            "visibility": self.visibility.value,
            "tags": list(self.tags),
            "currencies": None if self.currencies is None else list(self.currencies),
            "price": None
            if price is None
            else {
                "amount": str(price.amount),
                "currency": price.currency,
                "unit": price.unit.value,
            },
            "language": self.language,
            "images": list(self.images),
            "expires_at": None if self.expires_at is None else self.expires_at.isoformat(),
            "ledger_account": self.ledger_account,
            "accepts_contact": self.accepts_contact,
        }

    @classmethod
    def from_json(cls, data: dict) -> AdInput:
        # Items staged before accepts_contact existed lack the key: its default applies.
        data = dict(data)
        data["kind"] = AdKind(data["kind"])
        data["privacy"] = Privacy(data["privacy"])
        data["visibility"] = Visibility(data["visibility"])
        data["location"] = None if data["location"] is None else Point(**data["location"])
        data["tags"] = tuple(data["tags"])
        data["images"] = tuple(data["images"])
        if data["currencies"] is not None:
            data["currencies"] = tuple(data["currencies"])
        if data["price"] is not None:
            price = data["price"]
            data["price"] = Price(
                amount=Decimal(price["amount"]),
                currency=price["currency"],
                unit=PriceUnit(price["unit"]),
            )
        if data["expires_at"] is not None:
            data["expires_at"] = datetime.fromisoformat(data["expires_at"])
        return cls(**data)


@dataclass(frozen=True)
class Preconditions:
    """A request's If-Match and If-None-Match headers, as sent (None: absent)."""

    if_match: str | None = None
    if_none_match: str | None = None


NO_PRECONDITIONS = Preconditions()


@dataclass(frozen=True)
class Upsert:
    external_id: str
    ad: AdInput
    preconditions: Preconditions = NO_PRECONDITIONS


@dataclass(frozen=True)
class Delete:
    external_id: str
    preconditions: Preconditions = NO_PRECONDITIONS


@dataclass(frozen=True)
class Expire:
    external_id: str
    preconditions: Preconditions = NO_PRECONDITIONS


@dataclass(frozen=True)
class Rejected:
    """An item the API could not even parse (VALIDATION_ERROR); carried along so results
    stay in order."""

    external_id: str | None
    errors: dict


Operation = Upsert | Delete | Expire | Rejected


@dataclass
class ItemResult:
    external_id: str | None
    status: str  # created | updated | unchanged | deleted | expired | rejected
    id: uuid.UUID | None = None
    version: int | None = None
    # For a rejected item: the machine code a single write of it would be answered with
    # (a DirectoryError's code, VALIDATION_ERROR), and the messages by field path.
    error: str | None = None
    errors: dict | None = None
    view: str = ""  # portal_view of the ad, for its ETag
    expired: bool = False

    @property
    def etag(self) -> str | None:
        return (
            None if self.id is None else make_etag(self.id, self.version, self.view, self.expired)
        )


@dataclass(frozen=True, kw_only=True)
class Payment:
    """Where and whom to pay for an ad: its portal's ledger and the advertiser's account
    there, with what the ad asks. Never a credential: the payer's own client pays."""

    protocol: LedgerProtocol
    ledger_url: str
    node: str
    payee: str
    currencies: list[str]
    price: Price | None


@dataclass(frozen=True, kw_only=True)
class AdRecord:
    """An ad as stored, with its (already snapped) location."""

    id: uuid.UUID
    portal: str
    external_id: str
    kind: AdKind
    title: str
    body: str
    category: str
    tags: list[str]
    location: Point | None
    privacy: Privacy
    visibility: Visibility
    currencies: list[str]
    price: Price | None
    language: str | None
    images: list[str]
    expires_at: datetime
    member: str
    ledger_account: str | None
    # Defaults as the column does; record_from_row always sets it from the row.
    accepts_contact: bool = True
    version: int
    created_at: datetime
    updated_at: datetime
    # Set when the ad has a ledger account and its portal a ledger.
    payment: Payment | None = None
    # None unless the portal has a verified website; record_from_row always sets it.
    global_id: str | None = None
    view: str = ""  # portal_view of the ad, for its ETag; record_from_row sets it

    @property
    def etag(self) -> str:
        return make_etag(self.id, self.version, self.view, self.expired)

    @property
    def expired(self) -> bool:
        return self.expires_at <= datetime.now(UTC)


@dataclass(frozen=True)
class Lifetimes:
    default: timedelta
    maximum: timedelta


@dataclass
class ReplaceSummary:
    results: list[ItemResult] = field(default_factory=list)
    deleted: int = 0


def make_etag(ad_id: uuid.UUID, version: int | None, view: str = "", expired: bool = False) -> str:
    """The ad's ETag: it changes whenever what the portal reads of the ad does, which is
    its version, and besides what its portal adds (`view`: portal_view) and whether it
    has expired, which change without a new version."""
    # The id part keeps an ETag of a deleted ad from matching a new ad of the same
    # external id, whose version starts again at 1: the id's last 48 bits, random (its
    # first 48 are its creation's millisecond, which two such ads may share).
    return f'"{ad_id.hex[-12:]}-{version}{"." + view if view else ""}{".x" if expired else ""}"'


@functools.lru_cache(maxsize=4096)
def portal_view(identity: str | None, ledger: tuple[str, str, str] | None) -> str:
    """What an ad shows of its portal, for its ETag: the prefix of its global_id (the
    portal's verified website) and, for an ad with a ledger account, the portal's ledger
    (protocol, URL, node), which make its payment block. Empty when there is neither."""
    if identity is None and ledger is None:
        return ""
    return hashlib.blake2b(repr((identity, ledger)).encode(), digest_size=4).hexdigest()


def _view_of_portal(portal: Portal, *, with_ledger_account: bool) -> str:
    verified = portal.website if portal.website_verified_at is not None else None
    ledger = None
    if with_ledger_account and portal.ledger_url is not None:
        ledger = (
            LedgerProtocol(portal.ledger_protocol).value,
            portal.ledger_url,
            portal.ledger_node,
        )
    return portal_view(global_id_prefix(verified), ledger)


def etag_matches(header: str, etag: str | None, *, weak: bool, name: str) -> bool:
    """Whether an If-Match (strong comparison) or If-None-Match (`weak`) header, called
    `name`, matches the ETag of the ad as it is (None: there is no ad), RFC 9110 section
    13.1: `*` matches any ad; a weak tag (W/"...") matches only in a weak comparison.
    A header that is not `*` or a list of entity tags is refused (InvalidInput naming
    it): read as matching nothing, it would let a change through that it meant to stop."""
    tags = entity_tags(header, name=name)
    if etag is None:
        return False
    if tags is None:
        return True
    for tag in tags:
        if tag.startswith("W/"):
            if not weak:
                continue
            tag = tag[2:]
        if tag == etag:
            return True
    return False


# RFC 9110 section 8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE, in a list whose
# elements are separated by commas and optional whitespace (empty ones allowed).
_ENTITY_TAG = re.compile(r'[ \t]*((?:W/)?"[\x21\x23-\x7e\x80-\xff]*")[ \t]*(?:,|\Z)')
_EMPTY_LIST_ELEMENT = re.compile(r"[ \t]*,")


def entity_tags(header: str, *, name: str) -> list[str] | None:
    """The entity tags of an If-Match or If-None-Match header (None: `*`)."""
    if header.strip(" \t") == "*":
        return None
    tags, position = [], 0
    while position < len(header):
        if empty := _EMPTY_LIST_ELEMENT.match(header, position):
            position = empty.end()
        elif tag := _ENTITY_TAG.match(header, position):
            tags.append(tag.group(1))
            position = tag.end()
        elif not header[position:].strip(" \t"):
            break
        else:
            tags = []
            break
    if not tags:
        raise InvalidInput(
            f'{name} must be "*" or a list of ETags as the API gives them, quotes '
            'included (such as "01a2b3c4d5e6-7"), separated by commas',
            field=name,
            details={"location": "headers"},
        )
    return tags


def content_hash(row: dict, explicit_expiry: datetime | None) -> str:
    """Digest of an ad as it would be stored (snapped location, resolved currencies), so
    a change that leaves the published ad as it was changes nothing. A defaulted expiry
    is left out: it moves with the clock.

    So is accepts_contact while it is true, its default: ads stored before the field
    existed were hashed without it, and sending one of them again unchanged must leave
    it unchanged (same version and ETag), not bump every ad of every portal once."""
    hashed = {**row, "expires_at": explicit_expiry}
    if hashed.get("accepts_contact") is True:
        del hashed["accepts_contact"]
    canonical = orjson.dumps(hashed, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


# price_amount is numeric(14, 4): "12.5" and "12.50" are both stored as 12.5000.
AMOUNT_QUANTUM = Decimal("0.0001")


def content_digests(row: dict, explicit_expiry: datetime | None) -> tuple[str, ...]:
    """The digest to store for an ad, then any other digest under which an ad already
    stored is this one unchanged.

    An ad's text may spell one stored value several ways: an amount with more or fewer
    trailing zeros, an expiry in another UTC offset. The digest is of the values as
    stored, so that sending them spelt otherwise changes nothing; ads hashed before
    that, from their values as sent, also match their digest as sent (else sending
    every priced ad again, unchanged, would bump it once)."""
    amount = row["price_amount"]
    stored = row
    if amount is not None and amount.as_tuple().exponent != AMOUNT_QUANTUM.as_tuple().exponent:
        stored = {**row, "price_amount": amount.quantize(AMOUNT_QUANTUM)}
    expiry = explicit_expiry
    if expiry is not None and expiry.utcoffset():
        expiry = expiry.astimezone(UTC)
    digest = content_hash(stored, expiry)
    if stored is row and expiry is explicit_expiry:
        return (digest,)
    return digest, content_hash(row, explicit_expiry)


def lock_portal_writes(session: Session, portal_id: int, *, exclusive: bool) -> None:
    """The portal's write lock, until the transaction ends. Ordinary writes share it and
    run side by side (the rows they touch are locked one by one, in external-id order);
    a replace or a sync commit, which deletes whatever it was not given, holds it alone,
    as do a member's erasure and a portal's closing (services/members.py, closing.py)."""
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    session.execute(
        text(f"SELECT {function}(:namespace, :portal_id)"),
        {"namespace": PORTAL_WRITE_LOCK_NAMESPACE, "portal_id": portal_id},
    )


# --- the limit on a portal's stored ads ---------------------------------------------------


@dataclass(frozen=True)
class AdUsage:
    """A portal's stored ads against its limit, as its profile shows them."""

    stored: int
    limit: int


def ad_limit(portal: Portal, *, max_ads: int) -> int:
    """The most ads the portal may store: the limit an operator set for it, else the
    directory's (`max_ads`: DIRECTORY_PORTAL_MAX_ADS)."""
    return max_ads if portal.max_ads is None else portal.max_ads


def count_ads(session: Session, *, portal_id: int) -> int:
    """The portal's stored ads, expired ones included: an index-only scan of the
    (portal_id, external_id) unique index."""
    return session.scalar(select(func.count()).select_from(Ad).where(Ad.portal_id == portal_id))


def ad_usage(session: Session, *, portal: Portal, max_ads: int) -> AdUsage:
    return AdUsage(
        stored=count_ads(session, portal_id=portal.id), limit=ad_limit(portal, max_ads=max_ads)
    )


def lock_and_count_ads(session: Session, *, portal_id: int) -> int:
    """The portal's ads, counted once this write has written its own, under the portal's
    count lock (until the transaction ends).

    Ordinary writes share the portal's write lock and run side by side: two of them
    counting before they insert could each see room for the last ad, and together pass
    the limit. So a write that created ads takes this lock last, once its rows are
    written, and counts: the next such write waits for it to commit, then counts its ads
    too (each statement reads what has committed before it, READ COMMITTED), so the count
    is exact. Only that tail is serialised; the inserts, the bulk of a write, still run
    side by side, and it is one count per write, whatever its size. A counter kept on the
    portal would spare the count, but every write, deletions included, would queue on
    its one row, and any path that forgot it would make it drift. Taken last, it cannot
    deadlock: its holder waits for no lock on the portal's ads any more."""
    session.execute(
        text("SELECT pg_advisory_xact_lock(:namespace, :portal_id)"),
        {"namespace": AD_COUNT_LOCK_NAMESPACE, "portal_id": portal_id},
    )
    return count_ads(session, portal_id=portal_id)


@dataclass(frozen=True)
class _Existing:
    id: uuid.UUID
    content_hash: str
    visibility: Visibility
    version: int
    expires_at: datetime
    ledger_account: str | None


def _load_existing(session: Session, portal_id: int, external_ids: Iterable[str]):
    # Locked until the transaction ends, always in the same order, so two writes of the
    # same ads wait for each other instead of deadlocking.
    rows = session.execute(
        select(
            Ad.external_id,
            Ad.id,
            Ad.content_hash,
            Ad.visibility,
            Ad.version,
            Ad.expires_at,
            Ad.ledger_account,
        )
        .where(
            Ad.portal_id == portal_id,
            Ad.external_id == func.any(cast(sorted(external_ids), ARRAY(String))),
        )
        .order_by(Ad.external_id)
        .with_for_update()
    )
    return {row[0]: _Existing(*row[1:]) for row in rows}


class _Context:
    """What every item of one write needs, loaded once per write."""

    def __init__(self, session: Session, portal: Portal, operations: Sequence[Operation]):
        self.portal = portal
        self.categories = category_codes(session)
        codes = {
            code
            for op in operations
            if isinstance(op, Upsert)
            for code in (
                *(op.ad.currencies or ()),
                *((op.ad.price.currency,) if op.ad.price else ()),
            )
        } | set(portal.default_currencies)
        self.unknown_currencies = set(unknown_currencies(session, codes=codes))


def _check_ad(ad: AdInput, ctx: _Context, now: datetime, lifetimes: Lifetimes):
    """The rules that need the database or the clock; raises InvalidInput."""
    require_known_category(ctx.categories, ad.category)
    currencies = (
        ad.currencies if ad.currencies is not None else tuple(ctx.portal.default_currencies)
    )
    if not currencies:
        raise InvalidInput(
            "currencies is required: this portal has no default currencies "
            "(set them with PATCH /v1/portals/me)",
            field="currencies",
        )
    unknown = [code for code in currencies if code in ctx.unknown_currencies]
    if unknown:
        raise InvalidInput(
            f"unknown currency code{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            "use codes from GET /v1/currencies (ISO 4217, HOUR, GIFT, BARTER or a "
            "community code such as my-portal:TALENT)",
            field="currencies" if ad.currencies is not None else "default_currencies",
            code="unknown_currency",
        )
    if ad.price is not None and ad.price.currency not in currencies:
        raise InvalidInput(
            f"price.currency {ad.price.currency} must be one of the accepted currencies "
            f"({', '.join(currencies)})",
            field="price.currency",
        )
    if ad.location is None and ad.privacy is not Privacy.HIDDEN:
        raise InvalidInput(
            f"location is required unless privacy is hidden (privacy is {ad.privacy})",
            field="location",
        )
    if ad.expires_at is not None:
        if ad.expires_at <= now:
            raise InvalidInput(
                "expires_at must be in the future; to end an ad now, expire or delete it",
                field="expires_at",
            )
        if ad.expires_at > now + lifetimes.maximum:
            raise InvalidInput(
                f"expires_at must be at most {lifetimes.maximum.days} days ahead",
                field="expires_at",
            )
    return currencies


class _AdError(DirectoryError):
    """A rule broken by the ad of a batch item: its field lies within the item's "ad"."""

    def __init__(self, error: DirectoryError):
        super().__init__(error.message, field=error.field, code=error.code)
        self.status = error.status


def _check_ad_within(ad, ctx, now, lifetimes, reject_errors):
    try:
        return _check_ad(ad, ctx, now, lifetimes)
    except DirectoryError as error:
        if reject_errors:
            raise  # a single ad: the body is the ad, so its fields are top-level
        raise _AdError(error) from None


def _row(ad: AdInput, currencies: tuple[str, ...], now: datetime, lifetimes: Lifetimes) -> dict:
    point = publishable_point(ad.location, ad.privacy)
    return {
        "kind": ad.kind,
        "title": ad.title,
        "body": ad.body,
        "category": ad.category,
        "tags": list(ad.tags),
        "location": None if point is None else point.as_wkt(),
        "privacy": ad.privacy,
        "visibility": ad.visibility,
        "currencies": list(currencies),
        "price_amount": ad.price.amount if ad.price else None,
        "price_currency": ad.price.currency if ad.price else None,
        "price_unit": ad.price.unit if ad.price else None,
        "language": ad.language,
        "images": list(ad.images),
        # In UTC: rows travel as JSON through orjson, which drops the seconds of an offset
        # such as +05:30:15. (The content hash keeps the expiry as sent, as it always has.)
        "expires_at": ad.expires_at.astimezone(UTC) if ad.expires_at else now + lifetimes.default,
        "member": ad.member,
        "ledger_account": ad.ledger_account,
        "accepts_contact": ad.accepts_contact,
    }


def rejection(
    external_id: str | None, error: DirectoryError, *, within: str | None = None
) -> ItemResult:
    """The result of an item refused for `error`: its code and its message by field path,
    `within` the item's "ad" for a rule its ad breaks."""
    return ItemResult(
        external_id, "rejected", error=error.code, errors=error.by_field(within=within)
    )


def duplicate_item(external_id: str, *, first: int) -> InvalidInput:
    """The refusal of an item whose external id an earlier item of the request has: the
    first stands, and what it was told stays true."""
    return InvalidInput(
        f"external_id {external_id!r} appears more than once in this request "
        f"(first at item {first})",
        field="external_id",
        code="duplicate_external_id",
    )


def check_ads(
    session: Session, *, portal_id: int, ads: Sequence[AdInput], lifetimes: Lifetimes
) -> list[DirectoryError | None]:
    """The error each ad would be rejected for (None when it is fine), without writing."""
    portal = session.get_one(Portal, portal_id)
    ctx = _Context(session, portal, [Upsert("", ad) for ad in ads])
    now = datetime.now(UTC)
    errors: list[DirectoryError | None] = []
    for ad in ads:
        try:
            _check_ad(ad, ctx, now, lifetimes)
            errors.append(None)
        except DirectoryError as error:
            errors.append(error)
    return errors


def apply_changes(
    session: Session,
    *,
    portal_id: int,
    operations: Sequence[Operation],
    lifetimes: Lifetimes,
    max_ads: int | None,
    reject_errors: bool = False,
) -> list[ItemResult]:
    """Apply upserts, deletes and expiries of one portal's ads, in one transaction.

    Items that break a rule are returned as rejected with their errors and the others
    are applied, unless `reject_errors` is set: then the first error is raised (the
    single-ad endpoints want a plain 4xx).

    Ads it would create beyond the portal's limit (ad_limit, of `max_ads`) are rejected
    too, the last ones first: updates and deletions never are, even past the limit.
    `max_ads` None checks no limit: for writes that create nothing, a caller that checks
    the count once it is final (a sync commit), and the operator's demo data."""
    if len(operations) > MAX_BATCH_ITEMS:
        raise InvalidInput(f"at most {MAX_BATCH_ITEMS} items per write", field="items")
    now = datetime.now(UTC)
    # First everything that needs no lock: checks, snapping, hashing.
    prepared = _prepare(session, portal_id, operations, now, lifetimes, reject_errors)
    # Then, under the portal's (shared) write lock and the rows' own: classify and write.
    lock_portal_writes(session, portal_id, exclusive=False)
    existing = _load_existing(
        session, portal_id, {op.external_id for op, _ in prepared if op is not None}
    )
    # Whether an ad has expired is judged now that it is locked, not when the request
    # came: a write may wait for the lock, during which the ad may expire (or be expired).
    locked_at = datetime.now(UTC)
    portal = session.get_one(Portal, portal_id)  # loaded by _prepare: no query
    # It depends on the ad only through whether it has a ledger account: twice per write.
    views = {has: _view_of_portal(portal, with_ledger_account=has) for has in (False, True)}

    def view(ledger_account: str | None) -> str:
        return views[ledger_account is not None]

    def in_public_view(current: _Existing) -> bool:
        # An expired ad left public view when it expired (unlogged: the feed tells it by
        # its expiry); what its portal does with it since is the portal's to know.
        return current.visibility is Visibility.PUBLIC and current.expires_at > locked_at

    new_ids = list(_new_ids(len(prepared)))
    results: list[ItemResult | None] = [None] * len(prepared)
    inserts: list[tuple[int, dict]] = []  # (index in prepared, row)
    updates: list[dict] = []
    deletions: list[uuid.UUID] = []
    changes: list[tuple[uuid.UUID, int, ChangeOp]] = []

    def change(ad_id: uuid.UUID, op: ChangeOp) -> None:
        changes.append((ad_id, portal_id, op))

    def decide(index: int, op: Operation, outcome, current: _Existing | None) -> ItemResult:
        if not (isinstance(op, Expire) and current is None):  # that is a 404 anyway
            etag = None
            if current is not None:
                expired = current.expires_at <= locked_at
                etag = make_etag(current.id, current.version, view(current.ledger_account), expired)
            _check_preconditions(op.preconditions, current_etag=etag)
        if isinstance(op, Upsert):
            row, digests = outcome
            # Sending an expired ad again renews it, even when nothing else changed.
            if (
                current is not None
                and current.content_hash in digests
                and current.expires_at > locked_at
            ):
                return ItemResult(
                    op.external_id,
                    "unchanged",
                    current.id,
                    current.version,
                    view=view(current.ledger_account),
                )
            if current is None:
                ad_id = new_ids[index]  # the same one if decided again
                inserts.append(
                    (
                        index,
                        row | {"id": ad_id, "portal_id": portal_id, "external_id": op.external_id},
                    )
                )
                if op.ad.visibility is Visibility.PUBLIC:
                    change(ad_id, ChangeOp.UPSERT)
                return ItemResult(
                    op.external_id, "created", ad_id, 1, view=view(op.ad.ledger_account)
                )
            version = current.version + 1
            updates.append(row | {"id": current.id, "version": version})
            if op.ad.visibility is Visibility.PUBLIC:
                change(current.id, ChangeOp.UPSERT)
            elif in_public_view(current):
                change(current.id, ChangeOp.DELETE)  # it left public view
            return ItemResult(
                op.external_id, "updated", current.id, version, view=view(op.ad.ledger_account)
            )
        if isinstance(op, Delete):
            if current is None:
                return ItemResult(op.external_id, "unchanged")
            deletions.append(current.id)
            if in_public_view(current):
                change(current.id, ChangeOp.DELETE)
            return ItemResult(op.external_id, "deleted", current.id, current.version)
        # Expire
        if current is None:
            raise NotFound(f"no ad with external_id {op.external_id!r}", field="external_id")
        expired_view = {"view": view(current.ledger_account), "expired": True}
        if current.expires_at <= locked_at:
            return ItemResult(
                op.external_id, "unchanged", current.id, current.version, **expired_view
            )
        version = current.version + 1
        updates.append({"id": current.id, "version": version, "expires_at": locked_at})
        if current.visibility is Visibility.PUBLIC:
            change(current.id, ChangeOp.DELETE)  # it left public view
        return ItemResult(op.external_id, "expired", current.id, version, **expired_view)

    to_decide = [index for index, (op, _) in enumerate(prepared) if op is not None]
    for index, (op, outcome) in enumerate(prepared):
        if op is None:
            results[index] = outcome  # rejected while preparing
    for _ in range(CREATION_RACE_ROUNDS):
        for index in to_decide:
            op, outcome = prepared[index]
            try:
                results[index] = decide(index, op, outcome, existing.get(op.external_id))
            except DirectoryError as error:
                if reject_errors:
                    raise
                results[index] = rejection(op.external_id, error)
        # In external-id order, like the row locks, so that two writes creating the same
        # new ads meet at the same first key.
        inserts.sort(key=lambda item: item[1]["external_id"])
        if not inserts:
            break
        raced = []
        try:
            with unique_conflicts(session, {ADS_EXTERNAL_ID_KEY: _CreatedMeanwhile()}):
                insert_rows(session, table="ads", rows=[row for _, row in inserts])
        except _CreatedMeanwhile:
            # A write that created one of them meanwhile has committed (the insert
            # waited for it): they are all decided again, that one as the update it now
            # is, like a write that came after it. A plain insert in a savepoint, rather
            # than ON CONFLICT DO NOTHING, which makes every row's insertion speculative
            # for the sake of a rare race.
            raced = list(inserts)
        inserts.clear()
        if not raced:
            break
        lost_ids = {row["id"] for _, row in raced}
        changes[:] = [entry for entry in changes if entry[0] not in lost_ids]
        to_decide = [index for index, _ in raced]
        existing = _load_existing(session, portal_id, {row["external_id"] for _, row in raced})
    else:
        raise Conflict(
            "other writes kept creating and deleting these ads at the same time; retry",
            field="external_id",
        )

    if updates:
        _bulk_update(session, updates)
    if deletions:
        session.execute(delete(Ad).where(Ad.id.in_(deletions)))
    created = [index for index, result in enumerate(results) if result.status == "created"]
    if created and max_ads is not None:
        # Counted with this write's deletions done: what the portal would store.
        stored, limit = (
            lock_and_count_ads(session, portal_id=portal_id),
            ad_limit(portal, max_ads=max_ads),
        )
        beyond = min(len(created), stored - limit)
        if beyond > 0:
            refused = created[-beyond:]
            error = Conflict(
                f"the portal may store at most {limit} ads and stores "
                f"{stored - len(refused)}: this ad was not created; delete ads the portal "
                "no longer needs, or ask the directory's operators for a higher limit",
                code="too_many_ads",
            )
            if reject_errors:
                raise error
            refused_ids = {results[index].id for index in refused}
            session.execute(delete(Ad).where(Ad.id.in_(refused_ids)))
            changes[:] = [entry for entry in changes if entry[0] not in refused_ids]
            for index in refused:
                results[index] = rejection(results[index].external_id, error)
    _log_changes(session, changes)
    return results  # type: ignore[return-value]  # every index was decided


def _new_ids(count: int) -> Iterator[uuid.UUID]:
    """Version 7 UUIDs (RFC 9562): the creation time in milliseconds, then 74 random bits
    (from one read of the OS's random source for the whole batch). New ids sort after
    older ones, so the primary key index grows at its end instead of at random pages.
    The time they reveal is public anyway, as created_at."""
    millis = time.time_ns() // 1_000_000
    pool = os.urandom(10 * count)
    for start in range(0, len(pool), 10):
        random_bits = int.from_bytes(pool[start : start + 10], "big")
        # 48 bits of time | version 7 | 12 random bits | variant 0b10 | 62 random bits
        yield uuid.UUID(
            int=(millis << 80)
            | (0x7 << 76)
            | (((random_bits >> 62) & 0xFFF) << 64)
            | (0b10 << 62)
            | (random_bits & ((1 << 62) - 1))
        )


def _prepare(session, portal_id, operations, now, lifetimes, reject_errors):
    """Per operation: (op, (row, digests)) for an upsert that passed the checks,
    (op, None) for a delete or expiry, (None, rejected ItemResult) for a refused item."""
    portal = session.get_one(Portal, portal_id)
    ctx = _Context(session, portal, operations)
    first_index: dict[str, int] = {}
    prepared: list[tuple[Operation | None, object]] = []
    for index, op in enumerate(operations):
        try:
            # Whatever became of the first item of an external id, even one the schemas
            # refused, it stands: a later one would contradict what it was told.
            if op.external_id in first_index:
                raise duplicate_item(op.external_id, first=first_index[op.external_id])
            if op.external_id is not None:
                first_index[op.external_id] = index
            if isinstance(op, Rejected):
                unparsed = ItemResult(
                    op.external_id, "rejected", error=VALIDATION_ERROR, errors=op.errors
                )
                prepared.append((None, unparsed))
            elif isinstance(op, Upsert):
                currencies = _check_ad_within(op.ad, ctx, now, lifetimes, reject_errors)
                row = _row(op.ad, currencies, now, lifetimes)
                digests = content_digests(row, op.ad.expires_at)
                row["content_hash"] = digests[0]
                prepared.append((op, (row, digests)))
            else:
                prepared.append((op, None))
        except DirectoryError as error:
            if reject_errors:
                raise
            within = "ad" if isinstance(error, _AdError) else None
            prepared.append((None, rejection(op.external_id, error, within=within)))
    return prepared


def _log_changes(session: Session, changes: list[tuple[uuid.UUID, int, ChangeOp]]) -> None:
    if changes:
        insert_rows(
            session,
            table="ad_changes",
            rows=[{"ad_id": ad_id, "portal_id": portal, "op": op} for ad_id, portal, op in changes],
        )


def _bulk_update(session: Session, updates: list[dict]) -> None:
    # Rows of one shape go in one statement; expiries have fewer columns than upserts.
    by_shape: dict[tuple[str, ...], list[dict]] = {}
    for row in updates:
        by_shape.setdefault(tuple(row), []).append(row)
    for rows in by_shape.values():
        update_rows(session, table="ads", rows=rows)


def _check_preconditions(preconditions: Preconditions, *, current_etag: str | None) -> None:
    """RFC 9110 section 13.2.2: If-Match first, then If-None-Match, against the ETag of
    the ad as it is (None: there is none); a write whose condition is false is refused
    with 412 (never applied, nor silently ignored)."""
    etag = current_etag
    if_match, if_none_match = preconditions.if_match, preconditions.if_none_match
    if if_match is not None and not etag_matches(if_match, etag, weak=False, name="If-Match"):
        raise PreconditionFailed(
            "If-Match was given but the ad does not exist"
            if etag is None
            else "the ad has changed since that ETag: fetch it again, then retry",
            field="If-Match",
            details={"location": "headers"},
        )
    if if_none_match is not None and etag_matches(
        if_none_match, etag, weak=True, name="If-None-Match"
    ):
        raise PreconditionFailed(
            "If-None-Match: * was given but the ad exists"
            if if_none_match.strip() == "*"
            else "If-None-Match names the ad's current ETag",
            field="If-None-Match",
            details={"location": "headers"},
        )


def replace_all(
    session: Session,
    *,
    portal_id: int,
    operations: Sequence[Operation],
    lifetimes: Lifetimes,
    max_ads: int,
) -> ReplaceSummary:
    """The batch is the portal's complete set: upsert it, delete every other ad.
    An ad whose item was rejected is kept as it is, never deleted by omission."""
    if any(isinstance(op, Delete | Expire) for op in operations):
        raise InvalidInput(
            "a replace batch holds only upserts: ads left out of it are deleted",
            field="items",
        )
    unnamed = next((index for index, op in enumerate(operations) if not op.external_id), None)
    if unnamed is not None:
        # Its ad could not be kept as it is: it would be deleted by omission.
        raise InvalidInput(
            f"item {unnamed} of a replace batch has no valid external_id, so the ad it "
            "stands for would be deleted; nothing was applied: fix the item, then send "
            "the batch again",
            field=f"items.{unnamed}.external_id",
        )
    lock_portal_writes(session, portal_id, exclusive=True)
    # The others go first, so that the limit on ads counts the portal's ads as the batch
    # leaves them, not with those it replaces.
    keep = [op.external_id for op in operations if op.external_id]
    deleted = delete_all_but(session, portal_id=portal_id, keep=keep)
    results = apply_changes(
        session, portal_id=portal_id, operations=operations, lifetimes=lifetimes, max_ads=max_ads
    )
    return ReplaceSummary(results=results, deleted=deleted)


def delete_all_but(session: Session, *, portal_id: int, keep: Sequence[str] | Select) -> int:
    """Delete the portal's ads whose external id is not kept; `keep` is a list of ids
    or, for large sets, a SELECT of external ids. Returns how many were deleted.
    The caller holds the portal's write lock exclusively."""
    kept = (
        keep
        if isinstance(keep, Select)
        else select(func.unnest(cast(keep, ARRAY(String))).column_valued("external_id"))
    ).subquery()
    # NOT EXISTS, not NOT IN: PostgreSQL plans NOT IN (subquery) as an anti-join never,
    # and checks each ad against the kept ids one by one once they do not fit in
    # work_mem as a hash table (100,000 ids of 128 characters: past the statement
    # timeout, where the anti-join takes 0.2 s). The two agree: no external id is null.
    gone = session.execute(
        delete(Ad)
        .where(
            Ad.portal_id == portal_id,
            ~exists().where(kept.c.external_id == Ad.external_id),
        )
        .returning(Ad.id, Ad.visibility, Ad.expires_at)
    ).all()
    now = datetime.now(UTC)
    # Only those in public view: an expired ad left it when it expired (apply_changes).
    _log_changes(
        session,
        [
            (ad_id, portal_id, ChangeOp.DELETE)
            for ad_id, visibility, expires_at in gone
            if visibility is Visibility.PUBLIC and expires_at > now
        ],
    )
    return len(gone)


def delete_ads(
    session: Session, *, portal_id: int, external_ids: Sequence[str], lifetimes: Lifetimes
) -> int:
    """Delete these ads of the portal as a DELETE of each would (the feed and the search
    index are told), however many there are. Returns how many were deleted."""
    deleted = 0
    for start in range(0, len(external_ids), MAX_BATCH_ITEMS):
        results = apply_changes(
            session,
            portal_id=portal_id,
            operations=[Delete(id_) for id_ in external_ids[start : start + MAX_BATCH_ITEMS]],
            lifetimes=lifetimes,
            max_ads=None,
        )
        deleted += sum(result.status == "deleted" for result in results)
    return deleted


# --- reading -----------------------------------------------------------------------------

RECORD_COLUMNS = (
    Ad.id,
    Portal.slug,
    Ad.external_id,
    Ad.kind,
    Ad.title,
    Ad.body,
    Ad.category,
    Ad.tags,
    func.ST_Y(cast(Ad.location, Geometry)).label("lat"),
    func.ST_X(cast(Ad.location, Geometry)).label("lon"),
    Ad.privacy,
    Ad.visibility,
    Ad.currencies,
    Ad.price_amount,
    Ad.price_currency,
    Ad.price_unit,
    Ad.language,
    Ad.images,
    Ad.expires_at,
    Ad.member,
    Ad.ledger_account,
    Ad.accepts_contact,
    Ad.version,
    Ad.created_at,
    Ad.updated_at,
    Portal.ledger_protocol,
    Portal.ledger_url,
    Portal.ledger_node,
    # The website names the ads everywhere (global_id) only once the portal has proved it
    # is its own (services.websites).
    case((Portal.website_verified_at.is_not(None), Portal.website)).label("verified_website"),
)


def records_query():
    return select(*RECORD_COLUMNS).join(Portal, Portal.id == Ad.portal_id)


# Members by value, for rows read without SQLAlchemy's types (search): a dict look-up
# is several times cheaper than calling the enum, for four columns of each hit. A
# StrEnum member hashes as its value, so members look themselves up too.
_KINDS, _PRIVACIES, _VISIBILITIES, _UNITS, _PROTOCOLS = (
    {member.value: member for member in enum_type}
    for enum_type in (AdKind, Privacy, Visibility, PriceUnit, LedgerProtocol)
)


def record_from_row(row) -> AdRecord:
    """An AdRecord from RECORD_COLUMNS' values; enums may come as their text (from SQL
    run without SQLAlchemy's types, as search does)."""
    (ad_id, slug, external_id, kind, title, body, category, tags, lat, lon, privacy,
     visibility, currencies, amount, currency, unit, language, images, expires_at,
     member, ledger_account, accepts_contact, version, created_at,
     updated_at, ledger_protocol, ledger_url, ledger_node, verified_website) = row  # fmt: skip
    identity = global_id_prefix(verified_website)
    price = None if amount is None else Price(amount=amount, currency=currency, unit=_UNITS[unit])
    payment = None
    ledger = None
    if ledger_account is not None and ledger_url is not None:
        ledger = (_PROTOCOLS[ledger_protocol].value, ledger_url, ledger_node)
        payment = Payment(
            protocol=_PROTOCOLS[ledger_protocol],
            ledger_url=ledger_url,
            node=ledger_node,
            payee=ledger_account,
            currencies=currencies,
            price=price,
        )
    return AdRecord(
        id=ad_id,
        portal=slug,
        external_id=external_id,
        kind=_KINDS[kind],
        title=title,
        body=body,
        category=category,
        tags=tags,
        location=None if lat is None else Point(lat, lon),
        privacy=_PRIVACIES[privacy],
        visibility=_VISIBILITIES[visibility],
        currencies=currencies,
        price=price,
        language=language,
        images=images,
        expires_at=expires_at,
        member=member,
        ledger_account=ledger_account,
        accepts_contact=accepts_contact,
        version=version,
        created_at=created_at,
        updated_at=updated_at,
        payment=payment,
        global_id=None if identity is None else identity + external_id,
        view=portal_view(identity, ledger),
    )


# --- global identity ---------------------------------------------------------------------

DEFAULT_PORTS = {"http": 80, "https": 443}


# Cached: record_from_row asks for every ad it reads (every search hit), and a directory
# has few portals; parsing a URL each time would cost more than the rest of the record.
@functools.lru_cache(maxsize=4096)
def global_id_prefix(website: str | None) -> str | None:
    """What an ad's global id starts with: its portal's website, normalised, and "#".

    A global id (`https://sel-lyon.example.org#annonce-1234`) names an ad wherever it is
    copied: the same portal publishing the same ad in two directories gets the same id in
    both, which is how a client searching several directories recognises it. Normalised
    so that spellings of one site agree: scheme and host in lower case (an international
    host in its ASCII form), the default port, user info, query, fragment and trailing
    slashes dropped; the path is kept as written. It cannot be ambiguous: the normalised
    website holds no "#" (that would start its fragment), and external ids hold none
    (EXTERNAL_ID), so the id splits at its one "#". None when the portal has no http(s)
    website: nothing would then tell its ads from another portal's across directories.
    Ads take it from a verified website only (RECORD_COLUMNS' verified_website)."""
    if not website:
        return None
    try:
        parts = urlsplit(website.strip())
        port = parts.port
    except ValueError:  # an unparseable port or host (portals created from the CLI)
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in DEFAULT_PORTS or not host:
        return None
    # A host IDNA 2003 cannot encode stays as it is, in lower case.
    with contextlib.suppress(UnicodeError):
        host = host.encode("idna").decode("ascii")
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if port is not None and port != DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    return f"{scheme}://{host}{parts.path.rstrip('/')}#"


def public_condition():
    """What the world may see: public, unexpired, of an active portal."""
    return (
        (Ad.visibility == Visibility.PUBLIC)
        & (Ad.expires_at > func.now())
        & (Portal.status == PortalStatus.ACTIVE)
    )


def get_public_ad(session: Session, *, ad_id: uuid.UUID) -> AdRecord:
    row = session.execute(records_query().where(Ad.id == ad_id, public_condition())).one_or_none()
    if row is None:
        raise NotFound(f"no public ad with id {ad_id}", field="ad_id")
    return record_from_row(row)


def get_public_rows(session: Session, *, ad_ids: list[uuid.UUID]) -> dict[uuid.UUID, Row]:
    """The RECORD_COLUMNS values of those of the ads that are public, by id."""
    rows = session.execute(records_query().where(Ad.id.in_(ad_ids), public_condition()))
    return {row.id: row for row in rows}


def get_public_ads(session: Session, *, ad_ids: list[uuid.UUID]) -> dict[uuid.UUID, AdRecord]:
    rows = get_public_rows(session, ad_ids=ad_ids)
    return {ad_id: record_from_row(row) for ad_id, row in rows.items()}


def get_own_ad(session: Session, *, portal_id: int, external_id: str) -> AdRecord:
    row = session.execute(
        records_query().where(Ad.portal_id == portal_id, Ad.external_id == external_id)
    ).one_or_none()
    if row is None:
        raise NotFound(f"no ad with external_id {external_id!r}", field="external_id")
    return record_from_row(row)


def list_own_ads(
    session: Session,
    *,
    portal_id: int,
    after: str | None,
    limit: int,
    include_expired: bool = True,
) -> tuple[list[AdRecord], str | None]:
    """A page of the portal's ads in external-id order, and the id to continue after."""
    query = records_query().where(Ad.portal_id == portal_id)
    if after is not None:
        query = query.where(Ad.external_id > after)
    if not include_expired:
        query = query.where(Ad.expires_at > func.now())
    rows = session.execute(query.order_by(Ad.external_id).limit(limit + 1)).all()
    records = [record_from_row(row) for row in rows[:limit]]
    return records, (records[-1].external_id if len(rows) > limit else None)


def upsert_ad(
    session: Session,
    *,
    portal_id: int,
    external_id: str,
    ad: AdInput,
    preconditions: Preconditions = NO_PRECONDITIONS,
    lifetimes: Lifetimes,
    max_ads: int,
) -> tuple[ItemResult, AdRecord]:
    (result,) = apply_changes(
        session,
        portal_id=portal_id,
        operations=[Upsert(external_id, ad, preconditions)],
        lifetimes=lifetimes,
        max_ads=max_ads,
        reject_errors=True,
    )
    return result, get_own_ad(session, portal_id=portal_id, external_id=external_id)


def delete_ad(
    session: Session,
    *,
    portal_id: int,
    external_id: str,
    preconditions: Preconditions = NO_PRECONDITIONS,
    lifetimes: Lifetimes,
) -> bool:
    """True when an ad was deleted, False when there was none (deleting twice is harmless,
    unless If-Match asked for an ad)."""
    (result,) = apply_changes(
        session,
        portal_id=portal_id,
        operations=[Delete(external_id, preconditions)],
        lifetimes=lifetimes,
        max_ads=None,
        reject_errors=True,
    )
    return result.status == "deleted"


def expire_ad(
    session: Session,
    *,
    portal_id: int,
    external_id: str,
    preconditions: Preconditions = NO_PRECONDITIONS,
    lifetimes: Lifetimes,
) -> AdRecord:
    apply_changes(
        session,
        portal_id=portal_id,
        operations=[Expire(external_id, preconditions)],
        lifetimes=lifetimes,
        max_ads=None,
        reject_errors=True,
    )
    return get_own_ad(session, portal_id=portal_id, external_id=external_id)
