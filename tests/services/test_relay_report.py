"""The operators' relay report: how each portal's members' conversations with other
communities were received, from conversations made through the API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from directory.db import unit_of_work
from directory.models import PortalStatus
from directory.services.relay_report import relay_report
from tests.api.test_relay import block, contact, publish, reply


def opened(client, portal, ad_id, member):
    response = contact(client, portal, ad_id, member=member)
    assert response.status_code == 201, response.json
    return response.json["conversation"]["id"]


@pytest.fixture
def activity(client, wiring, make_portal):
    """Pushy's members write to Alpha's advertiser: one answered, one twice unanswered, two
    blocked by the advertiser, one they blocked themselves, and one 40 days ago. Kind's members write
    to Beta's, who answers both. Beta blocks Pushy's community. Alpha's members also write
    to each other, and Quiet does nothing."""
    pushy = make_portal(slug="pushy", name="Pushy Exchange")
    kind = make_portal(slug="kind", name="Kind Exchange")
    alpha = make_portal(slug="alpha", name="Alpha")
    beta = make_portal(slug="beta", name="Beta")
    make_portal(slug="quiet", name="Quiet")
    alpha_ad = publish(client, alpha, member="m-alpha")
    beta_ad = publish(client, beta, member="m-beta")

    answered = opened(client, pushy, alpha_ad, "p-1")
    assert reply(client, alpha, answered, member="m-alpha").status_code == 201
    assert reply(client, pushy, answered, member="p-1").status_code == 201  # answered still
    block(client, alpha, opened(client, pushy, alpha_ad, "p-2"), "m-alpha")
    unanswered_twice = opened(client, pushy, alpha_ad, "p-3")
    assert reply(client, pushy, unanswered_twice, member="p-3").status_code == 201
    block(client, alpha, opened(client, pushy, alpha_ad, "p-4"), "m-alpha")
    block(client, pushy, opened(client, pushy, alpha_ad, "p-5"), "p-5")
    old = opened(client, pushy, alpha_ad, "p-6")
    with unit_of_work(wiring.session_factory) as session:
        session.execute(
            text("UPDATE conversations SET created_at = now() - interval '40 days' WHERE id = :id"),
            {"id": old},
        )
    for member in ("k-1", "k-2"):
        conversation = opened(client, kind, beta_ad, member)
        assert reply(client, beta, conversation, member="m-beta").status_code == 201
    opened(client, alpha, alpha_ad, "m-alpha-neighbour")  # within one community
    assert (
        client.put("/v1/portals/me/blocked-portals/pushy", headers=beta.headers).status_code == 200
    )


def rows(report):
    return [
        (p.slug, p.opened, p.unanswered, p.blocked, p.blocked_by_portals) for p in report.portals
    ]


def test_the_most_blocked_portal_comes_first_with_what_its_members_met(wiring, activity):
    with unit_of_work(wiring.session_factory) as session:
        report = relay_report(session, days=30)

    assert rows(report) == [
        # Unanswered: p-2 and p-4 (blocked by the advertiser), p-3 (twice in a row), p-5.
        ("pushy", 5, 4, 2, 1),
        ("kind", 2, 0, 0, 0),
    ]
    pushy = report.portals[0]
    assert (pushy.name, pushy.status) == ("Pushy Exchange", PortalStatus.ACTIVE)
    assert (pushy.blocked_share, pushy.unanswered_share) == (0.4, 0.8)
    assert abs(report.since - (datetime.now(UTC) - timedelta(days=30))) < timedelta(minutes=1)


def test_the_window_counts_conversations_opened_in_it(wiring, activity):
    with unit_of_work(wiring.session_factory) as session:
        longer = relay_report(session, days=60)

    assert rows(longer)[0] == ("pushy", 6, 5, 2, 1)


def test_a_portal_blocked_by_another_community_is_listed_even_when_its_members_are_quiet(
    client, wiring, make_portal
):
    make_portal(slug="quiet-but-blocked", name="Q")
    blocker = make_portal(slug="blocker", name="B")
    response = client.put(
        "/v1/portals/me/blocked-portals/quiet-but-blocked", headers=blocker.headers
    )
    assert response.status_code == 200

    with unit_of_work(wiring.session_factory) as session:
        report = relay_report(session, days=30)

    assert rows(report) == [("quiet-but-blocked", 0, 0, 0, 1)]
    assert report.portals[0].blocked_share is None


def test_nothing_to_report(wiring, make_portal):
    make_portal(slug="alone")

    with unit_of_work(wiring.session_factory) as session:
        assert relay_report(session, days=30).portals == []
