from __future__ import annotations

import hashlib
import math
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from sqlalchemy import text

from directory.db import unit_of_work
from directory.geo import Point, Privacy, publishable_point
from directory.services import ads as ads_service
from directory.services.ads import content_hash
from tests.api.test_global_id import set_website
from tests.api.test_ledgers import LEDGER, set_ledger
from tests.factories import ad_payload, in_days


def put(client, portal, external_id, payload, **headers):
    return client.put(f"/v1/ads/{external_id}", json=payload, headers={**portal.headers, **headers})


def test_put_creates_then_updates_then_is_idempotent(client, portal):
    created = put(client, portal, "a-1", ad_payload())
    assert created.status_code == 201, created.json
    assert created.json["external_id"] == "a-1"
    assert created.json["version"] == 1
    assert created.headers["ETag"] == created.json["etag"]

    again = put(client, portal, "a-1", ad_payload())
    assert again.status_code == 200
    assert again.json["version"] == 1
    assert again.json["updated_at"] == created.json["updated_at"]
    assert again.headers["ETag"] == created.headers["ETag"]

    changed = put(client, portal, "a-1", ad_payload(title="Bike repairs"))
    assert changed.status_code == 200
    assert changed.json["version"] == 2
    assert changed.json["title"] == "Bike repairs"
    assert changed.headers["ETag"] != created.headers["ETag"]


def test_public_view_hides_member_external_id_and_visibility(client, portal):
    ad_id = put(client, portal, "a-1", ad_payload(member="m-77")).json["id"]
    public = client.get(f"/v1/ads/{ad_id}")
    assert public.status_code == 200
    assert public.json["portal"] == portal.slug
    for private in ("member", "external_id", "visibility", "etag"):
        assert private not in public.json


def test_an_etag_of_a_deleted_ad_does_not_match_its_successor_made_in_the_same_millisecond(
    client, portal, monkeypatch
):
    # Ad ids begin with their creation's millisecond: two made in one (a clock stepped
    # back, two hosts) differ only in their random bits, which the ETag must carry.
    monkeypatch.setattr(ads_service.time, "time_ns", lambda: 1_750_000_000_000_000_000)
    deleted = put(client, portal, "a-1", ad_payload())
    client.delete("/v1/ads/a-1", headers=portal.headers)
    successor = put(client, portal, "a-1", ad_payload(title="Successor"))
    assert deleted.json["id"][:13] == successor.json["id"][:13]  # the same millisecond
    assert deleted.headers["ETag"] != successor.headers["ETag"]
    response = put(
        client, portal, "a-1", ad_payload(title="Third"), **{"If-Match": deleted.headers["ETag"]}
    )
    assert response.status_code == 412, response.json


def own_etag(client, portal, external_id="a-1") -> str:
    response = client.get(f"/v1/portals/me/ads/{external_id}", headers=portal.headers)
    assert response.status_code == 200, response.json
    return response.headers["ETag"]


def test_the_etag_changes_when_the_portal_changes_what_the_ad_shows(client, portal):
    # Its version does not: a portal holding the old copy would be told "304 not changed"
    # while the ad gained a global_id or a payment block.
    put(client, portal, "a-1", ad_payload(ledger_account="bob"))
    put(client, portal, "b-1", ad_payload())  # no account: a ledger changes nothing in it
    first, plain = own_etag(client, portal, "a-1"), own_etag(client, portal, "b-1")

    set_website(client, portal, "https://sel.example.org")
    verified, plain_verified = own_etag(client, portal, "a-1"), own_etag(client, portal, "b-1")
    assert verified != first and plain_verified != plain
    stale = client.get("/v1/portals/me/ads/a-1", headers={**portal.headers, "If-None-Match": first})
    assert stale.status_code == 200 and stale.json["global_id"]

    set_ledger(client, portal, LEDGER)
    assert own_etag(client, portal, "a-1") != verified
    assert own_etag(client, portal, "b-1") == plain_verified
    unchanged = client.get(
        "/v1/portals/me/ads/a-1",
        headers={**portal.headers, "If-None-Match": own_etag(client, portal, "a-1")},
    )
    assert unchanged.status_code == 304


