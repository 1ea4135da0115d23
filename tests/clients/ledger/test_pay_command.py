"""The pay command resuming a payment by its idempotency key, end to end: the ad read from
the directory served over HTTP, the payment made on the ledger it names."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import httpx
import pytest
from directory_client.cli import EXIT_OK, EXIT_REFUSED, EXIT_UNKNOWN, main

from tests.clients.ledger.node_v08 import FEES_ACCOUNT, NODE_NAME, NodeV08
from tests.factories import ad_payload

# Accounts of the shared reference node (tests/clients/conftest.py): the payer, the
# advertiser's account before and after it changes.
PAYER, FORMER_PAYEE, NEW_PAYEE = "ivan", "dave", "bob"


@pytest.fixture
def advertise(live, make_portal) -> Callable[..., str]:
    """advertise(ledger_url, node, account) has the portal register that ledger and
    publish its one ad, paid to `account`; answers the ad's id."""
    portal = make_portal()

    def advertise(ledger_url: str, node: str, account: str) -> str:
        ledger = {"protocol": "credit-commons", "url": ledger_url, "node": node}
        with httpx.Client(base_url=live.url, headers=portal.headers) as http:
            assert http.patch("/v1/portals/me", json={"ledger": ledger}).status_code == 200
            response = http.put("/v1/ads/apples-1", json=ad_payload(ledger_account=account))
        assert response.status_code in (200, 201), response.json()
        return response.json()["id"]

    return advertise


@pytest.fixture
def pay(live, monkeypatch, capsys) -> Callable[..., tuple[int, str, str]]:
    """pay(ad_id, *options, ledger_url=, account=, key=) runs `directory-client pay` with
    those credentials; answers its exit status, stdout and stderr."""

    def pay(ad_id: str, *options: str, ledger_url: str, account: str, key: str):
        monkeypatch.setenv("LEDGER_URL", ledger_url)
        monkeypatch.setenv("LEDGER_ACCOUNT", account)
        monkeypatch.setenv("LEDGER_KEY", key)
        out = io.StringIO()
        capsys.readouterr()
        command = ["--directory", live.url, "--json", "pay", ad_id, "--description", "Apples"]
        status = main([*command, *options], out=out)
        return status, out.getvalue(), capsys.readouterr().err

    return pay


def pending_balances(node, *accounts: str) -> dict[str, int]:
    return {
        account: httpx.get(
            f"{node.url}/account/summary/{account}",
            headers={"cc-user": account, "cc-auth": node.key(account)},
        ).json()["pending"]["balance"]
        for account in accounts
    }


def test_pay_refuses_to_resume_a_payment_made_to_the_ads_former_payee(
    advertise, pay, credit_commons_node
):
    node = credit_commons_node
    credentials = {"ledger_url": node.url, "account": PAYER, "key": node.key(PAYER)}
    ad_id = advertise(node.url, node.node_name, FORMER_PAYEE)
    status, out, err = pay(ad_id, "--quantity", "2", **credentials)
    assert status == EXIT_OK, err
    idempotency_key = json.loads(out)["transaction"]["idempotency_key"]
    # The advertiser takes payments on another account now.
    assert advertise(node.url, node.node_name, NEW_PAYEE) == ad_id
    before = pending_balances(node, PAYER, FORMER_PAYEE, NEW_PAYEE)

    status, out, err = pay(
        ad_id, "--quantity", "2", "--idempotency-key", idempotency_key, **credentials
    )

    assert status == EXIT_REFUSED
    assert out == ""
    assert f"a payment of 2 to {FORMER_PAYEE} (pending), but this ad's payee is now " in err
    assert f"neither finished nor made again to {NEW_PAYEE}" in err
    assert pending_balances(node, PAYER, FORMER_PAYEE, NEW_PAYEE) == before


