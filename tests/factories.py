"""Test data: portals with their keys and ad payloads with traits."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from directory.services import portals

_counter = itertools.count(1)


@dataclass(frozen=True)
class PortalWithKey:
    id: int
    slug: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def create_portal(
    session: Session,
    *,
    slug: str | None = None,
    name: str = "Test Exchange",
    default_currencies: tuple[str, ...] = ("EUR", "HOUR"),
    **kwargs,
) -> PortalWithKey:
    slug = slug or f"portal-{next(_counter)}"
    portal, key = portals.create_portal(
        session, slug=slug, name=name, default_currencies=list(default_currencies), **kwargs
    )
    return PortalWithKey(portal.id, portal.slug, key.key)


BASE_AD = {
    "kind": "offer",
    "title": "Bicycle repairs",
    "body": "I fix punctures, brakes and gears. Bring your bike on Saturdays.",
    "category": "home.repairs",
    "tags": ["bikes", "repairs"],
    "location": {"lat": 50.8503, "lon": 4.3517},
    "privacy": "exact",
    "currencies": ["EUR", "HOUR"],
    "language": "en",
    "member": "m-1001",
}

TRAITS = {
    "want": {"kind": "want", "title": "Looking for a ladder", "category": "lending.tool-lending"},
    "hidden": {"privacy": "hidden", "location": None},
    "approximate": {"privacy": "approximate"},
    "area": {"privacy": "area"},
    "portal_only": {"visibility": "portal"},
    "priced": {"price": {"amount": "12.50", "currency": "EUR", "unit": "hour"}},
}


def ad_payload(*traits: str, **overrides) -> dict:
    """An ad body for PUT /v1/ads/{external_id}, e.g. ad_payload("hidden", title="x")."""
    payload = copy.deepcopy(BASE_AD)
    for trait in traits:
        payload.update(copy.deepcopy(TRAITS[trait]))
    payload.update(overrides)
    return {key: value for key, value in payload.items() if value is not ...}


def in_days(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


# Ads a single PUT refuses, each with the code it answers (`error`): a batch or staged item
# with the same ad is rejected with the same code.
REFUSED_ADS = {
    "title-empty": ({"title": ""}, "validation_error"),
    "latitude-out-of-range": ({"location": {"lat": 91, "lon": 0}}, "validation_error"),
    "unknown-field": ({"colour": "red"}, "validation_error"),
    "unknown-category": ({"category": "no.such-category"}, "unknown_category"),
    "unknown-currency": ({"currencies": ["NOPE"]}, "unknown_currency"),
    "expires-in-the-past": ({"expires_at": in_days(-1)}, "invalid_input"),
    "no-location": ({"location": None}, "invalid_input"),
    "price-in-a-currency-not-accepted": (
        {"price": {"amount": "5", "currency": "EUR", "unit": "hour"}, "currencies": ["HOUR"]},
        "invalid_input",
    ),
}