def test_a_write_conditional_on_the_etag_from_before_a_portal_change_is_refused(client, portal):
    etag = put(client, portal, "a-1", ad_payload(ledger_account="bob")).headers["ETag"]
    set_ledger(client, portal, LEDGER)
    stale = put(client, portal, "a-1", ad_payload(title="New"), **{"If-Match": etag})
    assert stale.status_code == 412, stale.json
    current = own_etag(client, portal)
    response = put(client, portal, "a-1", ad_payload(title="New"), **{"If-Match": current})
    assert response.status_code == 200, response.json


def test_the_etag_changes_when_the_ad_expires(client, portal, wiring):
    etag = put(client, portal, "a-1", ad_payload()).headers["ETag"]
    with unit_of_work(wiring.session_factory) as session:
        session.execute(text("UPDATE ads SET expires_at = now() - interval '1 second'"))
    response = client.get(
        "/v1/portals/me/ads/a-1", headers={**portal.headers, "If-None-Match": etag}
    )
    assert response.status_code == 200 and response.json["expired"] is True
    assert response.headers["ETag"] != etag


def test_every_answer_gives_an_ad_the_same_etag(client, portal):
    set_website(client, portal, "https://sel.example.org")
    set_ledger(client, portal, LEDGER)
    single = put(client, portal, "a-1", ad_payload(ledger_account="bob")).headers["ETag"]
    batch = client.post(
        "/v1/ads/batch",
        json={"items": [{"external_id": "a-1", "ad": ad_payload(ledger_account="bob")}]},
        headers=portal.headers,
    ).json["results"][0]["etag"]
    listed = client.get("/v1/portals/me/ads", headers=portal.headers).json["items"][0]["etag"]
    assert single == batch == listed == own_etag(client, portal)
    expired = client.post("/v1/ads/a-1/expire", headers=portal.headers).headers["ETag"]
    assert expired == own_etag(client, portal) != single


def test_if_match_with_current_etag_applies(client, portal):
    etag = put(client, portal, "a-1", ad_payload()).headers["ETag"]
    response = put(client, portal, "a-1", ad_payload(title="New"), **{"If-Match": etag})
    assert response.status_code == 200
    assert response.json["title"] == "New"


def test_if_match_with_stale_etag_is_refused_and_changes_nothing(client, portal):
    stale = put(client, portal, "a-1", ad_payload()).headers["ETag"]
    put(client, portal, "a-1", ad_payload(title="Second"))
    response = put(client, portal, "a-1", ad_payload(title="Third"), **{"If-Match": stale})
    assert response.status_code == 412
    assert response.json["errors"]["headers"]["If-Match"]
    own = client.get("/v1/portals/me/ads/a-1", headers=portal.headers).json
    assert own["title"] == "Second"


def test_if_match_on_a_missing_ad_is_refused(client, portal):
    response = put(client, portal, "a-1", ad_payload(), **{"If-Match": "*"})
    assert response.status_code == 412
    assert client.get("/v1/portals/me/ads", headers=portal.headers).json["items"] == []


def test_if_none_match_star_creates_an_ad_that_does_not_exist(client, portal):
    response = put(client, portal, "a-1", ad_payload(), **{"If-None-Match": "*"})
    assert response.status_code == 201


def test_if_none_match_star_never_replaces_an_existing_ad(client, portal):
    first = put(client, portal, "a-1", ad_payload())
    response = put(client, portal, "a-1", ad_payload(title="Other"), **{"If-None-Match": "*"})
    assert response.status_code == 412
    assert response.json["errors"]["headers"]["If-None-Match"]
    own = client.get("/v1/portals/me/ads/a-1", headers=portal.headers)
    assert (own.json["title"], own.headers["ETag"]) == ("Bicycle repairs", first.headers["ETag"])


def test_if_match_with_a_weak_etag_never_matches(client, portal):
    etag = put(client, portal, "a-1", ad_payload()).headers["ETag"]
    response = put(client, portal, "a-1", ad_payload(title="New"), **{"If-Match": f"W/{etag}"})
    assert response.status_code == 412


def test_if_match_with_a_list_applies_when_one_of_them_is_current(client, portal):
    etag = put(client, portal, "a-1", ad_payload()).headers["ETag"]
    listed = f'"000000000000-7", {etag}'
    response = put(client, portal, "a-1", ad_payload(title="New"), **{"If-Match": listed})
    assert response.status_code == 200
    assert response.json["title"] == "New"


