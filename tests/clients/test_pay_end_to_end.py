"""Pay from an ad, end to end: portal A registers its ledger (the Credit Commons reference
node on 127.0.0.1) and publishes a member's offer with a ledger account; a member of
portal B finds it through GET /v1/search on the directory served over HTTP, and pays it
with the client, straight on the node. The directory holds no credential and moves
nothing: balances change on the node only, by exactly the amount."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import flask
import httpx
import msgspec
import pytest
from directory_client import models
from directory_client.client import DirectoryClient
from directory_client.ledger import (
    AuthViolation,
    DoesNotExistViolation,
    LedgerViolation,
    MinLimitViolation,
    ledger_for,
)

from tests.clients.ledger.lossy_proxy import LossyProxy
from tests.credit_commons import CreditCommonsNode
from tests.factories import ad_payload
from tests.live import LiveDirectory

LYON = {"lat": 45.7640, "lon": 4.8357}
# Accounts of this module's own on the shared node (tests/clients/conftest.py).
ADVERTISER, PAYER, STRANGER = "oscar", "paula", "quinn"


@pytest.fixture
def advertised(live, make_portal, credit_commons_node: CreditCommonsNode):
    """Portal A with its ledger and an offer by its member `oscar`; portal B."""
    portal_a, portal_b = make_portal(), make_portal()
    ad_id = advertise_on_ledger(
        live,
        portal_a,
        ledger_url=credit_commons_node.url,
        node=credit_commons_node.node_name,
        external_id="bread-1",
        title="Bread baked to order",
        ledger_account=ADVERTISER,
        currencies=["HOUR"],
        price={"amount": "2", "currency": "HOUR", "unit": "item"},
    )
    return portal_a, portal_b, ad_id


def advertise_on_ledger(
    live: LiveDirectory, portal, *, ledger_url: str, node: str, external_id: str, **ad
) -> str:
    """Registers the portal's ledger and publishes one of its ads near Lyon; its id."""
    with httpx.Client(base_url=live.url, headers=portal.headers) as http:
        ledger = {"protocol": "credit-commons", "url": ledger_url, "node": node}
        assert http.patch("/v1/portals/me", json={"ledger": ledger}).status_code == 200
        response = http.put(f"/v1/ads/{external_id}", json=ad_payload(location=LYON, **ad))
        assert response.status_code == 201, response.json()
    return response.json()["id"]


def found_by_member_of(live: LiveDirectory, portal) -> models.SearchHit:
    """What a member of `portal` finds near Lyon that can be paid."""
    with DirectoryClient(live.url, key=portal.key) as directory:
        page = directory.search_ads(lat=LYON["lat"], lon=LYON["lon"], radius_km=5, payable=True)
    assert len(page.hits) == 1, page
    return page.hits[0]


def balances(node: CreditCommonsNode, ad, *accounts: str) -> dict[str, tuple[int, int]]:
    """(completed, pending) per account, each read with the account's own key."""
    with ledger_for(ad) as ledger:
        result = {}
        for account in accounts:
            balance = ledger.balance(account, user=account, auth=node.key(account))
            result[account] = (balance.completed.balance, balance.pending.balance)
        return result


def test_a_member_of_another_portal_finds_an_offer_and_pays_it_on_its_ledger(
    live, advertised, credit_commons_node
):
    _, portal_b, ad_id = advertised
    node = credit_commons_node
    hit = found_by_member_of(live, portal_b)
    assert str(hit.id) == ad_id
    assert msgspec.to_builtins(hit.payment) == {
        "protocol": "credit-commons",
        "ledger_url": node.url,
        "node": node.node_name,
        "payee": ADVERTISER,
        "currencies": ["HOUR"],
        "price": {"amount": "2.0000", "currency": "HOUR", "unit": "item"},
    }
    before = balances(node, hit, ADVERTISER, PAYER)

    with ledger_for(hit) as ledger:
        paid = ledger.pay(hit, 7, "Seven loaves", payer=PAYER, auth=node.key(PAYER))
        assert (paid.payer, paid.payee, paid.quantity, paid.state) == (
            PAYER,
            ADVERTISER,
            7,
            "pending",
        )
        pending = balances(node, hit, ADVERTISER, PAYER)
        assert pending[ADVERTISER] == (before[ADVERTISER][0], before[ADVERTISER][1] + 7)
        assert pending[PAYER] == (before[PAYER][0], before[PAYER][1] - 7)

        confirmed = ledger.confirm(paid.uuid, user=ADVERTISER, auth=node.key(ADVERTISER))

    assert confirmed.state == "completed"
    after = balances(node, hit, ADVERTISER, PAYER)
    assert after[ADVERTISER] == (before[ADVERTISER][0] + 7, before[ADVERTISER][1] + 7)
    assert after[PAYER] == (before[PAYER][0] - 7, before[PAYER][1] - 7)


