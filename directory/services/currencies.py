"""The registry of currencies an ad may accept.

Built in: every active ISO 4217 currency, hours (time banks), gift and barter.
Registered: the community currencies of portals' ledgers, namespaced by portal slug."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import cache

import pycountry
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from directory.db import add_unique
from directory.errors import Conflict, Forbidden, InvalidInput, NotFound
from directory.models import Ad, Currency, Portal

COMMUNITY_CODE = re.compile(r"^[A-Z][A-Z0-9]{1,11}$")
# Listed in error messages when an unknown code is refused; the full list is one GET away.
MAX_CODES_IN_MESSAGE = 12
# Community currencies of one portal: as many as an ad may accept. GET /v1/currencies
# lists every portal's to anyone, unpaged, so without a bound one portal made each
# listing as costly as it liked (2,000 codes: ten times the time and 24 times the size).
MAX_CURRENCIES_PER_PORTAL = 20
# Where the code of GET/PATCH/DELETE /v1/currencies/{code} comes from: errors about it
# name the path, not a JSON body (a GET or DELETE has none).
IN_PATH = {"location": "path"}


class CurrencyKind(enum.StrEnum):
    NATIONAL = "national"
    TIME = "time"
    GIFT = "gift"
    BARTER = "barter"
    COMMUNITY = "community"


@dataclass(frozen=True)
class CurrencyInfo:
    code: str
    kind: CurrencyKind
    name: str
    portal: str | None = None
    symbol: str | None = None
    value_hours: Decimal | None = None
    value_amount: Decimal | None = None
    value_currency: str | None = None


# Codes that are not ISO 4217; ISO reserves X-prefixed codes, so these cannot clash.
HOUR = "HOUR"
GIFT = "GIFT"
BARTER = "BARTER"


@cache
def builtin_currencies() -> dict[str, CurrencyInfo]:
    builtin = {
        HOUR: CurrencyInfo(HOUR, CurrencyKind.TIME, "Hour of time", value_hours=Decimal(1)),
        GIFT: CurrencyInfo(GIFT, CurrencyKind.GIFT, "Gift (nothing in return)"),
        BARTER: CurrencyInfo(BARTER, CurrencyKind.BARTER, "Barter (a swap of goods or services)"),
    }
    for currency in sorted(pycountry.currencies, key=lambda c: c.alpha_3):
        # X-codes are precious metals, testing and "no currency", not things to pay in.
        if not currency.alpha_3.startswith("X"):
            builtin[currency.alpha_3] = CurrencyInfo(
                currency.alpha_3, CurrencyKind.NATIONAL, currency.name
            )
    return builtin


def _community_info(currency: Currency, portal_slug: str) -> CurrencyInfo:
    return CurrencyInfo(
        code=currency.code,
        kind=CurrencyKind.COMMUNITY,
        name=currency.name,
        portal=portal_slug,
        symbol=currency.symbol,
        value_hours=currency.value_hours,
        value_amount=currency.value_amount,
        value_currency=currency.value_currency,
    )


def list_currencies(
    session: Session, *, kind: CurrencyKind | None = None, portal: str | None = None
) -> list[CurrencyInfo]:
    result: list[CurrencyInfo] = []
    if portal is None and kind in (None, *set(CurrencyKind) - {CurrencyKind.COMMUNITY}):
        result.extend(c for c in builtin_currencies().values() if kind in (None, c.kind))
    if kind in (None, CurrencyKind.COMMUNITY):
        query = select(Currency, Portal.slug).join(Portal).order_by(Currency.code)
        if portal is not None:
            query = query.where(Portal.slug == portal)
        result.extend(_community_info(row, slug) for row, slug in session.execute(query))
    return result


def get_currency(session: Session, *, code: str) -> CurrencyInfo:
    if code in builtin_currencies():
        return builtin_currencies()[code]
    row = session.execute(
        select(Currency, Portal.slug).join(Portal).where(Currency.code == code)
    ).one_or_none()
    if row is None:
        raise NotFound(f"no currency with code {code!r}", field="code", details=IN_PATH)
    return _community_info(*row)


def require_known_currencies(
    session: Session, *, codes: list[str], field: str, portal: Portal | None = None
) -> None:
    """Refuse codes that are not registered, naming the allowed ones. Community codes are
    share-locked until the transaction ends, so they cannot be deleted under our feet."""
    unknown = unknown_currencies(session, codes=codes)
    if unknown:
        raise InvalidInput(
            _unknown_message(session, unknown, portal), field=field, code="unknown_currency"
        )


def unknown_currencies(session: Session, *, codes: list[str] | set[str]) -> list[str]:
    builtin = builtin_currencies()
    community = sorted({code for code in codes if code not in builtin})
    if not community:
        return []
    found = set(
        session.scalars(
            select(Currency.code).where(Currency.code.in_(community)).with_for_update(read=True)
        )
    )
    return [code for code in community if code not in found]


def _unknown_message(session: Session, unknown: list[str], portal: Portal | None) -> str:
    allowed = [HOUR, GIFT, BARTER, "any ISO 4217 code such as EUR"]
    if portal is not None:
        own = session.scalars(
            select(Currency.code).where(Currency.portal_id == portal.id).order_by(Currency.code)
        ).all()
        allowed = list(own[:MAX_CODES_IN_MESSAGE]) + allowed
    return (
        f"unknown currency code{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
        f"use {', '.join(allowed)}, or a community code from GET /v1/currencies"
    )


@dataclass(frozen=True)
class Registration:
    currency: CurrencyInfo
    # False: the portal had registered it already, identically (a registration sent
    # again after its answer was lost), and nothing changed.
    created: bool


# What a registration says of a currency besides its code: a registration sent again is
# answered as the first was only when all of them are the same.
REGISTERED_ATTRIBUTES = ("name", "symbol", "value_hours", "value_amount", "value_currency")


def register_currency(
    session: Session,
    *,
    portal_id: int,
    code: str,
    name: str,
    symbol: str | None = None,
    value_hours: Decimal | None = None,
    value_amount: Decimal | None = None,
    value_currency: str | None = None,
) -> Registration:
    """Register a community currency; `code` is the short code, namespaced here. The
    same registration sent again (its answer was lost) registers nothing and answers
    the currency as it is; a registration of the code with other attributes is refused."""
    # Locked, so that two registrations at once cannot both pass the count, and the
    # second of two identical ones finds the first's currency.
    portal = session.get_one(Portal, portal_id, with_for_update=True)
    if not COMMUNITY_CODE.fullmatch(code):
        raise InvalidInput(
            "code must be 2 to 12 capital letters or digits, starting with a letter",
            field="code",
        )
    _check_value(value_amount, value_currency, value_hours)
    full_code = f"{portal.slug}:{code}"
    asked = {
        "name": name,
        "symbol": symbol,
        "value_hours": value_hours,
        "value_amount": value_amount,
        "value_currency": value_currency,
    }
    existing = session.get(Currency, full_code)
    if existing is not None:
        # Before the count: the registration that reached the limit, sent again,
        # registers nothing more.
        return Registration(_registered_already(existing, portal, asked), created=False)
    registered = session.scalar(
        select(func.count()).select_from(Currency).where(Currency.portal_id == portal.id)
    )
    if registered >= MAX_CURRENCIES_PER_PORTAL:
        raise Conflict(
            f"a portal registers at most {MAX_CURRENCIES_PER_PORTAL} community currencies; "
            "delete one it no longer uses first",
            field="code",
            code="too_many_currencies",
        )
    currency = Currency(code=full_code, portal_id=portal.id, **asked)
    add_unique(
        session,
        currency,
        conflicts={
            "pk_currencies": Conflict(f"currency {full_code} is registered already", field="code")
        },
    )
    session.refresh(currency)  # the values as stored (numeric scale applied)
    return Registration(_community_info(currency, portal.slug), created=True)


def _registered_already(existing: Currency, portal: Portal, asked: dict) -> CurrencyInfo:
    """The currency registered already, if `asked` registers it again identically."""
    if existing.portal_id != portal.id:  # cannot be while slugs never change
        raise Conflict(f"currency {existing.code} is registered already", field="code")
    # Decimals compare by value: "1.5" asks for what is stored as 1.500000.
    differing = [name for name in REGISTERED_ATTRIBUTES if getattr(existing, name) != asked[name]]
    if differing:
        raise Conflict(
            f"currency {existing.code} is registered already, with another "
            f"{' and '.join(differing)}; a registration sent again succeeds only when it "
            f"is the same: change the currency with PATCH /v1/currencies/{existing.code}",
            field="code",
        )
    return _community_info(existing, portal.slug)


def _check_value(
    value_amount: Decimal | None, value_currency: str | None, value_hours: Decimal | None = None
) -> None:
    for name, value in (("value_amount", value_amount), ("value_hours", value_hours)):
        if value is not None and value <= 0:
            raise InvalidInput(f"{name} must be greater than 0", field=name)
    if (value_amount is None) != (value_currency is None):
        raise InvalidInput(
            "value_amount and value_currency go together: give both or neither",
            field="value_currency" if value_currency is None else "value_amount",
        )
    if value_currency is not None and builtin_currencies().get(value_currency, None) is None:
        raise InvalidInput(
            f"value_currency must be an ISO 4217 code such as EUR, not {value_currency!r}",
            field="value_currency",
        )
    if value_currency is not None and builtin_currencies()[value_currency].kind != "national":
        raise InvalidInput(
            f"value_currency must be a national currency, not {value_currency}",
            field="value_currency",
        )


def _owned_currency(session: Session, *, portal_id: int, code: str) -> Currency:
    currency = session.scalar(select(Currency).where(Currency.code == code).with_for_update())
    if currency is None:
        raise NotFound(f"no community currency with code {code!r}", field="code", details=IN_PATH)
    if currency.portal_id != portal_id:
        raise Forbidden(f"currency {code} belongs to another portal", field="code", details=IN_PATH)
    return currency


def update_currency(session: Session, *, portal_id: int, code: str, changes: dict) -> CurrencyInfo:
    currency = _owned_currency(session, portal_id=portal_id, code=code)
    merged_amount = changes.get("value_amount", currency.value_amount)
    merged_currency = changes.get("value_currency", currency.value_currency)
    _check_value(merged_amount, merged_currency, changes.get("value_hours"))
    for name, value in changes.items():
        setattr(currency, name, value)
    session.flush()
    session.refresh(currency)
    return _community_info(currency, session.get_one(Portal, portal_id).slug)


def delete_currency(session: Session, *, portal_id: int, code: str) -> None:
    """Delete one of the portal's community currencies. One of its own codes that is not
    registered (any more) is deleted already: deleting twice is harmless, as a deletion
    retried after its answer was lost must be."""
    try:
        currency = _owned_currency(session, portal_id=portal_id, code=code)
    except NotFound:
        if code.startswith(f"{session.get_one(Portal, portal_id).slug}:"):
            return
        raise
    in_use = session.scalar(
        select(Ad.id).where(Ad.currencies.contains([code]) | (Ad.price_currency == code)).limit(1)
    )
    in_defaults = session.scalar(
        select(Portal.slug).where(Portal.default_currencies.contains([code])).limit(1)
    )
    if in_use is not None or in_defaults is not None:
        raise Conflict(
            f"currency {code} is still accepted by ads or set as a portal default; "
            "change those first",
            field="code",
            code="currency_in_use",
            details=IN_PATH,
        )
    session.delete(currency)
    session.flush()
