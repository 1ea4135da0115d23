"""A portal's ledger and the payment block of its ads: where and whom to pay, never a
credential; search by whether an ad can be paid."""

from __future__ import annotations

import pytest

from tests.api.test_feed import read_all
from tests.apps import app_with
from tests.factories import ad_payload

LEDGER = {"protocol": "credit-commons", "url": "http://127.0.0.1:9/", "node": "testnode"}


def set_ledger(client, portal, ledger):
    return client.patch("/v1/portals/me", json={"ledger": ledger}, headers=portal.headers)


def put_ad(client, portal, external_id="a-1", **fields):
    response = client.put(
        f"/v1/ads/{external_id}", json=ad_payload(**fields), headers=portal.headers
    )
    assert response.status_code in (200, 201), response.json
    return response.json


def test_a_registered_ledger_shows_in_the_profile_and_can_be_removed(client, portal):
    response = set_ledger(client, portal, LEDGER)
    assert response.status_code == 200, response.json
    assert response.json["ledger"] == LEDGER
    assert client.get("/v1/portals/me", headers=portal.headers).json["ledger"] == LEDGER

    response = set_ledger(client, portal, None)
    assert response.status_code == 200, response.json
    assert response.json["ledger"] is None


def test_a_portal_without_a_ledger_says_so(client, portal):
    assert client.get("/v1/portals/me", headers=portal.headers).json["ledger"] is None


def test_an_ad_with_an_account_on_a_portal_with_a_ledger_shows_how_to_pay(client, portal):
    set_ledger(client, portal, LEDGER)
    ad = put_ad(
        client,
        portal,
        ledger_account="bob",
        currencies=["EUR", "HOUR"],
        price={"amount": "12.50", "currency": "EUR", "unit": "hour"},
    )

    public = client.get(f"/v1/ads/{ad['id']}")

    assert public.status_code == 200
    assert public.json["payment"] == {
        "protocol": "credit-commons",
        "ledger_url": LEDGER["url"],
        "node": "testnode",
        "payee": "bob",
        "currencies": ["EUR", "HOUR"],
        "price": {"amount": "12.5000", "currency": "EUR", "unit": "hour"},
    }
    # The portal's own view (the PUT's answer) shows it too.
    assert ad["payment"] == public.json["payment"]


@pytest.mark.parametrize("ledger_registered, account", [(True, None), (False, "bob")])
def test_no_payment_block_without_both_ledger_and_account(
    client, portal, ledger_registered, account
):
    if ledger_registered:
        set_ledger(client, portal, LEDGER)
    ad = put_ad(client, portal, ledger_account=account)

    assert client.get(f"/v1/ads/{ad['id']}").json["payment"] is None


def test_removing_the_ledger_removes_the_payment_block(client, portal):
    set_ledger(client, portal, LEDGER)
    ad = put_ad(client, portal, ledger_account="bob")
    set_ledger(client, portal, None)

    assert client.get(f"/v1/ads/{ad['id']}").json["payment"] is None


def test_the_payment_block_holds_no_credential(client, portal):
    set_ledger(client, portal, LEDGER)
    ad = put_ad(client, portal, ledger_account="bob")

    payment = client.get(f"/v1/ads/{ad['id']}").json["payment"]

    assert set(payment) == {"protocol", "ledger_url", "node", "payee", "currencies", "price"}
    assert not any("auth" in key or "key" in key or "secret" in key for key in payment)


def test_search_finds_payable_ads_only_or_only_the_others(client, portal, other_portal):
    set_ledger(client, portal, LEDGER)
    payable = put_ad(client, portal, "a-1", ledger_account="bob")["id"]
    no_account = put_ad(client, portal, "a-2")["id"]
    no_ledger = put_ad(client, other_portal, "b-1", ledger_account="carol")["id"]

    def found(value):
        response = client.get(f"/v1/search?payable={value}")
        assert response.status_code == 200, response.json
        return {hit["id"]: hit for hit in response.json["hits"]}

    assert set(found("true")) == {payable}
    assert set(found("false")) == {no_account, no_ledger}
    assert found("true")[payable]["payment"]["payee"] == "bob"
    assert found("false")[no_ledger]["payment"] is None


def test_payable_must_be_true_or_false(client):
    response = client.get("/v1/search?payable=yes")

    assert response.status_code == 400
    assert "payable" in response.json["errors"]["query"]


def test_a_search_cursor_is_bound_to_the_payable_filter(client, portal):
    set_ledger(client, portal, LEDGER)
    for number in range(3):
        put_ad(client, portal, f"a-{number}", ledger_account=f"acct-{number}")
    cursor = client.get("/v1/search?payable=true&limit=1").json["next_cursor"]

    response = client.get(f"/v1/search?payable=false&limit=1&cursor={cursor}")

    assert response.status_code == 400
    assert response.json["error"] == "invalid_cursor"


