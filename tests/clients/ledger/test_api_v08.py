"""The 0.8 version of the API (wrapped bodies, an `errors` list, other paths), against a
stand-in node on 127.0.0.1 (tests/clients/ledger/node_v08.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from directory_client.ledger import (
    AuthViolation,
    CreditCommonsLedger,
    MinLimitViolation,
    UnexpectedLedgerAnswer,
    WorkflowViolation,
    ledger_for,
)
from directory_client.payments import Payment

from tests.clients.ledger.node_v08 import NODE_NAME, NodeV08

ACCOUNTS = {"ann": ("annkey", -20, 100), "ben": ("benkey", -100, 100)}


@pytest.fixture
def node() -> Iterator[NodeV08]:
    with NodeV08(accounts=dict(ACCOUNTS)) as node:
        yield node


@pytest.fixture
def ad(node) -> Payment:
    return Payment.from_json(
        {
            "protocol": "credit-commons",
            "ledger_url": node.url,
            "node": NODE_NAME,
            "payee": "ben",
            "currencies": ["HOUR"],
            "price": None,
        }
    )


@pytest.fixture
def ledger(ad) -> Iterator[CreditCommonsLedger]:
    with ledger_for(ad, timeout_s=5) as ledger:
        yield ledger


def test_the_version_is_detected_from_the_wrapped_workflows(ledger):
    assert ledger.api_version is None

    workflow = ledger.payer_workflow(user="ann", auth="annkey")

    assert ledger.api_version == "0.8"
    # Not `credit`, and not the inactive payer workflow listed before it.
    assert workflow.id == "payment"


def test_pay_and_confirm_use_the_08_paths(ledger, ad, node):
    paid = ledger.pay(ad, 7, "a basket of apples", payer="ann", auth="annkey")

    assert (paid.state, paid.workflow, paid.transitions, paid.quantity) == (
        "pending",
        "payment",
        ("erased",),
        7,
    )
    confirmed = ledger.confirm(paid.uuid, user="ben", auth="benkey")
    assert (confirmed.state, confirmed.transitions) == ("completed", ())
    assert ledger.balance("ann", user="ann", auth="annkey").completed.balance == -7
    assert ledger.balance("ben", user="ben", auth="benkey").completed.balance == 7
    assert f"GET /transaction/{paid.uuid}" in node.requests
    assert "GET /account/summary?acc_path=ann" in node.requests
    assert not [
        r for r in node.requests if r.startswith(("GET /transaction/full", "GET /account/summary/"))
    ]


def test_statement_reads_the_transactions_list(ledger, ad):
    since = datetime.now(UTC)
    first = ledger.pay(ad, 1, "one", payer="ann", auth="annkey")
    second = ledger.pay(ad, 2, "two", payer="ann", auth="annkey")
    ledger.cancel(second.uuid, user="ann", auth="annkey")
    third = ledger.pay(ad, 3, "three", payer="ann", auth="annkey")

    lines = ledger.statement("ann", user="ann", auth="annkey", since=since)

    assert [(line.transaction_uuid, line.amount) for line in lines] == [
        (first.uuid, -1),
        (third.uuid, -3),
    ]


def test_errors_in_the_errors_list_are_typed(ledger, ad):
    with pytest.raises(MinLimitViolation) as caught:
        ledger.pay(ad, 21, "too much", payer="ann", auth="annkey")
    assert (
        caught.value.node,
        caught.value.account,
        caught.value.limit,
        caught.value.projected,
    ) == (NODE_NAME, "ann", -20, -21)

    with pytest.raises(AuthViolation):
        ledger.balance("ann", user="ann", auth="wrong")

    paid = ledger.pay(ad, 1, "mine", payer="ann", auth="annkey")
    with pytest.raises(WorkflowViolation):
        ledger.confirm(paid.uuid, user="ann", auth="annkey")


def test_a_repeated_payment_key_is_found_in_08_too(ledger, ad, node):
    first = ledger.pay(ad, 4, "keyed", payer="ann", auth="annkey", idempotency_key="k-08")

    again = ledger.pay(ad, 4, "keyed", payer="ann", auth="annkey", idempotency_key="k-08")

    assert again.uuid == first.uuid
    assert [r for r in node.requests if r.startswith("POST")] == ["POST /transaction"]


def test_the_version_can_be_given_instead_of_detected(ad, node):
    with CreditCommonsLedger(node.url, api_version="0.8", timeout_s=5) as ledger:
        assert ledger.balance("ben", user="ben", auth="benkey").pending.balance == 0

    assert node.requests == ["GET /account/summary?acc_path=ben"]


def test_an_html_error_page_is_an_unexpected_answer(ledger, node):
    node.html_crash_paths.add("/account/summary")

    with pytest.raises(UnexpectedLedgerAnswer) as caught:
        ledger.balance("ann", user="ann", auth="annkey")

    assert (caught.value.status, caught.value.reason) == (200, "not JSON")


@pytest.mark.parametrize(
    ("path", "call"),
    [
        ("/account/summary", lambda ledger: ledger.balance("ann", user="ann", auth="annkey")),
        (
            "/transaction/",
            lambda ledger: ledger.transaction(
                "00000000-0000-4000-8000-000000000000", user="ann", auth="annkey"
            ),
        ),
    ],
    ids=["balance", "transaction"],
)
def test_an_answer_of_no_known_shape_names_the_url_asked(ledger, node, path, call):
    node.shapeless_paths.add(path)

    with pytest.raises(UnexpectedLedgerAnswer) as caught:
        call(ledger)

    asked = node.requests[-1].split(" ", 1)[1]
    assert caught.value.url == node.url + asked
    assert "{" not in caught.value.url


def test_a_0_2_client_on_a_0_8_node_gets_a_clear_error(ad, node):
    with (
        CreditCommonsLedger(node.url, api_version="0.2", timeout_s=5) as ledger,
        pytest.raises(UnexpectedLedgerAnswer) as caught,
    ):
        ledger.balance("ann", user="ann", auth="annkey")

    assert caught.value.status == 404
