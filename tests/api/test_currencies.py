from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from sqlalchemy import select

from directory.db import unit_of_work
from directory.models import Currency
from directory.services import currencies
from directory.services.currencies import MAX_CURRENCIES_PER_PORTAL
from tests.factories import ad_payload
from tests.waits import wait_for_a_lock_wait

TALENT = {
    "code": "TALENT",
    "name": "Talent",
    "symbol": "T",
    "value_hours": "0.5",
    "value_amount": "10.00",
    "value_currency": "EUR",
}
STORED = ("name", "symbol", "value_hours", "value_amount", "value_currency", "updated_at")


def test_the_registry_lists_iso_codes_hours_gift_and_barter(client):
    codes = {c["code"]: c["kind"] for c in client.get("/v1/currencies").json["currencies"]}
    assert codes["EUR"] == "national"
    assert codes["ARS"] == "national"
    assert (codes["HOUR"], codes["GIFT"], codes["BARTER"]) == ("time", "gift", "barter")
    assert "XAU" not in codes  # gold is not something to pay with here


def test_a_registered_community_currency_is_namespaced_by_its_portal(client, portal):
    response = client.post(
        "/v1/currencies",
        json={"code": "TALENT", "name": "Talent", "value_hours": "0.016667", "symbol": "T"},
        headers=portal.headers,
    )
    assert response.status_code == 201, response.json
    assert response.json["code"] == f"{portal.slug}:TALENT"
    assert response.json["portal"] == portal.slug
    listed = client.get(f"/v1/currencies?kind=community&portal={portal.slug}").json["currencies"]
    assert [c["code"] for c in listed] == [f"{portal.slug}:TALENT"]


def test_a_registered_currency_is_where_its_location_says(client, portal):
    response = client.post(
        "/v1/currencies", json={"code": "TALENT", "name": "Talent"}, headers=portal.headers
    )
    assert response.status_code == 201, response.json
    assert response.headers["Location"] == f"/v1/currencies/{portal.slug}:TALENT"
    assert client.get(response.headers["Location"]).json == response.json


def test_two_portals_may_use_the_same_short_code(client, portal, other_portal):
    for who in (portal, other_portal):
        response = client.post(
            "/v1/currencies", json={"code": "TALENT", "name": "Talent"}, headers=who.headers
        )
        assert response.status_code == 201
    codes = [c["code"] for c in client.get("/v1/currencies?kind=community").json["currencies"]]
    assert sorted(codes) == sorted([f"{portal.slug}:TALENT", f"{other_portal.slug}:TALENT"])


def test_ads_accept_a_registered_community_currency_and_refuse_an_unregistered_one(client, portal):
    code = client.post(
        "/v1/currencies", json={"code": "SEL", "name": "Grain de sel"}, headers=portal.headers
    ).json["code"]
    assert (
        client.put(
            "/v1/ads/a-1", json=ad_payload(currencies=[code]), headers=portal.headers
        ).status_code
        == 201
    )
    refused = client.put(
        "/v1/ads/a-2", json=ad_payload(currencies=["elsewhere:SEL"]), headers=portal.headers
    )
    assert refused.status_code == 400
    assert refused.json["error"] == "unknown_currency"


@pytest.mark.parametrize("value_hours", ["\u0661", "\uff11.5"], ids=["arabic-indic", "fullwidth"])
def test_a_currency_value_in_non_ascii_digits_is_refused(client, portal, value_hours):
    response = client.post(
        "/v1/currencies",
        json={"code": "SEL", "name": "Sel", "value_hours": value_hours},
        headers=portal.headers,
    )
    assert response.status_code == 400, response.json
    assert "value_hours" in response.json["errors"]["json"]


def test_a_currency_is_updated_by_its_portal(client, portal):
    code = client.post(
        "/v1/currencies", json={"code": "SEL", "name": "Sel"}, headers=portal.headers
    ).json["code"]
    response = client.patch(
        f"/v1/currencies/{code}",
        json={"value_amount": "1.00", "value_currency": "EUR"},
        headers=portal.headers,
    )
    assert response.status_code == 200
    assert (response.json["value_amount"], response.json["value_currency"]) == ("1.0000", "EUR")


