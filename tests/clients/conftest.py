"""What the client tests share: a Credit Commons reference node, started once per test run,
and the directory served on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.credit_commons import Account, CreditCommonsNode, running_node
from tests.live import LiveDirectory

# Balances persist for the whole run: tests assert on changes, and the tests that need an
# exact balance or a tight limit have accounts of their own.
NODE_ACCOUNTS = [
    Account("alice", "alicekey"),
    Account("bob", "bobkey"),
    Account("carol", "carolkey"),
    Account("dave", "davekey"),
    Account("erin", "erinkey"),
    Account("frank", "frankkey"),
    Account("gina", "ginakey"),
    Account("hank", "hankkey"),
    Account("ivan", "ivankey"),
    Account("judy", "judykey"),
    Account("minnie", "minniekey", min=-10, max=100),  # may owe 10 at most
    Account("maxine", "maxinekey", min=-100, max=10),  # may hold 10 at most
    Account("spender", "spenderkey", min=-1000, max=1000),
    Account("sink", "sinkkey", min=-1000, max=1000),
    # tests/clients/test_pay_end_to_end.py: the advertiser (a high maximum, so that a
    # too-large payment meets paula's minimum), the payer (may owe 20 at most), a stranger.
    Account("oscar", "oscarkey", min=-100, max=1000),
    Account("paula", "paulakey", min=-20, max=100),
    Account("quinn", "quinnkey"),
]


@pytest.fixture(scope="session")
def credit_commons_node(tmp_path_factory) -> Iterator[CreditCommonsNode]:
    with running_node(tmp_path_factory.mktemp("credit-commons"), accounts=NODE_ACCOUNTS) as node:
        yield node


@pytest.fixture
def live(app) -> Iterator[LiveDirectory]:
    """The directory served over HTTP on 127.0.0.1, for the clients to call."""
    with LiveDirectory(app) as server:
        yield server
