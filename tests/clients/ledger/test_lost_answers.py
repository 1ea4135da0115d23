"""A payment never happens twice: answers lost on the way back (a real TCP proxy in front
of the real node swallows them) are found out about before anything is sent again."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from directory_client.ledger import (
    IDEMPOTENCY_METADATA_KEY,
    CreditCommonsLedger,
    LedgerUnavailable,
    PayeeChanged,
    PaymentOutcomeUnknown,
)

from tests.clients.ledger.lossy_proxy import LossyProxy
from tests.credit_commons import RecordingTransport, spec_violations

# Short, so that a lost answer is given up on quickly; the node answers in milliseconds.
CLIENT_TIMEOUT_S = 1.0


@pytest.fixture
def proxy(credit_commons_node) -> Iterator[LossyProxy]:
    port = int(credit_commons_node.url.rsplit(":", 1)[1])
    with LossyProxy(port) as proxy:
        yield proxy


@pytest.fixture
def proxied_ledger(proxy, spec) -> Iterator[CreditCommonsLedger]:
    recorder = RecordingTransport()
    with CreditCommonsLedger(
        proxy.url, timeout_s=CLIENT_TIMEOUT_S, transport=recorder, retry_backoff_s=0.05
    ) as ledger:
        yield ledger
    assert spec_violations(spec, recorder.exchanges) == []


def transactions_with_key(node, payee, idempotency_key, *, payer):
    """The uuids of every transaction of the payer to the payee carrying the key, in any
    state, asked of the node directly."""
    found = []
    for states in ("validated", "pending,completed,erased"):
        answer = httpx.get(
            f"{node.url}/transaction/full",
            params={"payer": payer, "payee": payee, "states": states},
            headers={"cc-user": payer, "cc-auth": node.key(payer)},
        )
        answer.raise_for_status()
        found += [
            t["uuid"]
            for t in answer.json()
            if (t["entries"][0]["metadata"] or {}).get(IDEMPOTENCY_METADATA_KEY) == idempotency_key
        ]
    return found


def test_a_lost_answer_to_the_payment_is_found_not_paid_again(
    credit_commons_node, proxy, proxied_ledger, ledger, ad_for, key
):
    before = ledger.balance("erin", user="erin", auth=key("erin")).pending.balance
    proxy.lose_next_answer("POST", "/transaction")

    paid = proxied_ledger.pay(
        ad_for("frank", ledger_url=proxy.url), 6, "answer lost", payer="erin", auth=key("erin")
    )

    assert paid.state == "pending"
    posts = [f for f in proxy.forwarded if f.method == "POST"]
    assert [f.answer_lost for f in posts] == [True]  # sent once, and never again
    assert transactions_with_key(
        credit_commons_node, "frank", paid.idempotency_key, payer="erin"
    ) == [paid.uuid]
    assert ledger.balance("erin", user="erin", auth=key("erin")).pending.balance == before - 6


@pytest.mark.parametrize(
    "transport", [None, httpx.HTTPTransport], ids=["default transport", "callers transport"]
)
def test_an_answer_dripped_without_end_counts_as_lost_by_the_timeout(
    credit_commons_node, proxy, ledger, ad_for, key, transport
):
    """A byte now and then answers each of httpx's reads in time: only the timeout on the
    request as a whole ends it, after which the payment is looked for, not made again."""
    before = ledger.balance("erin", user="erin", auth=key("erin")).pending.balance
    proxy.drip_next_answer("POST", "/transaction")

    with CreditCommonsLedger(
        proxy.url,
        timeout_s=CLIENT_TIMEOUT_S,
        transport=transport and transport(),
        retry_backoff_s=0.05,
    ) as dripped:
        started = time.monotonic()
        paid = dripped.pay(
            ad_for("frank", ledger_url=proxy.url), 3, "dripped", payer="erin", auth=key("erin")
        )
        took = time.monotonic() - started

    assert paid.state == "pending"
    assert [f.answer_lost for f in proxy.forwarded if f.method == "POST"] == [True]
    assert took < 3 * CLIENT_TIMEOUT_S  # the drip alone would go on until the proxy stops
    assert ledger.balance("erin", user="erin", auth=key("erin")).pending.balance == before - 3


def test_a_lost_answer_to_moving_the_payment_on_is_read_back_not_repeated(
    proxy, proxied_ledger, ledger, ad_for, key
):
    before = ledger.balance("erin", user="erin", auth=key("erin")).pending.balance
    proxy.lose_next_answer("PATCH", "/transaction/")

    paid = proxied_ledger.pay(
        ad_for("frank", ledger_url=proxy.url),
        2,
        "patch answer lost",
        payer="erin",
        auth=key("erin"),
    )

    assert paid.state == "pending"
    assert [f.answer_lost for f in proxy.forwarded if f.method == "PATCH"] == [True]
    assert ledger.balance("erin", user="erin", auth=key("erin")).pending.balance == before - 2


def test_a_lost_answer_to_a_confirmation_counts_as_confirmed(
    proxy, proxied_ledger, ledger, ad_for, key
):
    paid = ledger.pay(ad_for("frank"), 1, "to confirm", payer="erin", auth=key("erin"))
    proxy.lose_next_answer("PATCH", f"/transaction/{paid.uuid}/completed")

    confirmed = proxied_ledger.confirm(paid.uuid, user="frank", auth=key("frank"))

    assert confirmed.state == "completed"


def test_a_ledger_gone_after_the_payment_makes_the_outcome_unknown(
    credit_commons_node, proxy, proxied_ledger, ledger, ad_for, key
):
    before = ledger.balance("gina", user="gina", auth=key("gina")).pending.balance
    proxy.lose_next_answer("POST", "/transaction", go_down_after=True)

    with pytest.raises(PaymentOutcomeUnknown) as caught:
        proxied_ledger.pay(
            ad_for("hank", ledger_url=proxy.url), 8, "ledger gone", payer="gina", auth=key("gina")
        )

    unknown = caught.value
    assert unknown.idempotency_key
    assert unknown.transaction_uuid is None  # the node made the uuid; its answer was lost
    # The node did make it, but only as `validated`: nothing has moved yet.
    made = ledger.find_payment(
        ad_for("hank"), unknown.idempotency_key, payer="gina", auth=key("gina")
    )
    assert made is not None and made.state == "validated"
    assert ledger.balance("gina", user="gina", auth=key("gina")).pending.balance == before

    # Paying again with the key finishes that payment rather than making another.
    finished = ledger.pay(
        ad_for("hank"),
        8,
        "ledger gone",
        payer="gina",
        auth=key("gina"),
        idempotency_key=unknown.idempotency_key,
    )

    assert finished.uuid == made.uuid and finished.state == "pending"
    assert transactions_with_key(
        credit_commons_node, "hank", unknown.idempotency_key, payer="gina"
    ) == [made.uuid]
    assert ledger.balance("gina", user="gina", auth=key("gina")).pending.balance == before - 8


def test_a_ledger_that_cannot_be_reached_at_all_is_unavailable_and_nothing_is_paid(
    proxy, proxied_ledger, ad_for, key
):
    proxy.go_down()

    with pytest.raises(LedgerUnavailable):
        proxied_ledger.pay(
            ad_for("hank", ledger_url=proxy.url), 1, "never sent", payer="gina", auth=key("gina")
        )

    assert proxy.forwarded == []


def test_a_payee_confirming_before_the_answer_comes_back_counts_as_paid(
    credit_commons_node, proxy, proxied_ledger, ledger, ad_for, key
):
    before = ledger.balance("erin", user="erin", auth=key("erin")).completed.balance

    def payee_confirms(path: str) -> None:
        transaction_uuid = path.split("/")[2]
        ledger.confirm(transaction_uuid, user="frank", auth=key("frank"))

    proxy.lose_next_answer("PATCH", "/transaction/", then=payee_confirms)

    paid = proxied_ledger.pay(
        ad_for("frank", ledger_url=proxy.url),
        1,
        "confirmed at once",
        payer="erin",
        auth=key("erin"),
    )

    assert paid.state == "completed"
    assert [f.method for f in proxy.forwarded if f.method == "PATCH"] == ["PATCH"]
    assert ledger.balance("erin", user="erin", auth=key("erin")).completed.balance == before - 1


CC_FAILURE = b'{"class":"CCFailure","node":"testnode","message":"failed after writing"}'


def test_a_node_failing_after_moving_the_payment_on_counts_as_paid(
    proxy, proxied_ledger, ledger, ad_for, key
):
    before = ledger.balance("erin", user="erin", auth=key("erin")).pending.balance
    proxy.replace_next_answer(
        "PATCH",
        "/transaction/",
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(CC_FAILURE)}\r\nConnection: close\r\n\r\n".encode()
        + CC_FAILURE,
    )

    paid = proxied_ledger.pay(
        ad_for("frank", ledger_url=proxy.url), 1, "failed after", payer="erin", auth=key("erin")
    )

    assert paid.state == "pending"
    assert [f.method for f in proxy.forwarded if f.method == "PATCH"] == ["PATCH"]
    assert ledger.balance("erin", user="erin", auth=key("erin")).pending.balance == before - 1


def test_a_payment_resumed_after_the_ads_payee_changed_is_refused_not_finished_nor_made_again(
    credit_commons_node, proxy, proxied_ledger, ledger, ad_for, key
):
    proxy.lose_next_answer("POST", "/transaction", go_down_after=True)
    with pytest.raises(PaymentOutcomeUnknown) as caught:
        proxied_ledger.pay(
            ad_for("hank", ledger_url=proxy.url), 4, "moved", payer="gina", auth=key("gina")
        )
    idempotency_key = caught.value.idempotency_key
    before = {
        account: ledger.balance(account, user=account, auth=key(account))
        for account in ("gina", "hank", "judy")
    }

    # The advertiser takes payments on another account now: the ad names judy.
    with pytest.raises(PayeeChanged) as refused:
        ledger.pay(
            ad_for("judy"),
            4,
            "moved",
            payer="gina",
            auth=key("gina"),
            idempotency_key=idempotency_key,
        )

    earlier = refused.value.transaction
    assert (earlier.payee, earlier.state, refused.value.payee) == ("hank", "validated", "judy")
    assert "to hank (validated), but this ad's payee is now judy" in str(refused.value)
    # Not finished: still validated, moving nothing; and judy was not paid instead.
    assert ledger.transaction(earlier.uuid, user="gina", auth=key("gina")).state == "validated"
    assert transactions_with_key(credit_commons_node, "hank", idempotency_key, payer="gina") == [
        earlier.uuid
    ]
    assert transactions_with_key(credit_commons_node, "judy", idempotency_key, payer="gina") == []
    assert {
        account: ledger.balance(account, user=account, auth=key(account))
        for account in ("gina", "hank", "judy")
    } == before