def test_an_unused_currency_can_be_deleted_and_a_used_one_cannot(client, portal):
    code = client.post(
        "/v1/currencies", json={"code": "SEL", "name": "Sel"}, headers=portal.headers
    ).json["code"]
    client.put("/v1/ads/a-1", json=ad_payload(currencies=[code]), headers=portal.headers)
    refused = client.delete(f"/v1/currencies/{code}", headers=portal.headers)
    assert refused.status_code == 409
    assert refused.json["error"] == "currency_in_use"
    client.delete("/v1/ads/a-1", headers=portal.headers)
    assert client.delete(f"/v1/currencies/{code}", headers=portal.headers).status_code == 204
    assert client.get(f"/v1/currencies/{code}").status_code == 404


def test_deleting_a_currency_twice_is_harmless(client, portal):
    code = client.post(
        "/v1/currencies", json={"code": "SEL", "name": "Sel"}, headers=portal.headers
    ).json["code"]

    first = client.delete(f"/v1/currencies/{code}", headers=portal.headers)
    again = client.delete(f"/v1/currencies/{code}", headers=portal.headers)

    assert (first.status_code, again.status_code) == (204, 204)
    assert client.get(f"/v1/currencies/{code}").status_code == 404


def test_a_builtin_currency_is_read_by_code(client):
    response = client.get("/v1/currencies/HOUR")
    assert response.json["kind"] == "time"


def test_the_category_taxonomy_has_groups_with_children(client):
    groups = client.get("/v1/categories").json["categories"]
    by_code = {group["code"]: group for group in groups}
    assert {"food", "home", "care", "space"} <= set(by_code)
    assert {g["domain"] for g in groups} == {"goods", "services", "other"}
    assert "food.produce" in [child["code"] for child in by_code["food"]["children"]]


def test_an_ad_may_name_a_group_or_a_child_category(client, portal):
    for external_id, category in (("a-1", "food"), ("a-2", "food.produce")):
        response = client.put(
            f"/v1/ads/{external_id}", json=ad_payload(category=category), headers=portal.headers
        )
        assert response.status_code == 201


def test_errors_about_the_code_in_the_path_name_the_path(client, portal, other_portal):
    code = client.post(
        "/v1/currencies", json={"code": "SEL", "name": "Sel"}, headers=portal.headers
    ).json["code"]
    client.put("/v1/ads/a-1", json=ad_payload(currencies=[code]), headers=portal.headers)
    answers = {
        "unknown": client.get(f"/v1/currencies/{portal.slug}:NONE"),
        "not-community": client.delete("/v1/currencies/EUR", headers=portal.headers),
        "another-portals": client.patch(
            f"/v1/currencies/{code}", json={"name": "Mine"}, headers=other_portal.headers
        ),
        "in-use": client.delete(f"/v1/currencies/{code}", headers=portal.headers),
    }

    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {"unknown": 404, "not-community": 404, "another-portals": 403, "in-use": 409}
    for answer in answers.values():
        assert list(answer.json["errors"]) == ["path"], answer.json
        assert "code" in answer.json["errors"]["path"]


def test_a_portal_registers_at_most_twenty_currencies_and_may_replace_one(client, portal):
    """Every currency is listed to anyone by GET /v1/currencies, unpaged: 2,000 of one
    portal made each listing ten times as costly (8 ms to 78 ms, 24 KB to 584 KB), and
    nothing stopped more."""

    def register(code: str):
        return client.post(
            "/v1/currencies", json={"code": code, "name": "Talent"}, headers=portal.headers
        )

    for number in range(MAX_CURRENCIES_PER_PORTAL):
        assert register(f"T{number}").status_code == 201
    refused = register("ONEMORE")
    assert refused.status_code == 409, refused.json
    assert refused.json["error"] == "too_many_currencies"
    assert refused.json["errors"] == {"json": {"code": [refused.json["message"]]}}
    assert f"at most {MAX_CURRENCIES_PER_PORTAL}" in refused.json["message"]
    listed = client.get(f"/v1/currencies?portal={portal.slug}").json["currencies"]
    assert len(listed) == MAX_CURRENCIES_PER_PORTAL
    assert (
        client.delete(f"/v1/currencies/{portal.slug}:T0", headers=portal.headers).status_code == 204
    )
    assert register("ONEMORE").status_code == 201


def _stored(wiring, code: str) -> tuple:
    with unit_of_work(wiring.session_factory) as session:
        row = session.scalar(select(Currency).where(Currency.code == code))
        return tuple(getattr(row, name) for name in STORED)