def test_the_directory_learns_nothing_of_the_payment(live, advertised, credit_commons_node, app):
    """The payment goes from the client to the node: the directory's access log holds the
    search and the ad, and no request carrying ledger credentials ever reaches it."""
    _, portal_b, _ = advertised
    node = credit_commons_node
    seen: list[dict] = []

    def record_headers():
        seen.append(dict(flask.request.headers))

    app.before_request_funcs.setdefault(None, []).append(record_headers)
    try:
        hit = found_by_member_of(live, portal_b)
        with ledger_for(hit) as ledger:
            paid = ledger.pay(hit, 1, "One loaf", payer=PAYER, auth=node.key(PAYER))
            ledger.cancel(paid.uuid, user=PAYER, auth=node.key(PAYER))
    finally:
        app.before_request_funcs[None].pop()
    assert seen, "the search went through the directory"
    assert not any("cc-auth" in {name.lower() for name in headers} for headers in seen)
    assert not any(node.key(PAYER) in str(headers) for headers in seen)


def test_refused_payments_raise_typed_errors_and_change_no_balance(
    live, advertised, credit_commons_node
):
    portal_a, portal_b, _ = advertised
    node = credit_commons_node
    hit = found_by_member_of(live, portal_b)
    before = balances(node, hit, ADVERTISER, PAYER, STRANGER)

    with ledger_for(hit) as ledger:
        # Over the payer's limit (paula may owe 20 at most).
        with pytest.raises(MinLimitViolation) as over_limit:
            ledger.pay(hit, 500, "Far too much bread", payer=PAYER, auth=node.key(PAYER))
        assert over_limit.value.account == PAYER
        assert over_limit.value.limit == -20
        # A wrong key.
        with pytest.raises(AuthViolation):
            ledger.pay(hit, 1, "A loaf", payer=PAYER, auth="not-paulas-key")
        # Confirmed by the wrong party: the payer cannot sign for the payee.
        paid = ledger.pay(hit, 2, "Two loaves", payer=PAYER, auth=node.key(PAYER))
        with pytest.raises(LedgerViolation) as wrong_party:
            ledger.confirm(paid.uuid, user=PAYER, auth=node.key(PAYER))
        assert wrong_party.value.violation_class in {"WorkflowViolation", "PermissionViolation"}
        with pytest.raises(LedgerViolation):
            ledger.confirm(paid.uuid, user=STRANGER, auth=node.key(STRANGER))
        assert ledger.transaction(paid.uuid, user=PAYER, auth=node.key(PAYER)).state == "pending"
        ledger.cancel(paid.uuid, user=PAYER, auth=node.key(PAYER))

    # An ad whose account the node does not know.
    with httpx.Client(base_url=live.url, headers=portal_a.headers) as http:
        unknown = ad_payload(location=LYON, ledger_account="nobody-here", title="Cakes")
        unknown_id = http.put("/v1/ads/cakes-1", json=unknown).json()["id"]
    with DirectoryClient(live.url) as directory:
        cakes = directory.get_ad(unknown_id)
    with ledger_for(cakes) as ledger, pytest.raises(DoesNotExistViolation) as missing:
        ledger.pay(cakes, 1, "A cake", payer=PAYER, auth=node.key(PAYER))
    assert missing.value.id == "nobody-here"

    assert balances(node, hit, ADVERTISER, PAYER, STRANGER) == before


