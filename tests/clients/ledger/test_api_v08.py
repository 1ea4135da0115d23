"""The 0.8 version of the API (wrapped bodies, an `errors` list, other paths), against a
stand-in node on 127.0.0.1 (tests/clients/ledger/node_v08.py)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from directory_client.ledger import (
    IDEMPOTENCY_METADATA_KEY,
    AuthViolation,
    CreditCommonsLedger,
    FeeNotAccepted,
    MinLimitViolation,
    PaymentNotAsAsked,
    PaymentOutcomeUnknown,
    PaymentSearchInconclusive,
    UnexpectedLedgerAnswer,
    WorkflowViolation,
    ledger_for,
)
from directory_client.payments import Payment

from tests.clients.ledger.node_v08 import NODE_NAME, NodeV08

ACCOUNTS = {
    "ann": ("annkey", -20, 100),
    "ben": ("benkey", -100, 100),
    # A business that pays its supplier often: room for thousands of payments.
    "shop": ("shopkey", -100_000, 100_000),
    "farm": ("farmkey", -100_000, 100_000),
}
# As many transactions as the client reads in one search for a key.
FULL_PAGE = 1000


@pytest.fixture
def node() -> Iterator[NodeV08]:
    with NodeV08(accounts=dict(ACCOUNTS)) as node:
        yield node


def payment_to(node: NodeV08, payee: str) -> Payment:
    """The payment block of an ad paid to `payee` on the stand-in node."""
    return Payment.from_json(
        {
            "protocol": "credit-commons",
            "ledger_url": node.url,
            "node": NODE_NAME,
            "payee": payee,
            "currencies": ["HOUR"],
            "price": None,
        }
    )


@pytest.fixture
def ad(node) -> Payment:
    return payment_to(node, "ben")


@pytest.fixture
def farm_ad(node) -> Payment:
    return payment_to(node, "farm")


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


def test_statement_asks_for_its_page_rather_than_take_the_nodes_ten(ledger, node):
    # A 0.8 node answers 10 transactions unless told: the statement lost the rest.
    start = datetime.now(UTC) - timedelta(hours=1)
    made = [
        node.record(payer="shop", payee="farm", quant=n, when=start + timedelta(minutes=n))
        for n in range(1, 16)
    ]

    lines = ledger.statement("shop", user="shop", auth="shopkey")
    assert [line.transaction_uuid for line in lines] == made

    last_three = ledger.statement("shop", user="shop", auth="shopkey", limit=3)
    assert [line.transaction_uuid for line in last_three] == made[-3:]


@pytest.mark.parametrize("limit", [0, -1, True, 2.5, "10"])
def test_statement_refuses_a_limit_that_is_not_a_positive_integer(ledger, limit):
    with pytest.raises(ValueError, match="limit"):
        ledger.statement("shop", user="shop", auth="shopkey", limit=limit)


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


def uuid7_made_at(when: datetime) -> str:
    """A UUIDv7 (RFC 9562) that says it was made at `when`: 48 bits of Unix milliseconds,
    version 7, the variant, random bits. Built here, not by the client under test."""
    millis = int(when.timestamp() * 1000)
    return str(uuid.UUID(int=(millis << 80) | (7 << 76) | (0b10 << 62) | secrets.randbits(62)))


def key_searches(node: NodeV08) -> list[dict[str, str]]:
    """The query of every transaction list the node was asked for."""
    return [
        {name: values[0] for name, values in parse_qs(urlsplit(target).query).items()}
        for method, target in (request.split(" ", 1) for request in node.requests)
        if method == "GET" and urlsplit(target).path == "/transactions"
    ]


def changes_asked(node: NodeV08) -> list[str]:
    return [r for r in node.requests if r.startswith(("POST", "PATCH"))]


def test_a_payment_resumed_after_a_thousand_later_ones_is_found_not_paid_again(
    ledger, node, farm_ad
):
    made = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    key = uuid7_made_at(made)
    for _ in range(FULL_PAGE):  # long before: left out by the key's time
        node.record(payer="shop", payee="farm", quant=1, when=made - timedelta(days=2))
    earlier = node.record(
        payer="shop",
        payee="farm",
        quant=5,
        state="pending",
        metadata={IDEMPOTENCY_METADATA_KEY: key},
        when=made,
    )
    for minute in range(1, FULL_PAGE + 1):  # after it: a page of them, and more
        node.record(payer="shop", payee="farm", quant=1, when=made + timedelta(minutes=minute))

    resumed = ledger.pay(farm_ad, 5, "crates", payer="shop", auth="shopkey", idempotency_key=key)

    assert resumed.uuid == earlier
    assert changes_asked(node) == []


def test_a_full_page_without_the_key_makes_the_outcome_unknown_and_sends_nothing(
    ledger, node, farm_ad
):
    for _ in range(FULL_PAGE):
        node.record(payer="shop", payee="farm", quant=1)
    made = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    key = uuid7_made_at(made)

    with pytest.raises(PaymentOutcomeUnknown) as caught:
        ledger.pay(farm_ad, 5, "crates", payer="shop", auth="shopkey", idempotency_key=key)

    assert isinstance(caught.value, PaymentSearchInconclusive)
    assert caught.value.idempotency_key == key
    assert (caught.value.searched, caught.value.since) == (FULL_PAGE, made - timedelta(days=1))
    since = (made - timedelta(days=1)).isoformat()
    assert f"could not be found among the 1000 transactions of shop changed since {since}" in (
        str(caught.value)
    )
    assert "nothing new was sent" in str(caught.value)
    assert changes_asked(node) == []
    assert len(node.transactions) == FULL_PAGE


def test_find_payment_cannot_tell_from_a_full_page_without_the_key(ledger, node, farm_ad):
    for _ in range(FULL_PAGE):
        node.record(payer="shop", payee="farm", quant=1)

    with pytest.raises(PaymentSearchInconclusive) as caught:
        ledger.find_payment(farm_ad, str(uuid.uuid4()), payer="shop", auth="shopkey")

    assert caught.value.since is None
    assert "among the 1000 transactions of shop newest" in str(caught.value)


def test_a_validated_copy_is_not_moved_on_while_a_full_page_may_hide_one_moved_on(
    ledger, node, farm_ad
):
    # Two POSTs of one payment can both have been written (the first answer lost): the
    # copy that was moved on may be beyond the page, and moving this one too pays twice.
    key = uuid7_made_at(datetime.now(UTC) - timedelta(hours=1))
    node.record(
        payer="shop",
        payee="farm",
        quant=5,
        state="validated",
        metadata={IDEMPOTENCY_METADATA_KEY: key},
    )
    for _ in range(FULL_PAGE):
        node.record(payer="shop", payee="farm", quant=1)

    with pytest.raises(PaymentSearchInconclusive):
        ledger.pay(farm_ad, 5, "crates", payer="shop", auth="shopkey", idempotency_key=key)

    assert changes_asked(node) == []


@pytest.mark.parametrize(
    ("made", "searched_from"),
    [
        (timedelta(days=-3), timedelta(days=-4)),
        # A key from a clock running ahead is searched for from a day before now.
        (timedelta(hours=5), timedelta(days=-1)),
    ],
    ids=["made-3-days-ago", "made-ahead-of-this-clock"],
)
def test_a_uuid7_key_is_searched_for_from_a_day_before_it_was_made(
    ledger, node, farm_ad, made, searched_from
):
    now = datetime.now(UTC).replace(microsecond=0)
    key = uuid7_made_at(now + made)

    ledger.pay(farm_ad, 1, "crates", payer="shop", auth="shopkey", idempotency_key=key)

    searches = key_searches(node)
    assert [search.pop("states") for search in searches] == [
        "validated",
        "pending,completed,erased",
    ] * 2
    # Not found from there, it is looked for among the newest too (the key's clock may
    # have run ahead of the node's by more than the margin).
    assert searches[2:] == [{"payer": "shop", "limit": "1000", "sort": "created,desc"}] * 2
    for search in searches[:2]:
        after = datetime.fromisoformat(search.pop("after"))
        # Not filtered by payee: the ad's payee may have changed since the payment.
        assert search == {"payer": "shop", "limit": "1000", "sort": "created,asc"}
        assert abs(after - (now + searched_from)) <= timedelta(seconds=2)


@pytest.mark.parametrize(
    "key", [str(uuid.uuid4()), "order-4711"], ids=["uuid4-of-older-clients", "chosen"]
)
def test_a_key_that_tells_no_time_is_searched_for_among_the_newest(ledger, node, farm_ad, key):
    ledger.pay(farm_ad, 1, "crates", payer="shop", auth="shopkey", idempotency_key=key)

    searches = key_searches(node)
    assert [search.pop("states") for search in searches] == [
        "validated",
        "pending,completed,erased",
    ]
    assert searches == [{"payer": "shop", "limit": "1000", "sort": "created,desc"}] * 2


def test_a_fee_the_node_adds_is_not_paid_unless_accepted(ad, node):
    # The node shows its fees in the validated transaction, which moves nothing yet: the
    # payer asked to pay 5, and is not made to pay 7 without a word.
    node.payer_fee = 2
    with ledger_for(ad, timeout_s=5) as ledger:
        with pytest.raises(FeeNotAccepted) as caught:
            ledger.pay(ad, 5, "with a fee", payer="ann", auth="annkey")
        assert (caught.value.fee, caught.value.max_fee) == (2, 0)
        assert "2 in fees (payer fee of 2 to fees)" in str(caught.value)
        assert caught.value.transaction.state == "validated"
        assert ledger.balance("ann", user="ann", auth="annkey").pending.balance == 0

        paid = ledger.pay(ad, 5, "with a fee", payer="ann", auth="annkey", max_fee=2)

        assert paid.state == "pending"
        assert [(e.payee, e.quantity) for e in paid.entries] == [("ben", 5), ("fees", 2)]
        assert ledger.balance("ann", user="ann", auth="annkey").pending.balance == -7


def test_a_transaction_other_than_asked_for_is_not_moved_on(ad, node):
    # A node (or whatever answers in its place) that made another payment than the one
    # asked: it stays validated, moving nothing.
    original = node._create

    def another(user, data):
        return original(user, {**data, "quant": data["quant"] * 10})

    node._create = another
    with ledger_for(ad, timeout_s=5) as ledger:
        with pytest.raises(PaymentNotAsAsked, match="10 from ann to ben, not the 1 asked"):
            ledger.pay(ad, 1, "not as asked", payer="ann", auth="annkey")
        assert ledger.balance("ann", user="ann", auth="annkey").pending.balance == 0


def test_a_payment_recorded_long_before_its_key_says_is_found_not_paid_again(ledger, node, farm_ad):
    # The key's maker's clock ran 30 hours ahead of the node's (a device's date or zone
    # set wrong): by the node's clock, the payment came more than a day before the key
    # says it was made, before the time its search starts from.
    key = uuid7_made_at(datetime.now(UTC))
    earlier = node.record(
        payer="shop",
        payee="farm",
        quant=5,
        state="pending",
        metadata={IDEMPOTENCY_METADATA_KEY: key},
        when=datetime.now(UTC) - timedelta(hours=30),
    )

    resumed = ledger.pay(farm_ad, 5, "crates", payer="shop", auth="shopkey", idempotency_key=key)

    assert resumed.uuid == earlier
    assert changes_asked(node) == []