def test_registering_or_removing_a_ledger_republishes_ads_with_accounts(client, portal):
    with_account = put_ad(client, portal, "a-1", ledger_account="bob")["id"]
    put_ad(client, portal, "a-2")
    put_ad(client, portal, "a-3", ledger_account="carol", visibility="portal")
    _, cursor = read_all(client)

    set_ledger(client, portal, LEDGER)
    changes, cursor = read_all(client, since=cursor)
    assert [(change["op"], change["ad_id"]) for change in changes] == [("upsert", with_account)]
    assert changes[0]["ad"]["payment"]["payee"] == "bob"

    set_ledger(client, portal, LEDGER)  # the same again: nothing changed
    assert read_all(client, since=cursor)[0] == []

    set_ledger(client, portal, None)
    changes, _ = read_all(client, since=cursor)
    assert [change["ad"]["payment"] for change in changes] == [None]


@pytest.mark.parametrize(
    "ledger, field",
    [
        pytest.param({**LEDGER, "protocol": "paypal"}, "protocol", id="unknown-protocol"),
        pytest.param({"url": LEDGER["url"], "node": "n"}, "protocol", id="no-protocol"),
        pytest.param({"protocol": "credit-commons", "node": "n"}, "url", id="no-url"),
        pytest.param({"protocol": "credit-commons", "url": LEDGER["url"]}, "node", id="no-node"),
        pytest.param({**LEDGER, "url": "ledger.example.org"}, "url", id="not-a-url"),
        pytest.param({**LEDGER, "url": "ftp://127.0.0.1/"}, "url", id="ftp"),
        pytest.param({**LEDGER, "node": "a node"}, "node", id="node-with-space"),
        pytest.param({**LEDGER, "node": ""}, "node", id="empty-node"),
        pytest.param({**LEDGER, "node": "n" * 101}, "node", id="node-too-long"),
        pytest.param({**LEDGER, "node": "lyon\n"}, "node", id="node-trailing-newline"),
        pytest.param({**LEDGER, "node": "n" * 100 + "\n"}, "node", id="node-full-and-newline"),
        pytest.param({**LEDGER, "node": 7}, "node", id="node-number"),
        pytest.param({**LEDGER, "key": "secret"}, "key", id="unknown-field"),
    ],
)
def test_malformed_ledgers_are_refused_naming_the_field(client, portal, ledger, field):
    response = set_ledger(client, portal, ledger)

    assert response.status_code == 400, response.json
    assert field in response.json["errors"]["json"]["ledger"], response.json
    assert client.get("/v1/portals/me", headers=portal.headers).json["ledger"] is None


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/cc?tenant=lyon", "http://127.0.0.1:9/cc?"])
def test_a_ledger_url_with_a_query_is_refused(client, portal, url):
    # Clients add the node's paths to it: /cc?tenant=lyon + /workflows is /cc?tenant=lyon/workflows.
    response = set_ledger(client, portal, {**LEDGER, "url": url})

    assert response.status_code == 400, response.json
    message = response.json["errors"]["json"]["ledger"]["url"][0]
    assert message.startswith("ledger.url must not have a query"), message
    assert client.get("/v1/portals/me", headers=portal.headers).json["ledger"] is None


def test_a_ledger_that_is_not_an_object_is_refused(client, portal):
    response = set_ledger(client, portal, "https://ledger.example.org/")

    assert response.status_code == 400
    assert "ledger" in response.json["errors"]["json"]


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.5/",
        "https://192.168.1.1/ledger",
        "http://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/",
        "https://0.0.0.0/",
        "http://203.0.113.7/",  # http to a non-loopback address
        "https://user:secret@127.0.0.1/",
        "https://ledger.invalid/",  # does not resolve
    ],
)
def test_ledger_urls_get_the_webhook_url_checks(client, portal, url):
    response = set_ledger(client, portal, {**LEDGER, "url": url})

    assert response.status_code == 400, response.json
    assert response.json["error"] == "unsafe_ledger_url"
    message = response.json["errors"]["json"]["ledger"]["url"][0]
    assert message.startswith("ledger.url"), message
    assert client.get("/v1/portals/me", headers=portal.headers).json["ledger"] is None


def test_a_loopback_ledger_is_refused_unless_allowed(migrated, make_portal):
    portal = make_portal()
    with app_with(migrated, webhook_allow_loopback=False) as app:
        response = set_ledger(app.test_client(), portal, LEDGER)
    assert response.status_code == 400
    assert "url" in response.json["errors"]["json"]["ledger"]