def test_a_registration_sent_again_identically_answers_200_and_changes_nothing(
    client, wiring, portal
):
    """Its answer lost, a portal sends the same registration again: it was told 409
    "registered already", as if it had asked for something else."""
    first = client.post("/v1/currencies", json=TALENT, headers=portal.headers)
    assert first.status_code == 201, first.json
    stored = _stored(wiring, first.json["code"])

    # Decimals spelt otherwise are the same values.
    again = client.post(
        "/v1/currencies", json={**TALENT, "value_hours": "0.500"}, headers=portal.headers
    )

    assert again.status_code == 200, again.json
    assert again.json == first.json
    assert again.headers["Location"] == first.headers["Location"]
    assert _stored(wiring, first.json["code"]) == stored
    listed = client.get(f"/v1/currencies?portal={portal.slug}").json["currencies"]
    assert listed == [first.json]


def test_a_registration_sent_again_at_the_limit_of_currencies_answers_200(client, portal):
    for number in range(MAX_CURRENCIES_PER_PORTAL - 1):
        payload = {"code": f"T{number}", "name": "Talent"}
        assert (
            client.post("/v1/currencies", json=payload, headers=portal.headers).status_code == 201
        )
    assert client.post("/v1/currencies", json=TALENT, headers=portal.headers).status_code == 201

    again = client.post("/v1/currencies", json=TALENT, headers=portal.headers)

    assert again.status_code == 200, again.json


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        pytest.param({"name": "Talents"}, "name", id="name"),
        pytest.param({"symbol": None}, "symbol", id="symbol-left-out"),
        pytest.param({"value_hours": "0.25"}, "value_hours", id="value-hours"),
        pytest.param(
            {"value_amount": "12.00", "value_currency": "GBP"},
            "value_amount and value_currency",
            id="value-amount-and-currency",
        ),
    ],
)
def test_the_code_registered_again_with_other_attributes_is_refused_naming_them(
    client, wiring, portal, changes, named
):
    first = client.post("/v1/currencies", json=TALENT, headers=portal.headers)
    stored = _stored(wiring, first.json["code"])
    payload = {key: value for key, value in {**TALENT, **changes}.items() if value is not None}

    refused = client.post("/v1/currencies", json=payload, headers=portal.headers)

    assert refused.status_code == 409, refused.json
    assert refused.json["error"] == "conflict"
    assert refused.json["errors"] == {"json": {"code": [refused.json["message"]]}}
    assert f"registered already, with another {named};" in refused.json["message"]
    assert f"PATCH /v1/currencies/{portal.slug}:TALENT" in refused.json["message"]
    assert _stored(wiring, first.json["code"]) == stored


def test_another_portal_registering_the_same_code_registers_its_own(client, portal, other_portal):
    """Codes are namespaced by portal: another portal never meets the first's currency,
    identical or not."""
    first = client.post("/v1/currencies", json=TALENT, headers=portal.headers)

    other = client.post("/v1/currencies", json=TALENT, headers=other_portal.headers)

    assert other.status_code == 201, other.json
    assert (first.json["code"], other.json["code"]) == (
        f"{portal.slug}:TALENT",
        f"{other_portal.slug}:TALENT",
    )
    assert client.get(f"/v1/currencies/{portal.slug}:TALENT").json == first.json


def test_two_identical_registrations_at_once_create_one_currency_and_both_succeed(
    app, client, wiring, portal
):
    """A client retrying a registration whose first try is still running: the retry
    waits for the first, then finds its currency (it used to get 409)."""
    answers = []
    with unit_of_work(wiring.session_factory) as first:
        created = currencies.register_currency(
            first,
            portal_id=portal.id,
            code="TALENT",
            name="Talent",
            symbol="T",
            value_hours=Decimal("0.5"),
            value_amount=Decimal("10.00"),
            value_currency="EUR",
        )
        racer = threading.Thread(
            target=lambda: answers.append(
                app.test_client().post("/v1/currencies", json=TALENT, headers=portal.headers)
            )
        )
        racer.start()
        wait_for_a_lock_wait(wiring, what="the racing registration")
    racer.join(30)

    (answer,) = answers
    assert answer.status_code == 200, answer.json
    assert created.created
    assert answer.json["code"] == created.currency.code
    listed = client.get(f"/v1/currencies?portal={portal.slug}").json["currencies"]
    assert [currency["code"] for currency in listed] == [f"{portal.slug}:TALENT"]
