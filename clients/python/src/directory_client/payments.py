"""The `payment` block of an ad: where and whom to pay. The directory only says this;
the payment itself is made on the ledger by the payer's own client."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec


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
        price = data.get("price")
        return cls(
            protocol=data["protocol"],
            ledger_url=data["ledger_url"],
            node=data["node"],
            payee=data["payee"],
            currencies=tuple(data.get("currencies") or ()),
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


def _require(data: Mapping[str, Any], names: tuple[str, ...], *, within: str) -> None:
    missing = [name for name in names if name not in data]
    if missing:
        raise NotPayable(f"this ad cannot be paid: its {within} has no {', '.join(missing)}")
