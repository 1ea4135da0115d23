"""The `payment` block of an ad: where and whom to pay. The directory only says this;
the payment itself is made on the ledger by the payer's own client."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

import msgspec

# Plain http sends the payer's key in clear: only to this machine (tests, a local node).
LOOPBACK_NAMES = {"localhost"}
DEFAULT_PORTS = {"http": 80, "https": 443}


class NotPayable(ValueError):
    """The ad cannot be paid: it carries no payment block (its portal has no ledger or
    the ad no account), or one that lacks a field or contradicts itself."""


@dataclass(frozen=True)
class Price:
    amount: Decimal
    currency: str
    unit: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Price:
        _require(data, ("amount", "currency", "unit"), within="payment block's price")
        try:
            amount = Decimal(data["amount"])
        except (InvalidOperation, TypeError, ValueError):
            raise NotPayable(
                f"this ad cannot be paid: its price's amount {data['amount']!r} is not a number"
            ) from None
        if not amount.is_finite():
            raise NotPayable(f"this ad cannot be paid: its price's amount is {amount}")
        return cls(amount=amount, currency=data["currency"], unit=data["unit"])


@dataclass(frozen=True)
class Payment:
    protocol: str  # "credit-commons"
    ledger_url: str  # the ledger node's base URL
    node: str  # the node's name on that ledger
    payee: str  # the advertiser's account on the node
    currencies: tuple[str, ...]
    price: Price | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Payment:
        _require(data, ("protocol", "ledger_url", "node", "payee"), within="payment block")
        for name in ("protocol", "ledger_url", "node", "payee"):
            if not isinstance(data[name], str):
                raise NotPayable(f"this ad cannot be paid: its payment block's {name} is no text")
            if not data[name].isprintable():
                # Shown to the payer (the pay command prints them): an escape sequence
                # could rewrite what the terminal shows of the payment.
                raise NotPayable(
                    f"this ad cannot be paid: its payment block's {name} holds control characters"
                )
        _check_ledger_url(data["ledger_url"])
        currencies = data.get("currencies") or ()
        if not isinstance(currencies, list | tuple) or not all(
            isinstance(c, str) for c in currencies
        ):
            raise NotPayable(
                "this ad cannot be paid: its payment block's currencies are not a list of codes"
            )
        price = data.get("price")
        return cls(
            protocol=data["protocol"],
            ledger_url=data["ledger_url"],
            node=data["node"],
            payee=data["payee"],
            currencies=tuple(currencies),
            price=None if price is None else Price.from_json(price),
        )

    @classmethod
    def of(cls, ad: Any) -> Payment:
        """The payment block of an ad: a Payment, an ad or search hit of the client
        (`models.PublicAd`, `models.SearchHit`), or an ad's JSON as a mapping."""
        if isinstance(ad, Payment):
            return ad
        payment = ad.get("payment") if isinstance(ad, Mapping) else getattr(ad, "payment", None)
        if payment is None:
            raise NotPayable("this ad cannot be paid: it has no payment block")
        if isinstance(payment, Payment):
            return payment
        if isinstance(payment, msgspec.Struct):
            payment = msgspec.to_builtins(payment)
        return cls.from_json(payment)


def same_ledger(url: str, other: str) -> bool:
    """Whether two ledger URLs name one node: scheme and host in any case, the default
    port written or not, a trailing slash or not."""
    return ledger_identity(url) == ledger_identity(other)


def ledger_identity(url: str) -> tuple:
    """What names a ledger node in its URL, the same however it is spelt (see
    same_ledger)."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return (url,)
    return (parts.scheme.lower(), parts.hostname, port, parts.path.rstrip("/"))


def _check_ledger_url(url: str) -> None:
    """The payer's client sends the payer's key to this URL: refuse one that would carry it
    in clear to another machine, that holds user info, or that paths cannot be joined to
    (a query or a fragment swallows them: `https://l.org/?t=1` + `/workflows`)."""
    problem = _ledger_url_problem(url)
    if problem:
        raise NotPayable(f"this ad cannot be paid: its ledger_url {url!r} {problem}")


def _ledger_url_problem(url: str) -> str | None:
    if not url.isascii() or any(not char.isprintable() or char.isspace() for char in url):
        return "holds spaces, control or non-ASCII characters"
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises for a port that is no number
    except ValueError:
        return "is not a valid URL (check the host's brackets and the port)"
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not hostname:
        return "is not an absolute https URL"
    if "@" in parts.netloc:
        return "holds a user name or password"
    if parts.query or parts.fragment or "?" in url or "#" in url:
        return "has a query or a fragment"
    if scheme == "http" and not is_loopback(hostname):
        return "uses http to another machine: the payer's key would travel in clear"
    return None


def is_loopback(hostname: str) -> bool:
    """Whether a URL's host is this machine by its loopback name or address: where plain
    http stays on the machine."""
    if hostname in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _require(data: Any, names: tuple[str, ...], *, within: str) -> None:
    # The block is JSON of a directory's (or of whoever handed it on): anything at all.
    if not isinstance(data, Mapping):
        raise NotPayable(f"this ad cannot be paid: its {within} is not an object")
    missing = [name for name in names if name not in data]
    if missing:
        raise NotPayable(f"this ad cannot be paid: its {within} has no {', '.join(missing)}")