def run_cli(
    live: LiveDirectory, *args: str, ledger: str | None, account: str | None, key: str | None
):
    env = {name: value for name, value in os.environ.items() if not name.startswith("LEDGER_")}
    env["DIRECTORY_URL"] = live.url
    if ledger is not None:
        env["LEDGER_URL"] = ledger
    if account is not None:
        env["LEDGER_ACCOUNT"] = account
    if key is not None:
        env["LEDGER_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "directory_client.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_pay_command_pays_and_prints_the_new_balance(live, advertised, credit_commons_node):
    _, _, ad_id = advertised
    node = credit_commons_node
    with DirectoryClient(live.url) as directory:
        ad = directory.get_ad(ad_id)
    before = balances(node, ad, ADVERTISER, PAYER)

    done = run_cli(
        live,
        "pay",
        ad_id,
        "--quantity",
        "3",
        "--description",
        "Three loaves",
        ledger=node.url.upper().replace("HTTP://", "http://") + "/",  # spelt otherwise
        account=PAYER,
        key=node.key(PAYER),
    )

    assert done.returncode == 0, done.stderr
    after = balances(node, ad, ADVERTISER, PAYER)
    assert after[PAYER][1] == before[PAYER][1] - 3
    assert after[ADVERTISER][1] == before[ADVERTISER][1] + 3
    assert f"{PAYER} pays 3 to {ADVERTISER}" in done.stdout
    assert "State: pending" in done.stdout
    assert f"Balance of {PAYER}: {after[PAYER][0]} completed, {after[PAYER][1]}" in done.stdout


def test_the_pay_command_explains_what_went_wrong(live, advertised, credit_commons_node):
    portal_a, _, ad_id = advertised
    key = credit_commons_node.key(PAYER)

    def pay(
        ad: str, quantity: str = "1", *, ledger=credit_commons_node.url, account=PAYER, key=key
    ):
        return run_cli(
            live, "pay", ad, "--quantity", quantity, "--description", "A loaf",
            ledger=ledger, account=account, key=key,
        )  # fmt: skip

    no_credentials = pay(ad_id, ledger=None, account=None, key=None)
    assert no_credentials.returncode == 2
    assert "set LEDGER_URL, LEDGER_ACCOUNT, LEDGER_KEY" in no_credentials.stderr

    wrong_key = pay(ad_id, key="wrong")
    assert wrong_key.returncode == 1
    assert "AuthViolation" in wrong_key.stderr

    negative = pay(ad_id, "-4")
    assert negative.returncode == 2
    assert "quantity" in negative.stderr

    with httpx.Client(base_url=live.url, headers=portal_a.headers) as http:
        plain_id = http.put("/v1/ads/plain-1", json=ad_payload(location=LYON)).json()["id"]
    not_payable = pay(plain_id)
    assert not_payable.returncode == 2
    assert "cannot be paid" in not_payable.stderr

    missing = pay("0192f3a4-5b6c-7d8e-9fa0-b1c2d3e4f506")
    assert missing.returncode == 2
    assert "no public ad" in missing.stderr


class RecordingServer(ThreadingHTTPServer):
    """A "ledger" on 127.0.0.1 that writes down every request it gets, and answers 404."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, dict(self.headers)))
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PATCH = do_GET

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_the_payers_key_goes_to_their_own_ledger_only(live, make_portal, credit_commons_node):
    # Any portal may name any ledger: one naming its own would collect payers' keys.
    with RecordingServer() as collector:
        ad_id = advertise_on_ledger(
            live,
            make_portal(),
            ledger_url=collector.url,
            node="trap",
            external_id="bait-1",
            ledger_account="collector",
            title="Bait",
        )

        for command in (
            ["pay", ad_id, "--quantity", "1", "--description", "A"],
            ["balance", ad_id],
        ):
            refused = run_cli(
                live,
                *command,
                ledger=credit_commons_node.url,
                account=PAYER,
                key=credit_commons_node.key(PAYER),
            )
            assert refused.returncode == 2, refused.stderr
            assert f"is paid on the ledger at {collector.url}" in refused.stderr
            assert "they are not sent to another ledger" in refused.stderr
        assert collector.requests == []
        collector.shutdown()


def test_a_payment_made_is_told_even_when_the_balance_cannot_be_read(
    live, advertised, credit_commons_node
):
    # Told "refused", the payer would pay again.
    portal_a, _, _ = advertised
    port = int(credit_commons_node.url.rsplit(":", 1)[1])
    with LossyProxy(port) as proxy:
        ad_id = advertise_on_ledger(
            live,
            portal_a,
            ledger_url=proxy.url,
            node=credit_commons_node.node_name,
            external_id="rolls-1",
            ledger_account=ADVERTISER,
            title="Rolls",
        )
        refusal = b'{"class":"AuthViolation","message":"not now"}'
        proxy.replace_next_answer(
            "GET",
            "/account/summary",
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(refusal)}\r\nConnection: close\r\n\r\n".encode()
            + refusal,
        )

        done = run_cli(
            live,
            "pay",
            ad_id,
            "--quantity",
            "2",
            "--description",
            "Two rolls",
            ledger=proxy.url,
            account=PAYER,
            key=credit_commons_node.key(PAYER),
        )

    assert done.returncode == 0, done.stderr
    assert f"{PAYER} pays 2 to {ADVERTISER}" in done.stdout
    assert "State: pending" in done.stdout
    assert "Balance: could not be read" in done.stdout


def test_an_ad_read_over_plain_http_from_another_machine_is_not_paid(
    live, advertised, credit_commons_node
):
    # Whom to pay is the ad's to say: read in clear, anyone on the way could make it their
    # own account on the payer's ledger. 0.0.0.0 reaches this machine's directory, yet it
    # is no loopback address, as a remote directory's would not be.
    _, _, ad_id = advertised
    port = live.url.rsplit(":", 1)[1]
    before = balances(credit_commons_node, found_by_member_of(live, advertised[1]), PAYER)
    env = {name: value for name, value in os.environ.items() if not name.startswith("LEDGER_")}
    env |= {
        "LEDGER_URL": credit_commons_node.url,
        "LEDGER_ACCOUNT": PAYER,
        "LEDGER_KEY": credit_commons_node.key(PAYER),
    }
    refused = subprocess.run(
        [sys.executable, "-m", "directory_client.cli", "--directory", f"http://0.0.0.0:{port}",
         "pay", ad_id, "--quantity", "1", "--description", "Bread"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert refused.returncode == 2, refused.stderr
    assert "use https" in refused.stderr
    assert balances(credit_commons_node, found_by_member_of(live, advertised[1]), PAYER) == before