def test_delete_with_a_stale_if_match_is_refused_and_keeps_the_ad(client, portal):
    stale = put(client, portal, "a-1", ad_payload()).headers["ETag"]
    current = put(client, portal, "a-1", ad_payload(title="Changed")).headers["ETag"]
    response = client.delete("/v1/ads/a-1", headers={**portal.headers, "If-Match": stale})
    assert response.status_code == 412
    assert response.json["errors"]["headers"]["If-Match"]
    own = client.get("/v1/portals/me/ads/a-1", headers=portal.headers)
    assert own.headers["ETag"] == current


def test_delete_with_the_current_if_match_deletes(client, portal):
    etag = put(client, portal, "a-1", ad_payload()).headers["ETag"]
    response = client.delete("/v1/ads/a-1", headers={**portal.headers, "If-Match": etag})
    assert response.status_code == 204
    assert client.get("/v1/portals/me/ads/a-1", headers=portal.headers).status_code == 404


def test_delete_with_if_match_of_a_missing_ad_is_refused(client, portal):
    response = client.delete("/v1/ads/a-1", headers={**portal.headers, "If-Match": "*"})
    assert response.status_code == 412


def test_expire_with_a_stale_if_match_is_refused_and_keeps_the_ad_public(client, portal):
    stale = put(client, portal, "a-1", ad_payload()).headers["ETag"]
    ad_id = put(client, portal, "a-1", ad_payload(title="Changed")).json["id"]
    response = client.post("/v1/ads/a-1/expire", headers={**portal.headers, "If-Match": stale})
    assert response.status_code == 412
    assert response.json["errors"]["headers"]["If-Match"]
    assert client.get(f"/v1/ads/{ad_id}").status_code == 200


def test_expire_with_the_current_if_match_expires(client, portal):
    etag = put(client, portal, "a-1", ad_payload()).headers["ETag"]
    response = client.post("/v1/ads/a-1/expire", headers={**portal.headers, "If-Match": etag})
    assert response.status_code == 200
    assert response.json["expired"] is True


def test_own_ad_with_its_current_etag_in_if_none_match_is_304(client, portal):
    etag = put(client, portal, "a-1", ad_payload()).headers["ETag"]
    headers = {**portal.headers, "If-None-Match": etag}
    response = client.get("/v1/portals/me/ads/a-1", headers=headers)
    assert response.status_code == 304
    assert response.headers["ETag"] == etag
    assert response.get_data() == b""
    put(client, portal, "a-1", ad_payload(title="Changed"))
    changed = client.get("/v1/portals/me/ads/a-1", headers=headers)
    assert changed.status_code == 200
    assert changed.json["title"] == "Changed"


def test_delete_removes_the_ad_and_a_second_delete_is_harmless(client, portal):
    ad_id = put(client, portal, "a-1", ad_payload()).json["id"]
    assert client.delete("/v1/ads/a-1", headers=portal.headers).status_code == 204
    assert client.get(f"/v1/ads/{ad_id}").status_code == 404
    assert client.delete("/v1/ads/a-1", headers=portal.headers).status_code == 204


def test_expire_takes_the_ad_out_of_public_view_and_put_renews_it(client, portal):
    ad_id = put(client, portal, "a-1", ad_payload()).json["id"]
    expired = client.post("/v1/ads/a-1/expire", headers=portal.headers)
    assert expired.status_code == 200
    assert expired.json["expired"] is True
    assert client.get(f"/v1/ads/{ad_id}").status_code == 404

    renewed = put(client, portal, "a-1", ad_payload())
    assert renewed.status_code == 200
    assert renewed.json["expired"] is False
    assert client.get(f"/v1/ads/{ad_id}").status_code == 200


def test_expire_of_a_missing_ad_is_404(client, portal):
    response = client.post("/v1/ads/nope/expire", headers=portal.headers)
    assert response.status_code == 404
    assert response.json["error"] == "not_found"
    assert response.json["errors"] == {"path": {"ad_ref": [response.json["message"]]}}


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/v1/ads/not-a-uuid", "ad_ref"),
        ("/v1/ads/7d1b0a34-8ef5-4a6c-9f7e-0c5b2f3c1e11", "ad_ref"),
        ("/v1/portals/me/ads/nope", "external_id"),
    ],
)
def test_a_missing_ad_is_named_by_its_path_parameter(client, portal, path, parameter):
    response = client.get(path, headers=portal.headers)
    assert response.status_code == 404
    assert response.json["errors"] == {"path": {parameter: [response.json["message"]]}}


