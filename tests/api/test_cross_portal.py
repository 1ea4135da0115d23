"""A portal acts on its own data only: every attempt at another portal's is refused
or lands on the caller's own data, and the other portal's data stays as it was."""

from __future__ import annotations

from tests.factories import ad_payload


def own(client, portal, external_id):
    return client.get(f"/v1/portals/me/ads/{external_id}", headers=portal.headers)


def test_portal_cannot_change_another_portals_ad_by_its_external_id(client, portal, other_portal):
    client.put("/v1/ads/shared-id", json=ad_payload(title="Mine"), headers=portal.headers)
    response = client.put(
        "/v1/ads/shared-id", json=ad_payload(title="Theirs"), headers=other_portal.headers
    )
    assert response.status_code == 201  # a new ad of the other portal, not a change
    assert own(client, portal, "shared-id").json["title"] == "Mine"
    assert own(client, other_portal, "shared-id").json["title"] == "Theirs"


def test_portal_cannot_delete_another_portals_ad(client, portal, other_portal):
    ad_id = client.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers).json["id"]
    assert client.delete("/v1/ads/a-1", headers=other_portal.headers).status_code == 204
    assert client.delete(f"/v1/ads/{ad_id}", headers=other_portal.headers).status_code == 204
    assert own(client, portal, "a-1").status_code == 200
    assert client.get(f"/v1/ads/{ad_id}").status_code == 200


def test_portal_cannot_expire_another_portals_ad(client, portal, other_portal):
    client.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers)
    assert client.post("/v1/ads/a-1/expire", headers=other_portal.headers).status_code == 404
    assert own(client, portal, "a-1").json["expired"] is False


def test_portal_cannot_touch_another_portals_ad_in_a_batch(client, portal, other_portal):
    client.put("/v1/ads/a-1", json=ad_payload(title="Mine"), headers=portal.headers)
    response = client.post(
        "/v1/ads/batch",
        json={
            "items": [
                {"op": "delete", "external_id": "a-1"},
                {"op": "expire", "external_id": "a-1x"},
            ]
        },
        headers=other_portal.headers,
    )
    assert [r["status"] for r in response.json["results"]] == ["unchanged", "rejected"]
    assert own(client, portal, "a-1").json["title"] == "Mine"


def test_replace_by_one_portal_leaves_other_portals_ads_alone(client, portal, other_portal):
    client.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers)
    client.post(
        "/v1/ads/batch",
        json={"replace": True, "items": [{"external_id": "b-1", "ad": ad_payload()}]},
        headers=other_portal.headers,
    )
    assert own(client, portal, "a-1").status_code == 200


def test_portal_cannot_read_another_portals_private_ads(client, portal, other_portal):
    ad_id = client.put(
        "/v1/ads/secret", json=ad_payload("portal_only"), headers=portal.headers
    ).json["id"]
    assert own(client, other_portal, "secret").status_code == 404
    assert client.get(f"/v1/ads/{ad_id}", headers=other_portal.headers).status_code == 404
    listed = client.get("/v1/portals/me/ads", headers=other_portal.headers).json["items"]
    assert listed == []


def test_portal_cannot_see_or_use_another_portals_sync_session(client, portal, other_portal):
    session_id = client.post("/v1/sync-sessions", headers=portal.headers).json["id"]
    assert (
        client.get(f"/v1/sync-sessions/{session_id}", headers=other_portal.headers).status_code
        == 404
    )
    staged = client.post(
        f"/v1/sync-sessions/{session_id}/items",
        json={"items": [{"external_id": "x", "ad": ad_payload()}]},
        headers=other_portal.headers,
    )
    assert staged.status_code == 404
    for action in ("commit",):
        response = client.post(
            f"/v1/sync-sessions/{session_id}/{action}", headers=other_portal.headers
        )
        assert response.status_code == 404
    assert (
        client.delete(f"/v1/sync-sessions/{session_id}", headers=other_portal.headers).status_code
        == 404
    )
    state = client.get(f"/v1/sync-sessions/{session_id}", headers=portal.headers).json
    assert (state["status"], state["staged"]) == ("open", 0)


def test_portal_cannot_change_or_delete_another_portals_currency(client, portal, other_portal):
    code = client.post(
        "/v1/currencies", json={"code": "TALENT", "name": "Talent"}, headers=portal.headers
    ).json["code"]
    patch = client.patch(
        f"/v1/currencies/{code}", json={"name": "Mine now"}, headers=other_portal.headers
    )
    assert patch.status_code == 403
    assert client.delete(f"/v1/currencies/{code}", headers=other_portal.headers).status_code == 403
    assert client.get(f"/v1/currencies/{code}").json["name"] == "Talent"


def test_portal_profile_is_the_callers_own(client, portal, other_portal):
    client.patch("/v1/portals/me", json={"name": "Renamed"}, headers=other_portal.headers)
    assert client.get("/v1/portals/me", headers=portal.headers).json["name"] == "Test Exchange"
    assert client.get("/v1/portals/me", headers=other_portal.headers).json["name"] == "Renamed"


def test_another_portals_community_currency_may_be_accepted(client, portal, other_portal):
    code = client.post(
        "/v1/currencies", json={"code": "TALENT", "name": "Talent"}, headers=portal.headers
    ).json["code"]
    response = client.put(
        "/v1/ads/a-1", json=ad_payload(currencies=[code]), headers=other_portal.headers
    )
    assert response.status_code == 201
