from __future__ import annotations

import pytest

from tests.factories import REFUSED_ADS, ad_payload


def batch(client, portal, items, **extra):
    return client.post("/v1/ads/batch", json={"items": items, **extra}, headers=portal.headers)


def test_batch_reports_a_result_per_item(client, portal):
    client.put("/v1/ads/same", json=ad_payload(), headers=portal.headers)
    client.put("/v1/ads/changed", json=ad_payload(), headers=portal.headers)
    client.put("/v1/ads/gone", json=ad_payload(), headers=portal.headers)
    client.put("/v1/ads/ending", json=ad_payload(), headers=portal.headers)
    response = batch(
        client,
        portal,
        [
            {"external_id": "new", "ad": ad_payload()},
            {"external_id": "same", "ad": ad_payload()},
            {"op": "upsert", "external_id": "changed", "ad": ad_payload(title="Changed")},
            {"op": "delete", "external_id": "gone"},
            {"op": "expire", "external_id": "ending"},
            {"external_id": "bad", "ad": ad_payload(currencies=["NOPE"])},
        ],
    )
    assert response.status_code == 200, response.json
    statuses = [(r["external_id"], r["status"]) for r in response.json["results"]]
    assert statuses == [
        ("new", "created"),
        ("same", "unchanged"),
        ("changed", "updated"),
        ("gone", "deleted"),
        ("ending", "expired"),
        ("bad", "rejected"),
    ]
    assert response.json["counts"] == {
        "created": 1, "unchanged": 1, "updated": 1, "deleted": 1, "expired": 1, "rejected": 1
    }  # fmt: skip
    assert (
        "unknown currency code NOPE" in response.json["results"][5]["errors"]["ad"]["currencies"][0]
    )
    assert [r["error"] for r in response.json["results"]] == [None] * 5 + ["unknown_currency"]


def test_batch_results_carry_ids_versions_and_etags_matching_the_ads(client, portal):
    response = batch(client, portal, [{"external_id": "a-1", "ad": ad_payload()}])
    result = response.json["results"][0]
    own = client.get("/v1/portals/me/ads/a-1", headers=portal.headers)
    assert (result["id"], result["version"], result["etag"]) == (
        own.json["id"], own.json["version"], own.headers["ETag"]
    )  # fmt: skip


def test_a_schema_error_in_one_item_leaves_the_others_applied(client, portal):
    response = batch(
        client,
        portal,
        [
            {"external_id": "ok", "ad": ad_payload()},
            {"external_id": "bad", "ad": ad_payload(location={"lat": 91, "lon": 0})},
        ],
    )
    results = response.json["results"]
    assert [r["status"] for r in results] == ["created", "rejected"]
    assert "lat" in results[1]["errors"]["ad"]["location"]
    listed = client.get("/v1/portals/me/ads", headers=portal.headers).json["items"]
    assert [ad["external_id"] for ad in listed] == ["ok"]


def test_an_error_in_a_list_item_is_reported_under_its_index(client, portal):
    # marshmallow keys a list item's errors by its index, an int: JSON makes it a string.
    response = batch(client, portal, [{"external_id": "bad", "ad": ad_payload(tags=["ok", 5])}])
    assert response.status_code == 200, response.json
    assert response.json["results"][0]["errors"] == {"ad": {"tags": {"1": ["Not a valid string."]}}}


@pytest.mark.parametrize("external_id", [".", ".."])
def test_an_external_id_no_url_can_carry_is_rejected(client, portal, external_id):
    # Clients remove "." and ".." path segments (RFC 3986): DELETE /v1/ads/.. is DELETE /v1.
    response = batch(client, portal, [{"external_id": external_id, "ad": ad_payload()}])
    result = response.json["results"][0]
    assert result["status"] == "rejected"
    assert "not '.' or '..'" in result["errors"]["external_id"][0]
    assert client.get("/v1/portals/me/ads", headers=portal.headers).json["items"] == []


def test_a_thousand_items_are_applied_in_one_request(client, portal):
    items = [{"external_id": f"a-{i:04}", "ad": ad_payload(title=f"Ad {i}")} for i in range(1000)]
    response = batch(client, portal, items)
    assert response.json["counts"] == {"created": 1000}
    page = client.get("/v1/portals/me/ads?limit=1000", headers=portal.headers).json
    assert len(page["items"]) == 1000


def test_batch_items_carry_accepts_contact(client, portal):
    client.put("/v1/ads/turned-off", json=ad_payload(), headers=portal.headers)
    client.put("/v1/ads/same", json=ad_payload(), headers=portal.headers)
    response = batch(
        client,
        portal,
        [
            {"external_id": "new-off", "ad": ad_payload(accepts_contact=False)},
            {"external_id": "new-default", "ad": ad_payload()},
            {"external_id": "turned-off", "ad": ad_payload(accepts_contact=False)},
            {"external_id": "same", "ad": ad_payload(accepts_contact=True)},
        ],
    )
    assert response.status_code == 200, response.json
    statuses = [(r["external_id"], r["status"], r["version"]) for r in response.json["results"]]
    assert statuses == [
        ("new-off", "created", 1),
        ("new-default", "created", 1),
        ("turned-off", "updated", 2),
        ("same", "unchanged", 1),
    ]
    listed = client.get("/v1/portals/me/ads", headers=portal.headers).json["items"]
    assert {ad["external_id"]: ad["accepts_contact"] for ad in listed} == {
        "new-default": True, "new-off": False, "same": True, "turned-off": False
    }  # fmt: skip