def test_default_expiry_is_ninety_days_and_explicit_expiry_is_kept(client, portal, wiring):
    default = put(client, portal, "a-1", ad_payload()).json
    explicit_at = in_days(10)
    explicit = put(client, portal, "a-2", ad_payload(expires_at=explicit_at)).json
    from datetime import datetime

    created = datetime.fromisoformat(default["created_at"])
    assert (datetime.fromisoformat(default["expires_at"]) - created).days in (89, 90)
    assert datetime.fromisoformat(explicit["expires_at"]) == datetime.fromisoformat(explicit_at)


@pytest.mark.parametrize("offset", ["+00:00:59", "+05:30:15", "-03:00:30"])
def test_expires_at_with_seconds_in_its_utc_offset_is_stored_as_the_instant_sent(
    client, portal, offset
):
    # marshmallow accepts such offsets; orjson, which writes the rows, drops their seconds.
    sent = in_days(10).replace("+00:00", offset)
    put(client, portal, "a-1", ad_payload(expires_at=sent))
    own = client.get("/v1/portals/me/ads/a-1", headers=portal.headers).json
    assert datetime.fromisoformat(own["expires_at"]) == datetime.fromisoformat(sent)


def test_portal_default_currencies_apply_when_none_are_given(client, make_portal):
    portal = make_portal(default_currencies=("HOUR", "GIFT"))
    response = put(client, portal, "a-1", ad_payload(currencies=...))
    assert response.status_code == 201
    assert response.json["currencies"] == ["HOUR", "GIFT"]


def test_ads_without_currencies_are_refused_when_the_portal_has_no_defaults(client, make_portal):
    portal = make_portal(default_currencies=())
    response = put(client, portal, "a-1", ad_payload(currencies=...))
    assert response.status_code == 400
    assert "currencies" in response.json["errors"]["json"]


def test_price_is_stored_and_shown(client, portal):
    response = put(client, portal, "a-1", ad_payload("priced"))
    assert response.json["price"] == {"amount": "12.5000", "currency": "EUR", "unit": "hour"}


@pytest.mark.parametrize("privacy", [Privacy.APPROXIMATE, Privacy.AREA])
def test_non_exact_privacy_stores_only_the_snapped_point(client, portal, session, privacy):
    exact = Point(50.8503, 4.3517)
    response = put(client, portal, "a-1", ad_payload(privacy=privacy.value))
    snapped = publishable_point(exact, privacy)
    assert response.json["location"] == {"lat": snapped.lat, "lon": snapped.lon}
    assert (response.json["location"]["lat"], response.json["location"]["lon"]) != (
        exact.lat,
        exact.lon,
    )
    stored = session.execute(
        text("SELECT ST_Y(location::geometry), ST_X(location::geometry) FROM ads")
    ).one()
    assert stored == (snapped.lat, snapped.lon)


def test_nearby_points_snap_to_the_same_cell(client, portal):
    first = put(client, portal, "a-1", ad_payload("area", location={"lat": 50.85, "lon": 4.35}))
    second = put(client, portal, "a-2", ad_payload("area", location={"lat": 50.851, "lon": 4.351}))
    assert first.json["location"] == second.json["location"]


def test_hidden_privacy_stores_and_shows_no_location(client, portal, session):
    response = put(client, portal, "a-1", ad_payload(privacy="hidden"))
    assert response.status_code == 201
    assert response.json["location"] is None
    assert session.scalar(text("SELECT count(*) FROM ads WHERE location IS NOT NULL")) == 0


def test_exact_privacy_keeps_the_point(client, portal):
    response = put(client, portal, "a-1", ad_payload(location={"lat": -33.9249, "lon": 18.4241}))
    assert response.json["location"] == {"lat": -33.9249, "lon": 18.4241}


def test_portal_only_ads_are_not_public_but_listed_for_their_portal(client, portal):
    ad_id = put(client, portal, "a-1", ad_payload("portal_only")).json["id"]
    assert client.get(f"/v1/ads/{ad_id}").status_code == 404
    own = client.get("/v1/portals/me/ads", headers=portal.headers).json["items"]
    assert [ad["visibility"] for ad in own] == ["portal"]


def test_get_of_an_unknown_or_malformed_id_is_404(client):
    assert client.get("/v1/ads/7d1b0a34-8ef5-4a6c-9f7e-0c5b2f3c1e11").status_code == 404
    assert client.get("/v1/ads/not-a-uuid").status_code == 404


