"""GET /metrics: the operator's Prometheus metrics, behind their own token, read from the
database so that they say what the relay and the portals are really doing."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, text, update

from directory import create_app
from directory.db import unit_of_work
from directory.models import Delivery, DeliveryState, Portal, PortalStatus
from directory.services import deliveries
from directory.settings import Settings, SettingsError
from tests.api.test_relay import contact, publish
from tests.spec_check import SpecCheckingClient

TOKEN = "metrics-" + "0123456789abcdef" * 3
# Nothing listens there, and no worker runs: deliveries to it wait.
WEBHOOK = "http://127.0.0.1:9/hooks"


@pytest.fixture(scope="module")
def metrics_app(migrated):
    app = create_app(replace(migrated, metrics_token=TOKEN))
    app.test_client_class = SpecCheckingClient
    yield app
    app.extensions["directory"].close()


@pytest.fixture
def scrape(metrics_app):
    client = metrics_app.test_client()

    def scrape() -> dict[tuple[str, tuple], float]:
        """(sample name, sorted labels) -> value."""
        response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.mimetype == "text/plain"
        families = text_string_to_metric_families(response.get_data(as_text=True))
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in families
            for sample in family.samples
        }

    return scrape


def value(metrics, name: str, **labels) -> float:
    return metrics[(name, tuple(sorted(labels.items())))]


def deliveries_pending(metrics, channel: str) -> float:
    return value(metrics, "directory_relay_deliveries", state="pending", channel=channel)


# --- who may read them ---------------------------------------------------------------------


def test_metrics_are_off_without_a_token(client, portal):
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 404
    assert response.json["error"] == "not_found"
    assert "DIRECTORY_METRICS_TOKEN" in response.json["message"]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer ", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", f"Basic {TOKEN}", "portal"],
    ids=["none", "empty", "shorter", "longer", "not-bearer", "a-portal-key"],
)
def test_metrics_need_the_metrics_token(metrics_app, portal, authorization):
    if authorization == "portal":
        authorization = portal.headers["Authorization"]
    headers = {} if authorization is None else {"Authorization": authorization}
    response = metrics_app.test_client().get("/metrics", headers=headers)
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.json["error"] == "unauthenticated"
    assert response.json["errors"]["headers"]["Authorization"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "directory_" not in response.get_data(as_text=True)


def test_the_token_is_refused_in_the_query_string(metrics_app):
    response = metrics_app.test_client().get(f"/metrics?token={TOKEN}")
    assert response.status_code == 400
    assert TOKEN not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "token", ["short", "x" * 31, "x" * 20 + " " + "x" * 20, "é" * 40, "x" * 201]
)
def test_a_weak_or_unreadable_token_stops_the_start(token):
    with pytest.raises(SettingsError, match="DIRECTORY_METRICS_TOKEN"):
        Settings(metrics_token=token)


def test_the_token_is_never_shown_with_the_settings():
    assert TOKEN not in repr(Settings(metrics_token=TOKEN))


# --- what they say -------------------------------------------------------------------------


def test_an_empty_directory_reports_zeros(scrape):
    metrics = scrape()
    assert deliveries_pending(metrics, "webhook") == 0
    assert deliveries_pending(metrics, "inbox") == 0
    assert value(metrics, "directory_relay_deliveries", state="failed", channel="any") == 0
    assert value(metrics, "directory_relay_deliveries_due") == 0
    assert value(metrics, "directory_relay_oldest_due_seconds") == 0
    assert value(metrics, "directory_relay_oldest_pending_seconds") == 0
    assert value(metrics, "directory_portals", status="active") == 0
    assert value(metrics, "directory_portals", status="suspended") == 0


def test_deliveries_waiting_for_a_worker_show_how_long_they_waited(
    client, scrape, make_portal, wiring
):
    advertiser = make_portal(slug="sel-lyon", webhook_url=WEBHOOK, allow_loopback=True)
    writer = make_portal(slug="lets-bristol")
    ad_id = publish(client, advertiser)
    for member in ("m-1", "m-2", "m-3"):
        assert contact(client, writer, ad_id, member=member).status_code == 201
    metrics = scrape()
    assert deliveries_pending(metrics, "webhook") == 3
    assert value(metrics, "directory_relay_deliveries_due") == 3
    assert 0 <= value(metrics, "directory_relay_oldest_due_seconds") < 60

    # No worker has come for an hour: the alert's figure.
    with unit_of_work(wiring.session_factory) as session:
        session.execute(text("UPDATE deliveries SET next_attempt_at = now() - interval '1 hour'"))
    metrics = scrape()
    assert 3600 <= value(metrics, "directory_relay_oldest_due_seconds") < 3660

    # A worker took them (its lease moves them past now): none due, all still pending.
    with unit_of_work(wiring.session_factory) as session:
        deliveries.claim_due(session, limit=10, lease=timedelta(minutes=5))
    metrics = scrape()
    assert value(metrics, "directory_relay_deliveries_due") == 0
    assert value(metrics, "directory_relay_oldest_due_seconds") == 0
    assert deliveries_pending(metrics, "webhook") == 3


def test_inbox_only_failed_and_delivered_messages_are_told_apart(
    client, scrape, make_portal, wiring
):
    inbox_only = make_portal(slug="sel-lyon")  # no webhook: its messages wait in the inbox
    writer = make_portal(slug="lets-bristol")
    ad_id = publish(client, inbox_only)
    for member in ("m-1", "m-2", "m-3"):
        assert contact(client, writer, ad_id, member=member).status_code == 201
    with unit_of_work(wiring.session_factory) as session:
        first, second = session.scalars(select(Delivery.id).order_by(Delivery.id)).all()[:2]
        session.execute(text("UPDATE deliveries SET created_at = now() - interval '2 days'"))
        session.execute(
            update(Delivery).where(Delivery.id == first).values(state=DeliveryState.FAILED)
        )
        acknowledged = deliveries.webhook_id(session.get(Delivery, second).message_id)
        deliveries.acknowledge(session, portal_id=inbox_only.id, webhook_ids=[acknowledged])
    metrics = scrape()
    assert deliveries_pending(metrics, "inbox") == 1
    assert deliveries_pending(metrics, "webhook") == 0
    assert value(metrics, "directory_relay_deliveries", state="failed", channel="any") == 1
    assert value(metrics, "directory_relay_deliveries_due") == 0  # the inbox is no worker's
    assert 2 * 86400 <= value(metrics, "directory_relay_oldest_pending_seconds") < 2 * 86400 + 60


def test_a_suspended_portals_deliveries_are_not_due_and_it_is_counted(
    client, scrape, make_portal, wiring
):
    advertiser = make_portal(slug="sel-lyon", webhook_url=WEBHOOK, allow_loopback=True)
    writer = make_portal(slug="lets-bristol")
    assert contact(client, writer, publish(client, advertiser)).status_code == 201
    with unit_of_work(wiring.session_factory) as session:
        session.execute(
            update(Portal).where(Portal.id == advertiser.id).values(status=PortalStatus.SUSPENDED)
        )
    metrics = scrape()
    assert value(metrics, "directory_portals", status="active") == 1
    assert value(metrics, "directory_portals", status="suspended") == 1
    assert deliveries_pending(metrics, "webhook") == 1
    assert value(metrics, "directory_relay_deliveries_due") == 0


def test_disabled_webhooks_failing_websites_and_open_resyncs_are_counted(
    client, scrape, make_portal, wiring
):
    gone = make_portal(slug="sel-lyon", webhook_url=WEBHOOK, allow_loopback=True)
    failing = make_portal(slug="lets-bristol", website="https://bristol.example")
    with unit_of_work(wiring.session_factory) as session:
        deliveries.disable_webhook(session, portal_id=gone.id, reason="410 Gone")
        session.execute(
            update(Portal)
            .where(Portal.id == failing.id)
            .values(website_verified_at=text("now()"), website_verified_by="fetch")
            .values(website_recheck_failing_since=text("now()"))
        )
    assert client.post("/v1/sync-sessions", headers=failing.headers).status_code == 201
    metrics = scrape()
    assert value(metrics, "directory_portal_webhooks_disabled") == 1
    assert value(metrics, "directory_websites_failing") == 1
    assert value(metrics, "directory_sync_sessions_open") == 1


def test_accepted_messages_are_counted_for_a_rate(client, scrape, make_portal):
    advertiser = make_portal(slug="sel-lyon")
    writer = make_portal(slug="lets-bristol")
    ad_id = publish(client, advertiser)
    before = value(scrape(), "directory_rows_inserted_total", table="messages")
    for member in ("m-1", "m-2"):
        assert contact(client, writer, ad_id, member=member).status_code == 201
    # PostgreSQL publishes a backend's counts within a second of its transaction's end
    # (earlier tests' may still come in: at least ours).
    deadline = time.monotonic() + 10
    while (
        inserted := value(scrape(), "directory_rows_inserted_total", table="messages")
    ) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert inserted >= before + 2
    metrics = scrape()
    assert ("directory_rows_estimated", (("table", "ads"),)) in metrics
