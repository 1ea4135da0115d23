"""A portal blocking another (services/portal_blocks.py): its list."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from directory.db import unit_of_work
from directory.models import PortalBlock, PortalStatus
from directory.services import closing, portal_blocks, portals
from tests.waits import send_aside


def block(client, portal, slug):
    return client.put(f"/v1/portals/me/blocked-portals/{slug}", headers=portal.headers)


def unblock(client, portal, slug):
    return client.delete(f"/v1/portals/me/blocked-portals/{slug}", headers=portal.headers)


def blocked_slugs(client, portal) -> list[str]:
    response = client.get("/v1/portals/me/blocked-portals", headers=portal.headers)
    assert response.status_code == 200, response.json
    return [entry["slug"] for entry in response.json["blocked_portals"]]


# --- the list ----------------------------------------------------------------------------


def test_a_portal_blocks_another_lists_it_and_unblocks_it(client, advertiser, writer_portal):
    blocked = block(client, advertiser, writer_portal.slug)
    assert blocked.status_code == 200, blocked.json
    assert blocked.json["slug"] == "lets-bristol"
    assert blocked.json["name"] == "Bristol LETS"
    listed = client.get("/v1/portals/me/blocked-portals", headers=advertiser.headers).json
    assert listed == {"blocked_portals": [blocked.json]}
    unblocked = unblock(client, advertiser, writer_portal.slug)
    assert unblocked.status_code == 204
    assert blocked_slugs(client, advertiser) == []


def test_blocking_again_answers_the_first_block(client, advertiser, writer_portal):
    first = block(client, advertiser, writer_portal.slug)
    again = block(client, advertiser, writer_portal.slug)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json == first.json  # blocked_at included: the first one's
    assert blocked_slugs(client, advertiser) == [writer_portal.slug]


def test_unblocking_a_portal_not_blocked_is_harmless(client, advertiser, writer_portal):
    assert unblock(client, advertiser, writer_portal.slug).status_code == 204
    block(client, advertiser, writer_portal.slug)
    assert unblock(client, advertiser, writer_portal.slug).status_code == 204
    assert unblock(client, advertiser, writer_portal.slug).status_code == 204


def test_the_list_shows_the_latest_blocked_first(client, make_portal, advertiser):
    others = [make_portal(slug=f"other-{number}") for number in range(3)]
    for other in others:
        block(client, advertiser, other.slug)
    block(client, advertiser, others[0].slug)  # again: it keeps its place
    assert blocked_slugs(client, advertiser) == ["other-2", "other-1", "other-0"]


def test_blocks_are_seen_by_their_blocker_only(client, advertiser, writer_portal, other_portal):
    block(client, advertiser, writer_portal.slug)
    assert blocked_slugs(client, writer_portal) == []
    assert blocked_slugs(client, other_portal) == []


@pytest.mark.parametrize("method", ["get", "put", "delete"])
def test_blocks_need_a_portal_key(client, writer_portal, method):
    path = "/v1/portals/me/blocked-portals"
    if method != "get":
        path += f"/{writer_portal.slug}"
    assert getattr(client, method)(path).status_code == 401


@pytest.mark.parametrize("method", ["put", "delete"])
def test_an_unknown_slug_is_not_found_naming_it(client, advertiser, method):
    response = getattr(client, method)(
        "/v1/portals/me/blocked-portals/no-such-portal", headers=advertiser.headers
    )
    assert response.status_code == 404, response.json
    assert response.json["message"] == "no portal with slug 'no-such-portal'"
    assert "slug" in response.json["errors"]["path"]


@pytest.mark.parametrize("method", ["put", "delete"])
@pytest.mark.parametrize(
    "slug",
    ["Sel-Lyon", "-sel", "sel-", "sel_lyon", "a" * 41, "s%C3%A9l", "sel%20lyon", "sel.lyon"],
)
def test_a_malformed_slug_is_refused_naming_the_field(client, advertiser, method, slug):
    response = getattr(client, method)(
        f"/v1/portals/me/blocked-portals/{slug}", headers=advertiser.headers
    )
    assert response.status_code == 400, response.json
    assert response.json["message"].startswith("slug must be a portal's slug")
    assert "slug" in response.json["errors"]["path"]


def test_a_portal_cannot_block_itself(client, advertiser):
    response = block(client, advertiser, advertiser.slug)
    assert response.status_code == 400, response.json
    assert response.json["message"] == "a portal cannot block itself"
    assert "slug" in response.json["errors"]["path"]
    assert blocked_slugs(client, advertiser) == []


def test_a_portal_blocks_a_limited_number_of_portals(client, make_portal, advertiser, monkeypatch):
    monkeypatch.setattr(portal_blocks, "MAX_BLOCKS_PER_PORTAL", 2)
    first, second, third = (make_portal(slug=f"other-{number}") for number in range(3))
    assert block(client, advertiser, first.slug).status_code == 200
    assert block(client, advertiser, second.slug).status_code == 200
    refused = block(client, advertiser, third.slug)
    assert refused.status_code == 409, refused.json
    assert refused.json["error"] == "too_many_blocks"
    assert refused.json["message"] == "a portal blocks at most 2 portals; unblock one first"
    # Blocking one of them again is no new block; unblocking one makes room.
    assert block(client, advertiser, first.slug).status_code == 200
    unblock(client, advertiser, second.slug)
    assert block(client, advertiser, third.slug).status_code == 200
    assert blocked_slugs(client, advertiser) == ["other-2", "other-0"]


def test_blocks_racing_for_the_last_place_cannot_both_pass(
    client, wiring, make_portal, advertiser, monkeypatch
):
    monkeypatch.setattr(portal_blocks, "MAX_BLOCKS_PER_PORTAL", 1)
    first, second = make_portal(slug="other-1"), make_portal(slug="other-2")
    with unit_of_work(wiring.session_factory) as session:
        portal_blocks.block_portal(
            session, portal=portals.authenticate(session, key=advertiser.key), slug=first.slug
        )
        racing = send_aside(
            wiring, lambda: block(client, advertiser, second.slug), what="the racing block"
        )
    answer = racing()
    assert answer.status_code == 409, answer.json
    assert answer.json["error"] == "too_many_blocks"
    assert blocked_slugs(client, advertiser) == [first.slug]


def test_the_same_block_racing_itself_is_made_once(client, wiring, advertiser, writer_portal):
    with unit_of_work(wiring.session_factory) as session:
        first = portal_blocks.block_portal(
            session,
            portal=portals.authenticate(session, key=advertiser.key),
            slug=writer_portal.slug,
        )
        racing = send_aside(
            wiring, lambda: block(client, advertiser, writer_portal.slug), what="the racing block"
        )
    answer = racing()
    assert answer.status_code == 200, answer.json
    assert answer.json["blocked_at"] == first.blocked_at.isoformat()


# --- closing -----------------------------------------------------------------------------


def test_a_closed_portals_blocks_go_and_those_of_others_stay(
    client, wiring, advertiser, writer_portal, other_portal
):
    block(client, writer_portal, advertiser.slug)
    block(client, writer_portal, other_portal.slug)
    block(client, advertiser, writer_portal.slug)
    with unit_of_work(wiring.session_factory) as session:
        portals.set_status(session, portal_slug=writer_portal.slug, status=PortalStatus.SUSPENDED)
    with unit_of_work(wiring.session_factory) as session:
        closing.close_portal(session, portal_slug=writer_portal.slug, lifetimes=wiring.lifetimes)
    with unit_of_work(wiring.session_factory) as session:
        left = session.execute(
            select(PortalBlock.blocker_portal_id, PortalBlock.blocked_portal_id)
        ).all()
    assert [tuple(row) for row in left] == [(advertiser.id, writer_portal.id)]
    assert blocked_slugs(client, advertiser) == [writer_portal.slug]