def test_own_ads_are_listed_in_pages_that_cover_every_ad_once(client, portal):
    for index in range(7):
        put(client, portal, f"a-{index}", ad_payload(title=f"Ad {index}"))
    seen, cursor = [], None
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get("/v1/portals/me/ads" + query, headers=portal.headers).json
        seen += [ad["external_id"] for ad in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"a-{index}" for index in range(7)]


def test_own_ads_listing_can_leave_out_expired_ads(client, portal):
    put(client, portal, "a-1", ad_payload())
    put(client, portal, "a-2", ad_payload())
    client.post("/v1/ads/a-2/expire", headers=portal.headers)
    page = client.get("/v1/portals/me/ads?include_expired=false", headers=portal.headers).json
    assert [ad["external_id"] for ad in page["items"]] == ["a-1"]


def test_unchanged_put_writes_nothing(client, portal, session):
    put(client, portal, "a-1", ad_payload())
    before = session.scalar(text("SELECT xmin::text FROM ads"))
    put(client, portal, "a-1", ad_payload())
    session.rollback()
    assert session.scalar(text("SELECT xmin::text FROM ads")) == before


def test_moving_an_approximate_ad_within_its_cell_changes_nothing(client, portal):
    first = put(client, portal, "a-1", ad_payload("area", location={"lat": 50.85, "lon": 4.35}))
    moved = put(client, portal, "a-1", ad_payload("area", location={"lat": 50.851, "lon": 4.351}))
    assert moved.status_code == 200
    assert moved.json["version"] == first.json["version"]


@pytest.mark.parametrize("amount", ["12.5", "12.5000", "0012.50"])
def test_an_amount_spelt_otherwise_changes_nothing(client, portal, amount):
    first = put(client, portal, "a-1", ad_payload("priced"))  # "12.50"
    price = {"amount": amount, "currency": "EUR", "unit": "hour"}
    again = put(client, portal, "a-1", ad_payload(price=price))
    assert again.status_code == 200
    assert again.json["version"] == 1
    assert again.headers["ETag"] == first.headers["ETag"]
    assert again.json["updated_at"] == first.json["updated_at"]


def test_an_expiry_in_another_utc_offset_changes_nothing(client, portal):
    expires_at = datetime.fromisoformat(in_days(10))
    first = put(client, portal, "a-1", ad_payload(expires_at=expires_at.isoformat()))
    elsewhere = expires_at.astimezone(timezone(timedelta(hours=-5, minutes=-30)))
    again = put(client, portal, "a-1", ad_payload(expires_at=elsewhere.isoformat()))
    assert again.status_code == 200
    assert again.json["version"] == 1
    assert again.headers["ETag"] == first.headers["ETag"]


def test_an_amount_changed_in_value_is_a_change(client, portal):
    put(client, portal, "a-1", ad_payload("priced"))
    price = {"amount": "12.51", "currency": "EUR", "unit": "hour"}
    changed = put(client, portal, "a-1", ad_payload(price=price))
    assert (changed.json["version"], changed.json["price"]["amount"]) == (2, "12.5100")


def test_a_priced_ad_hashed_as_sent_is_unchanged_when_sent_again(client, portal, monkeypatch):
    # Stored as releases before content_digests did: its digest from the amount as sent.
    monkeypatch.setattr(
        ads_service, "content_digests", lambda row, expiry: (content_hash(row, expiry),)
    )
    created = put(client, portal, "a-1", ad_payload("priced", expires_at=in_days(10)))
    monkeypatch.undo()
    again = put(client, portal, "a-1", ad_payload("priced", expires_at=created.json["expires_at"]))
    assert again.status_code == 200
    assert again.json["version"] == 1
    assert again.headers["ETag"] == created.headers["ETag"]


def test_minus_zero_coordinates_are_stored_as_zero_and_change_nothing(client, portal):
    first = put(client, portal, "a-1", ad_payload(location={"lat": -0.0, "lon": -0.0}))
    assert [math.copysign(1, value) for value in first.json["location"].values()] == [1, 1]
    again = put(client, portal, "a-1", ad_payload(location={"lat": 0.0, "lon": 0.0}))
    assert again.status_code == 200
    assert again.json["version"] == 1


