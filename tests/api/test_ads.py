from __future__ import annotations

from tests.factories import ad_payload


def test_put_creates_then_updates_then_is_idempotent(client, portal):
    created = client.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers)
    assert created.status_code == 201, created.json
    assert created.json["external_id"] == "a-1"
    assert created.json["version"] == 1
    assert created.headers["ETag"] == created.json["etag"]

    again = client.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers)
    assert again.status_code == 200
    assert again.json["version"] == 1
    assert again.headers["ETag"] == created.headers["ETag"]

    changed = client.put("/v1/ads/a-1", json=ad_payload(title="Bike repairs"), headers=portal.headers)
    assert changed.status_code == 200
    assert changed.json["version"] == 2
    assert changed.json["title"] == "Bike repairs"
    assert changed.headers["ETag"] != created.headers["ETag"]