def test_pay_resuming_a_payment_cancelled_since_says_so_and_pays_nothing(
    advertise, pay, credit_commons_node
):
    # Exit 0 is "paid": a payment found erased was not, and is not made again either
    # (the payer may have cancelled it on purpose).
    node = credit_commons_node
    credentials = {"ledger_url": node.url, "account": PAYER, "key": node.key(PAYER)}
    ad_id = advertise(node.url, node.node_name, FORMER_PAYEE)
    status, out, err = pay(ad_id, "--quantity", "3", **credentials)
    assert status == EXIT_OK, err
    paid = json.loads(out)["transaction"]
    cancelled = httpx.patch(
        f"{node.url}/transaction/{paid['uuid']}/erased",
        headers={"cc-user": PAYER, "cc-auth": node.key(PAYER)},
    )
    assert cancelled.status_code == 201, cancelled.text
    before = pending_balances(node, PAYER, FORMER_PAYEE)

    status, out, err = pay(
        ad_id, "--quantity", "3", "--idempotency-key", paid["idempotency_key"], **credentials
    )

    assert (status, out) == (EXIT_REFUSED, ""), err
    assert f"a payment of 3 to {FORMER_PAYEE} (erased)" in err
    assert "it was cancelled: nothing was paid by it, and it is not made again" in err
    assert pending_balances(node, PAYER, FORMER_PAYEE) == before


def test_pay_that_cannot_tell_whether_a_payment_was_made_sends_nothing_and_says_where_to_look(
    advertise, pay
):
    with NodeV08(
        accounts={"shop": ("shopkey", -10_000, 10_000), "farm": ("farmkey", 0, 10_000)}
    ) as node:
        for _ in range(1000):  # more than one search reads
            node.record(payer="shop", payee="farm", quant=1)
        ad_id = advertise(node.url, NODE_NAME, "farm")

        status, out, err = pay(
            ad_id,
            "--quantity",
            "2",
            "--idempotency-key",
            "order-4711",
            ledger_url=node.url,
            account="shop",
            key="shopkey",
        )

        assert status == EXIT_UNKNOWN
        assert out == ""
        assert "idempotency key order-4711 could not be found among the 1000" in err
        assert "Look on the ledger itself for a transaction of yours whose metadata" in err
        assert "--idempotency-key" not in err  # running it again would not tell more
        assert not [r for r in node.requests if r.startswith(("POST", "PATCH"))]


@pytest.mark.parametrize("timeout", ["0", "-5", "nan", "inf", "soon"])
def test_a_timeout_that_is_no_positive_number_of_seconds_is_bad_usage_naming_the_option(
    timeout, monkeypatch, capsys
):
    # Named as the option given, before anything is asked of the directory or the ledger
    # (the client's own refusal named timeout_s, an argument the user never wrote).
    for name, value in (("LEDGER_URL", "https://ledger.example.org"),
                        ("LEDGER_ACCOUNT", "alice"), ("LEDGER_KEY", "alicekey")):  # fmt: skip
        monkeypatch.setenv(name, value)

    with pytest.raises(SystemExit) as exit_:
        main(["--directory", "http://127.0.0.1:9", "--timeout", timeout, "balance", "ad-1"])

    assert exit_.value.code == 2
    assert "--timeout" in capsys.readouterr().err


def test_pay_leaves_a_payment_with_fees_unpaid_unless_they_are_accepted(advertise, pay):
    with NodeV08(
        accounts={"shop": ("shopkey", -100, 100), "farm": ("farmkey", 0, 100)}, payer_fee=3
    ) as node:
        ad_id = advertise(node.url, NODE_NAME, "farm")
        credentials = {"ledger_url": node.url, "account": "shop", "key": "shopkey"}

        status, out, err = pay(ad_id, "--quantity", "10", **credentials)
        assert (status, out) == (EXIT_REFUSED, ""), err
        assert "the ledger adds 3 in fees" in err
        assert "--max-fee" in err
        assert not [r for r in node.requests if r.startswith("PATCH")]

        status, out, err = pay(ad_id, "--quantity", "10", "--max-fee", "3", **credentials)
        assert status == EXIT_OK, err
        paid = json.loads(out)
        assert paid["transaction"]["quantity"] == 10
        assert paid["transaction"]["fees"] == [
            {
                "payee": FEES_ACCOUNT,
                "quantity": 3,
                "description": f"payer fee of 3 to {FEES_ACCOUNT}",
            }
        ]
        assert paid["balance"]["pending"]["balance"] == -13
