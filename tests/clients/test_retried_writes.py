"""A portal's write reaches the directory and its answer is lost on the way back (a real
TCP proxy in front of the live directory swallows it); the client's own retry, or the
portal's by hand, ends with the state asked for and an answer that tells the truth."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from directory_client.client import DirectoryClient
from directory_client.errors import DirectoryUnavailable
from directory_client.sync import sync_ads
from directory_client.transport import NO_RETRIES, RetryPolicy

from tests.clients.ledger.lossy_proxy import LossyProxy
from tests.factories import ad_payload

# Short, so that a lost answer is given up on quickly; the directory answers in milliseconds.
CLIENT_TIMEOUT_S = 1.0
QUICK_RETRY = RetryPolicy(attempts=4, backoff_s=0.05, max_backoff_s=0.1)


class DirectoryProxy(LossyProxy):
    """LossyProxy in front of the directory, its rules matching any part of the path
    (`/commit` of a session whose id is not known yet)."""

    def _take_rule(self, method, path):
        with self._lock:
            for rule in self._rules:
                if rule.method == method and rule.path_prefix in path:
                    self._rules.remove(rule)
                    return rule
        return None


@pytest.fixture
def proxy(live) -> Iterator[DirectoryProxy]:
    with DirectoryProxy(int(live.url.rsplit(":", 1)[1])) as proxy:
        yield proxy


@pytest.fixture
def lossy(proxy, portal) -> Iterator[DirectoryClient]:
    """The portal's client, through the proxy."""
    with DirectoryClient(
        proxy.url, key=portal.key, timeout_s=CLIENT_TIMEOUT_S, retry=QUICK_RETRY
    ) as client:
        yield client


@pytest.fixture
def direct(live, portal) -> Iterator[DirectoryClient]:
    """The portal's client, straight to the directory: to look."""
    with DirectoryClient(live.url, key=portal.key) as client:
        yield client


def test_a_currency_deletion_retried_after_its_answer_was_lost_succeeds(proxy, lossy, direct):
    code = direct.register_currency({"code": "TALENT", "name": "Talent"}).code
    proxy.lose_next_answer("DELETE", "/v1/currencies/")

    lossy.delete_currency(code)

    assert [(f.method, f.answer_lost) for f in proxy.forwarded] == [
        ("DELETE", True),
        ("DELETE", False),
    ]
    assert direct.list_currencies(kind="community").currencies == []


def test_a_currency_registration_whose_answer_was_lost_is_retried_and_tells_the_currency(
    proxy, lossy, direct, portal
):
    proxy.lose_next_answer("POST", "/v1/currencies")

    registered = lossy.register_currency({"code": "TALENT", "name": "Talent", "symbol": "T"})

    assert [(f.method, f.answer_lost) for f in proxy.forwarded] == [
        ("POST", True),
        ("POST", False),
    ]
    assert (registered.code, registered.symbol) == (f"{portal.slug}:TALENT", "T")
    assert direct.list_currencies(kind="community").currencies == [registered]


def test_a_rotation_whose_answer_was_lost_is_retried_without_rotating_twice(proxy, lossy, direct):
    held = direct.get_webhook_secret().secret  # what the portal's receiver verifies with
    proxy.lose_next_answer("POST", "/v1/portals/me/webhook-secret")

    rotated = lossy.rotate_webhook_secret(overlap_hours=2)

    assert [f.answer_lost for f in proxy.forwarded] == [True, False]
    assert rotated.previous_secret == held  # signs beside the new one for the overlap
    assert direct.get_webhook_secret() == rotated


def test_a_rotation_retried_by_hand_with_its_idempotency_key_rotates_once(proxy, portal, direct):
    held = direct.get_webhook_secret().secret
    proxy.lose_next_answer("POST", "/v1/portals/me/webhook-secret")
    with DirectoryClient(
        proxy.url, key=portal.key, timeout_s=CLIENT_TIMEOUT_S, retry=NO_RETRIES
    ) as once:
        with pytest.raises(DirectoryUnavailable):
            once.rotate_webhook_secret(idempotency_key="rotation-7")

        rotated = once.rotate_webhook_secret(idempotency_key="rotation-7")

    assert rotated.previous_secret == held
    assert direct.get_webhook_secret() == rotated


def test_a_commit_whose_answer_was_lost_is_retried_and_tells_what_it_did(proxy, lossy, direct):
    direct.put_ad("old", ad_payload())
    opened = direct.open_sync_session()
    direct.stage_sync_items(opened.id, [{"external_id": "new", "ad": ad_payload()}])
    proxy.lose_next_answer("POST", "/commit")

    result = lossy.commit_sync_session(opened.id)

    assert [f.answer_lost for f in proxy.forwarded] == [True, False]
    assert (result.created, result.updated, result.deleted) == (1, 0, 1)
    assert result.session.status == "committed"
    assert {ad.external_id for ad in direct.iter_own_ads()} == {"new"}


def test_a_replace_sync_whose_commit_answer_was_lost_finishes_in_one_run(
    proxy, lossy, direct, tmp_path
):
    direct.put_ad("by-hand", ad_payload())
    state = tmp_path / "state"
    ads = [{"external_id": f"ad-{n}", **ad_payload(title=f"Ad {n}")} for n in range(1, 4)]
    proxy.lose_next_answer("POST", "/commit")

    report = sync_ads(lossy, ads, state_path=state, replace=True)

    assert (report.created, report.deleted, report.ok) == (3, 1, True)
    assert {ad.external_id for ad in direct.iter_own_ads()} == {"ad-1", "ad-2", "ad-3"}
    again = sync_ads(lossy, ads, state_path=state)  # the state file knows them all
    assert (again.sent, again.unchanged) == (0, 3)