def test_ad_ids_are_time_ordered_uuid7(client, portal):
    import time
    import uuid

    first = uuid.UUID(put(client, portal, "a-1", ad_payload()).json["id"])
    time.sleep(0.002)
    second = uuid.UUID(put(client, portal, "a-2", ad_payload()).json["id"])
    assert (first.version, second.version) == (7, 7)
    assert first < second


def test_expiring_an_expired_ad_changes_nothing(client, portal):
    put(client, portal, "a-1", ad_payload())
    first = client.post("/v1/ads/a-1/expire", headers=portal.headers)
    again = client.post("/v1/ads/a-1/expire", headers=portal.headers)
    assert again.status_code == 200
    assert again.json["version"] == first.json["version"]


# --- accepts_contact -----------------------------------------------------------------------


def views(client, portal, external_id: str) -> dict[str, dict]:
    """The ad as its portal, the public and a search see it."""
    own = client.get(f"/v1/portals/me/ads/{external_id}", headers=portal.headers).json
    public = client.get(f"/v1/ads/{own['id']}").json
    hits = client.get("/v1/search", query_string={"sort": "recent"}).json["hits"]
    (hit,) = [hit for hit in hits if hit["id"] == own["id"]]
    return {"own": own, "public": public, "search": hit}


def test_accepts_contact_defaults_to_true_in_every_view(client, portal, session):
    created = put(client, portal, "a-1", ad_payload())
    assert created.json["accepts_contact"] is True
    for view in views(client, portal, "a-1").values():
        assert view["accepts_contact"] is True
    assert session.scalar(text("SELECT accepts_contact FROM ads")) is True


def test_accepts_contact_false_is_stored_and_shown_in_every_view(client, portal, session):
    created = put(client, portal, "a-1", ad_payload(accepts_contact=False))
    assert created.status_code == 201, created.json
    assert created.json["accepts_contact"] is False
    for view in views(client, portal, "a-1").values():
        assert view["accepts_contact"] is False
    assert session.scalar(text("SELECT accepts_contact FROM ads")) is False


def test_sending_accepts_contact_true_to_an_ad_sent_without_it_changes_nothing(client, portal):
    created = put(client, portal, "a-1", ad_payload())
    again = put(client, portal, "a-1", ad_payload(accepts_contact=True))
    assert again.status_code == 200
    assert again.json["version"] == created.json["version"] == 1
    assert again.headers["ETag"] == created.headers["ETag"]


def test_turning_contact_off_and_on_again_bumps_the_version_each_time(client, portal):
    put(client, portal, "a-1", ad_payload())
    off = put(client, portal, "a-1", ad_payload(accepts_contact=False))
    assert (off.json["version"], off.json["accepts_contact"]) == (2, False)
    still_off = put(client, portal, "a-1", ad_payload(accepts_contact=False))
    assert still_off.json["version"] == 2
    assert still_off.headers["ETag"] == off.headers["ETag"]
    on = put(client, portal, "a-1", ad_payload())
    assert (on.json["version"], on.json["accepts_contact"]) == (3, True)


def legacy_content_hash(row: dict, explicit_expiry) -> str:
    """content_hash as computed before accepts_contact existed."""
    canonical = orjson.dumps(
        {**row, "expires_at": explicit_expiry}, option=orjson.OPT_SORT_KEYS, default=str
    )
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


def test_content_hash_of_an_ad_accepting_contact_is_the_one_stored_before_the_field():
    row = {"title": "Bicycle repairs", "ledger_account": None, "expires_at": "ignored"}
    legacy = legacy_content_hash(row, None)
    assert content_hash({**row, "accepts_contact": True}, None) == legacy
    assert content_hash({**row, "accepts_contact": False}, None) != legacy


def test_an_ad_stored_before_accepts_contact_existed_is_unchanged_when_sent_again(
    client, portal, monkeypatch
):
    # Stored as the release before this one did: its rows had no accepts_contact.
    monkeypatch.setattr(
        ads_service,
        "content_hash",
        lambda row, expiry: legacy_content_hash(
            {key: value for key, value in row.items() if key != "accepts_contact"}, expiry
        ),
    )
    created = put(client, portal, "a-1", ad_payload())
    monkeypatch.undo()
    again = put(client, portal, "a-1", ad_payload())
    assert again.status_code == 200
    assert again.json["version"] == 1
    assert again.headers["ETag"] == created.headers["ETag"]