@pytest.mark.parametrize(("overrides", "code"), REFUSED_ADS.values(), ids=REFUSED_ADS.keys())
def test_a_rejected_item_carries_the_code_a_put_of_its_ad_is_answered_with(
    client, portal, overrides, code
):
    ad = ad_payload(**overrides)
    single = client.put("/v1/ads/a-1", json=ad, headers=portal.headers)

    response = batch(client, portal, [{"external_id": "a-2", "ad": ad}])

    assert single.json["error"] == code, single.json
    (result,) = response.json["results"]
    assert (result["status"], result["error"]) == ("rejected", code), result


MALFORMED_ITEMS = {
    "not-an-object": "a-1",
    "unknown-field": {"external_id": "a-1", "ad": ad_payload(), "colour": "red"},
    "unknown-op": {"op": "archive", "external_id": "a-1"},
    "upsert-without-ad": {"external_id": "a-1"},
    "delete-with-ad": {"op": "delete", "external_id": "a-1", "ad": ad_payload()},
    "external-id-a-number": {"external_id": 1842, "ad": ad_payload()},
    "external-id-dot-dot": {"external_id": "..", "ad": ad_payload()},
    "external-id-missing": {"ad": ad_payload()},
}


@pytest.mark.parametrize("item", MALFORMED_ITEMS.values(), ids=MALFORMED_ITEMS.keys())
def test_an_item_the_schema_refuses_is_rejected_as_a_validation_error(client, portal, item):
    response = batch(client, portal, [item, {"external_id": "fine", "ad": ad_payload()}])

    assert response.status_code == 200, response.json
    malformed, fine = response.json["results"]
    assert (malformed["status"], malformed["error"]) == ("rejected", "validation_error")
    assert malformed["errors"], malformed
    assert (fine["status"], fine["error"]) == ("created", None)


@pytest.mark.parametrize(
    ("op", "message"),
    [
        (None, "Must be one of: upsert, delete, expire."),
        ("x" * 500, "Must be one of: upsert, delete, expire."),
    ],
    ids=["null", "long"],
)
def test_an_item_with_an_op_that_is_none_of_the_ops_is_told_so_and_only_so(
    client, portal, op, message
):
    """Its ad was refused besides as "Must be absent for op None." (or for op and all
    500 characters sent): an op that is none of them says nothing of the ad."""
    response = batch(client, portal, [{"op": op, "external_id": "a-1", "ad": ad_payload()}])

    (result,) = response.json["results"]
    assert result["errors"] == {"op": [message]}, result


@pytest.mark.parametrize(
    "second",
    [
        {"external_id": "a-1", "ad": ad_payload(title="Second")},
        {"op": "delete", "external_id": "a-1"},
        {"op": "expire", "external_id": "a-1"},
    ],
    ids=["upsert", "delete", "expire"],
)
def test_an_external_id_given_twice_is_rejected_as_a_duplicate_and_the_first_stands(
    client, portal, second
):
    response = batch(client, portal, [{"external_id": "a-1", "ad": ad_payload()}, second])

    first, again = response.json["results"]
    assert (first["status"], first["error"]) == ("created", None)
    assert (again["status"], again["error"]) == ("rejected", "duplicate_external_id")
    assert again["errors"] == {
        "external_id": [
            "external_id 'a-1' appears more than once in this request (first at item 0)"
        ]
    }
    own = client.get("/v1/portals/me/ads/a-1", headers=portal.headers).json
    assert (own["title"], own["expired"]) == (ad_payload()["title"], False)


def test_expiring_an_ad_the_portal_does_not_have_is_rejected_as_not_found(client, portal):
    single = client.post("/v1/ads/nope/expire", headers=portal.headers)

    response = batch(client, portal, [{"op": "expire", "external_id": "nope"}])

    assert (single.status_code, single.json["error"]) == (404, "not_found")
    (result,) = response.json["results"]
    assert (result["status"], result["error"]) == ("rejected", "not_found")


# An item of external id a-1 the schemas refuse, and one they take.
MALFORMED_A1 = {"external_id": "a-1", "ad": ad_payload(title="")}
WELL_FORMED_A1 = {"external_id": "a-1", "ad": ad_payload(title="Changed")}


@pytest.mark.parametrize("replace", [False, True], ids=["batch", "replace batch"])
@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([MALFORMED_A1, WELL_FORMED_A1], ["validation_error", "duplicate_external_id"]),
        ([WELL_FORMED_A1, MALFORMED_A1], [None, "duplicate_external_id"]),
    ],
    ids=["malformed-first", "malformed-second"],
)
def test_whatever_became_of_an_external_ids_first_item_a_later_one_is_a_duplicate(
    client, portal, items, expected, replace
):
    """A first item the schemas refused stood for nothing: the next one was applied,
    though the first had been told its ad was kept as it was."""
    client.put("/v1/ads/a-1", json=ad_payload(title="Original"), headers=portal.headers)

    response = batch(client, portal, items, replace=replace)

    assert [r["error"] for r in response.json["results"]] == expected, response.json
    title = client.get("/v1/portals/me/ads/a-1", headers=portal.headers).json["title"]
    assert title == ("Original" if expected[0] else "Changed")
