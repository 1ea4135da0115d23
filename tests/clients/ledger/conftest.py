"""Ledgers on the session's Credit Commons node, every exchange checked against the node's
own (corrected) OpenAPI file when the test ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from directory_client.ledger import CreditCommonsLedger
from directory_client.payments import Payment

from tests.credit_commons import CreditCommonsNode, RecordingTransport, node_spec, spec_violations

TIMEOUT_S = 5.0


@pytest.fixture(scope="session")
def spec(credit_commons_node):
    return node_spec()


@pytest.fixture
def recorder() -> RecordingTransport:
    return RecordingTransport()


@pytest.fixture
def ledger(credit_commons_node, recorder, spec) -> Iterator[CreditCommonsLedger]:
    ledger = CreditCommonsLedger(
        credit_commons_node.url,
        node=credit_commons_node.node_name,
        timeout_s=TIMEOUT_S,
        transport=recorder,
    )
    with ledger:
        yield ledger
    assert spec_violations(spec, recorder.exchanges) == []


@pytest.fixture
def ad_for(credit_commons_node) -> Callable[..., Payment]:
    """The payment block of an ad whose advertiser is `payee` on the session's node."""

    def ad_for(payee: str, *, ledger_url: str | None = None) -> Payment:
        return Payment.from_json(
            {
                "protocol": "credit-commons",
                "ledger_url": ledger_url or credit_commons_node.url,
                "node": credit_commons_node.node_name,
                "payee": payee,
                "currencies": ["EUR"],
                "price": {"amount": "12.50", "currency": "EUR", "unit": "hour"},
            }
        )

    return ad_for


@pytest.fixture
def key(credit_commons_node: CreditCommonsNode) -> Callable[[str], str]:
    return credit_commons_node.key
