"""GET /v1/search as an HTTP operation: what it refuses, and how it answers.

Which ads a search finds, and in which order, is the engines' contract
(tests/search/test_contract.py); this module is about the parameters, the cursor, the
JSON and GeoJSON bodies, on the default (PostgreSQL) engine."""

from __future__ import annotations

import base64
import dataclasses

import orjson
import pytest

from directory.api.search.routes import public_ad
from directory.api.search.schemas import SearchHitSchema
from directory.geo import Point
from directory.search import SearchQuery, Sort, shown_distance_km
from directory.services.ads import record_from_row
from tests.api.test_global_id import trust
from tests.factories import ad_payload
from tests.search.conftest import destination

ORIGIN = Point(50.8503, 4.3517)


def search(client, headers=None, **params):
    return client.get("/v1/search", query_string=params, headers=headers or {})


def put(client, portal, external_id, payload):
    response = client.put(f"/v1/ads/{external_id}", json=payload, headers=portal.headers)
    assert response.status_code in (200, 201), response.json
    return response.json


def put_at(client, portal, external_id: str, distance_km: float, **overrides) -> str:
    """An exact ad this far east of ORIGIN; returns its id."""
    point = destination(ORIGIN, 90, distance_km)
    payload = ad_payload(location={"lat": point.lat, "lon": point.lon}, **overrides)
    return put(client, portal, external_id, payload)["id"]


def batch(client, portal, ads: dict[str, dict]) -> dict[str, str]:
    items = [{"op": "upsert", "external_id": key, "ad": ad} for key, ad in ads.items()]
    response = client.post("/v1/ads/batch", json={"items": items}, headers=portal.headers)
    assert response.status_code == 200, response.json
    assert response.json["counts"] == {"created": len(items)}, response.json
    return {result["external_id"]: result["id"] for result in response.json["results"]}


# --- refused input -------------------------------------------------------------------------

POINT = {"lat": "50.85", "lon": "4.35"}
AD_HEX = "0" * 32


def forged_cursor(parts: list) -> str:
    """A search cursor as a client could forge one: fingerprint, sort value, ad id."""
    return "s1." + base64.urlsafe_b64encode(orjson.dumps(parts)).decode().rstrip("=")


BAD_INPUTS = [
    pytest.param({"colour": "red"}, "colour", id="unknown-parameter"),
    pytest.param("kind=offer&kind=want", "kind", id="repeated-parameter"),
    pytest.param("q=bike&q=ladder", "q", id="repeated-words"),
    pytest.param({"radius_km": "5"}, "radius_km", id="radius-without-point"),
    pytest.param({"lat": "50.85"}, "lon", id="lat-without-lon"),
    pytest.param({"lon": "4.35"}, "lat", id="lon-without-lat"),
    pytest.param(POINT | {"radius_km": "1000.5"}, "radius_km", id="radius-beyond-1000"),
    pytest.param(POINT | {"radius_km": "0"}, "radius_km", id="radius-zero"),
    pytest.param(POINT | {"radius_km": "-3"}, "radius_km", id="radius-negative"),
    pytest.param(POINT | {"radius_km": "far"}, "radius_km", id="radius-text"),
    pytest.param(POINT | {"radius_km": "nan"}, "radius_km", id="radius-nan"),
    pytest.param({"lat": "50.85", "lon": "181"}, "lon", id="lon-out-of-range"),
    pytest.param({"lat": "-90.5", "lon": "4"}, "lat", id="lat-out-of-range"),
    pytest.param({"lat": "nan", "lon": "4"}, "lat", id="lat-nan"),
    pytest.param({"bbox": "4.2,50.7,4.5"}, "bbox", id="bbox-three-numbers"),
    pytest.param({"bbox": "4.2,50.7,4.5,50.9,1"}, "bbox", id="bbox-five-numbers"),
    pytest.param({"bbox": "west,south,east,north"}, "bbox", id="bbox-text"),
    pytest.param({"bbox": "4.2,nan,4.5,50.9"}, "bbox", id="bbox-nan"),
    pytest.param({"bbox": "4.2,50.9,4.5,50.7"}, "bbox", id="bbox-inverted-latitudes"),
    pytest.param({"bbox": "4.2,50.7,4.2,50.9"}, "bbox", id="bbox-no-width"),
    pytest.param({"bbox": "180,-90,-180,90"}, "bbox", id="bbox-antimeridian-no-width"),
    pytest.param({"bbox": "-181,50.7,4.5,50.9"}, "bbox", id="bbox-lon-out-of-range"),
    pytest.param({"bbox": "4.2,50.7,4.5,91"}, "bbox", id="bbox-lat-out-of-range"),
    pytest.param(
        POINT | {"radius_km": "5", "bbox": "4.2,50.7,4.5,50.9"}, "bbox", id="bbox-and-radius"
    ),
    pytest.param({"sort": "distance"}, "sort", id="distance-without-point"),
    pytest.param({"sort": "relevance"}, "sort", id="relevance-without-words"),
    pytest.param({"sort": "cheapest"}, "sort", id="unknown-sort"),
    pytest.param({"limit": "0"}, "limit", id="limit-0"),
    pytest.param({"limit": "101"}, "limit", id="limit-101"),
    pytest.param({"limit": "ten"}, "limit", id="limit-text"),
    pytest.param({"cursor": "garbage"}, "cursor", id="cursor-garbage"),
    pytest.param({"cursor": "s1.bm90IGpzb24"}, "cursor", id="cursor-not-json"),
    pytest.param({"cursor": "s1.WyJhIiwxLCJ6eiJd"}, "cursor", id="cursor-bad-id"),
    pytest.param(
        {"cursor": forged_cursor(["f", "2026-01-01T00:00:00+00:00", 5])},
        "cursor",
        id="cursor-id-a-number",
    ),
    pytest.param(
        {"cursor": forged_cursor(["f", "2026-01-01T00:00:00+00:00", [AD_HEX]])},
        "cursor",
        id="cursor-id-a-list",
    ),
    pytest.param({"category": "gardening"}, "category", id="unknown-category"),
    pytest.param({"category": "food,food.caviar"}, "category", id="unknown-child-category"),
    pytest.param({"currency": "euro"}, "currency", id="bad-currency-code"),
    pytest.param({"currency": "EUR,,HOUR"}, "currency", id="empty-comma-item"),
    pytest.param({"currency": "EUR,"}, "currency", id="trailing-comma"),
    pytest.param({"tags": ","}, "tags", id="empty-tags"),
    pytest.param({"tags": "bi\x00kes"}, "tags", id="tag-with-nul"),
    pytest.param({"tags": "bikes,\x1b[31m"}, "tags", id="tag-with-control-character"),
    pytest.param({"price_min": "5"}, "price_currency", id="price-min-without-currency"),
    pytest.param({"price_currency": "EUR"}, "price_currency", id="price-currency-without-range"),
    pytest.param(
        {"price_currency": "EUR", "price_min": "10", "price_max": "5"},
        "price_max",
        id="price-min-above-max",
    ),
    pytest.param({"price_currency": "EUR", "price_min": "cheap"}, "price_min", id="price-text"),
    pytest.param(
        {"price_currency": "EUR", "price_max": "5", "has_price": "false"},
        "has_price",
        id="range-without-price",
    ),
    pytest.param({"has_price": "yes"}, "has_price", id="has-price-not-boolean"),
    pytest.param({"facets": "category,colour"}, "facets", id="bad-facet-name"),
    pytest.param({"format": "xml"}, "format", id="bad-format"),
    pytest.param({"kind": "gift"}, "kind", id="unknown-kind"),
    pytest.param({"language": "français"}, "language", id="bad-language"),
    pytest.param({"portal": "Not A Slug"}, "portal", id="bad-portal-slug"),
    pytest.param({"updated_since": "2026-01-01T00:00:00"}, "updated_since", id="time-without-zone"),
    pytest.param({"updated_since": "yesterday"}, "updated_since", id="time-text"),
    pytest.param({"q": ""}, "q", id="empty-words"),
    pytest.param({"q": "!!! ?"}, "q", id="no-letter-or-digit"),
    pytest.param({"q": "\u200b"}, "q", id="only-a-zero-width-space"),
    # Percent-escapes of bytes that are not UTF-8 (a Latin-1 client's "café") were kept
    # as written, "%E9", and searched for.
    pytest.param("q=caf%E9", "q", id="words-in-latin-1"),
    pytest.param("tags=v%E9lo", "tags", id="tag-in-latin-1"),
    pytest.param("q=%C0%80", "q", id="overlong-utf-8"),
    pytest.param({"q": "x" * 201}, "q", id="too-many-words"),
]


@pytest.mark.parametrize(("params", "field"), BAD_INPUTS)
def test_bad_input_is_refused_naming_the_parameter(client, params, field):
    if isinstance(params, str):
        response = client.get(f"/v1/search?{params}")
    else:
        response = search(client, **params)
    assert response.status_code == 400, response.json
    assert field in response.json["errors"]["query"], response.json


def test_a_cursor_garbage_message_says_where_cursors_come_from(client):
    response = search(client, cursor="garbage")
    assert "next_cursor" in response.json["errors"]["query"]["cursor"][0]


@pytest.fixture
def three_bikes(client, portal):
    return batch(
        client,
        portal,
        {
            f"bike-{n}": ad_payload(title=f"Bicycle number {n}", category="sports.bikes")
            for n in range(3)
        },
    )


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"q": "ladder"}, id="other-words"),
        pytest.param({"category": "food"}, id="other-category"),
        pytest.param({"sort": "recent"}, id="other-sort"),
        pytest.param({"lat": "50", "lon": "4"}, id="a-point-added"),
        pytest.param({"currency": "EUR"}, id="a-filter-added"),
    ],
)
def test_a_cursor_from_another_search_is_refused(client, three_bikes, change):
    first = search(client, q="bicycle", category="sports", limit=1).json
    assert first["next_cursor"]
    params = {"q": "bicycle", "category": "sports"} | change
    response = search(client, cursor=first["next_cursor"], **params)
    assert response.status_code == 400, response.json
    assert "cursor" in response.json["errors"]["query"]


def test_a_cursor_from_an_anonymous_search_is_refused_to_a_portal(client, portal, three_bikes):
    first = search(client, q="bicycle", limit=1).json
    response = search(client, portal.headers, q="bicycle", cursor=first["next_cursor"])
    assert response.status_code == 400
    assert "cursor" in response.json["errors"]["query"]


@pytest.mark.parametrize("moment", ["not a time", "2026-01-01T00:00:00"])
def test_a_most_recent_first_cursor_must_hold_a_time_with_its_zone(client, three_bikes, moment):
    cursor = search(client, limit=1).json["next_cursor"]
    fingerprint, _, ad_hex = orjson.loads(base64.urlsafe_b64decode(cursor[3:] + "=="))
    response = search(client, limit=1, cursor=forged_cursor([fingerprint, moment, ad_hex]))
    assert response.status_code == 400, response.json
    assert "cursor" in response.json["errors"]["query"]


def test_a_cursor_may_continue_with_another_limit(client, three_bikes):
    first = search(client, q="bicycle", limit=1).json
    rest = search(client, q="bicycle", limit=5, cursor=first["next_cursor"]).json
    ids = [hit["id"] for hit in first["hits"] + rest["hits"]]
    assert sorted(ids) == sorted(three_bikes.values())
    assert rest["next_cursor"] is None


@pytest.mark.parametrize(("radius_km", "found"), [(9.998, False), (10.002, True)])
def test_a_radius_includes_ads_up_to_its_boundary(client, portal, radius_km, found):
    ad_id = put_at(client, portal, "ad-1", 10.0)
    hits = search(client, lat=ORIGIN.lat, lon=ORIGIN.lon, radius_km=radius_km).json["hits"]
    assert (ad_id in [hit["id"] for hit in hits]) is found


# --- limits and facets ---------------------------------------------------------------------


@pytest.fixture
def twenty_five_ads(client, portal):
    return batch(
        client,
        portal,
        {
            f"ad-{n:02d}": ad_payload(
                kind="want" if n % 5 == 0 else "offer",
                category="food.baked" if n % 2 else "food",
                location={"lat": ORIGIN.lat + n / 1000, "lon": ORIGIN.lon},
            )
            for n in range(25)
        },
    )


@pytest.mark.parametrize(
    ("limit", "count", "more"),
    [(None, 20, True), (1, 1, True), (24, 24, True), (25, 25, False), (100, 25, False)],
)
def test_limit_bounds_the_page(client, twenty_five_ads, limit, count, more):
    params = {} if limit is None else {"limit": limit}
    body = search(client, **params).json
    assert len(body["hits"]) == count
    assert (body["next_cursor"] is not None) == more


def test_facets_count_the_whole_result_set_not_the_page(client, twenty_five_ads):
    body = search(client, limit=1, facets="kind,category,portal,currency").json
    assert len(body["hits"]) == 1
    facets = body["facets"]
    assert facets["total"] == 25
    assert facets["kind"] == {"offer": 20, "want": 5}
    assert facets["category"] == {"food": 25, "food.baked": 12}
    assert sum(facets["portal"].values()) == 25
    assert facets["currency"] == {"EUR": 25, "HOUR": 25}


def test_facets_are_absent_unless_asked_for(client, twenty_five_ads):
    assert search(client).json["facets"] is None


# --- paging while ads change ---------------------------------------------------------------


def test_nearest_first_paging_neither_repeats_nor_skips_when_ads_change(client, portal):
    ids = [put_at(client, portal, f"ad-{n}", n + 1.0) for n in range(10)]
    first = search(client, lat=ORIGIN.lat, lon=ORIGIN.lon, limit=4).json
    assert [hit["id"] for hit in first["hits"]] == ids[:4]

    client.delete("/v1/ads/ad-1", headers=portal.headers)  # seen already
    put_at(client, portal, "ad-6", 7.0, title="Changed, same place")  # unseen, same rank
    put_at(client, portal, "ad-new", 2.5)  # ranks before the cursor

    rest, cursor = [], first["next_cursor"]
    while cursor:
        page = search(client, lat=ORIGIN.lat, lon=ORIGIN.lon, limit=4, cursor=cursor).json
        rest += [hit["id"] for hit in page["hits"]]
        cursor = page["next_cursor"]
    assert rest == ids[4:]


def test_most_recent_first_paging_neither_repeats_nor_skips_when_ads_change(client, portal):
    ids = [put_at(client, portal, f"ad-{n}", n + 1.0) for n in range(10)]
    newest_first = ids[::-1]
    first = search(client, limit=4).json
    assert [hit["id"] for hit in first["hits"]] == newest_first[:4]

    client.delete(f"/v1/ads/ad-{8}", headers=portal.headers)  # seen already
    put_at(client, portal, "ad-3", 4.0, title="Changed: now the most recent")  # unseen
    put_at(client, portal, "ad-new", 2.5)  # newer than everything: before the cursor

    rest, cursor = [], first["next_cursor"]
    while cursor:
        page = search(client, limit=3, cursor=cursor).json
        rest += [hit["id"] for hit in page["hits"]]
        cursor = page["next_cursor"]
    assert rest == [ad_id for ad_id in newest_first[4:] if ad_id != ids[3]]


# --- the body ------------------------------------------------------------------------------


@pytest.fixture
def varied_ads(client, portal):
    # A verified website (global ids) and a ledger (payment blocks): every part of a hit shows.
    profile = {
        "website": "https://Example.org/sel/",
        "ledger": {"protocol": "credit-commons", "url": "http://127.0.0.1:9/", "node": "n"},
    }
    assert client.patch("/v1/portals/me", json=profile, headers=portal.headers).status_code == 200
    trust(client, portal)
    return batch(
        client,
        portal,
        {
            "exact": ad_payload(
                "priced",
                images=["https://example.org/bike.jpg"],
                ledger_account="acct:42",
                language="en-GB",
            ),
            "approximate": ad_payload("approximate", "want", language=...),
            "area": ad_payload("area", tags=[]),
            "hidden": ad_payload("hidden", title="Somewhere I won't say"),
        },
    )


def test_hits_render_as_the_hit_schema_dumps_them(client, wiring, varied_ads):
    """The hand-written rendering (for speed) must not drift from the documented schema."""
    query = SearchQuery(point=Point(50.9, 4.4), sort=Sort.RECENT)
    page = wiring.search.search(query)
    assert len(page.hits) == 4
    schema = SearchHitSchema()
    records = [record_from_row(hit.row) for hit in page.hits]
    expected = [
        schema.dump(
            {
                **dataclasses.asdict(record),
                "distance_km": shown_distance_km(hit.distance_m, record.privacy),
            }
        )
        for hit, record in zip(page.hits, records, strict=True)
    ]
    assert [orjson.loads(orjson.dumps(public_ad(hit))) for hit in page.hits] == expected
    assert {record.privacy.value for record in records} == set(varied_ads)
    assert any(record.payment is not None for record in records)  # every part rendered
    assert any(record.global_id is not None for record in records)
    assert all(hit["distance_km"] is not None for hit in expected if hit["location"])
    body = search(client, lat=50.9, lon=4.4, sort="recent").json
    assert body["hits"] == expected


def _check_feature_collection(body: dict, ids: dict[str, str]) -> None:
    assert body["type"] == "FeatureCollection"
    assert "next_cursor" in body
    features = {feature["id"]: feature for feature in body["features"]}
    assert set(features) == set(ids.values())
    for key, ad_id in ids.items():
        feature = features[ad_id]
        assert feature["type"] == "Feature"
        assert "location" not in feature["properties"]
        assert feature["properties"]["id"] == ad_id
        if key == "hidden":
            assert feature["geometry"] is None


def test_geojson_by_format_parameter(client, varied_ads):
    response = search(client, format="geojson", sort="recent", lat=50.9, lon=4.4)
    assert response.status_code == 200
    assert response.mimetype == "application/geo+json"
    _check_feature_collection(response.json, varied_ads)
    json_body = search(client, sort="recent", lat=50.9, lon=4.4).json
    for hit, feature in zip(json_body["hits"], response.json["features"], strict=True):
        location = hit.pop("location")
        if location is None:
            assert feature["geometry"] is None
        else:
            assert feature["geometry"] == {
                "type": "Point",
                "coordinates": [location["lon"], location["lat"]],
            }
        assert feature["properties"] == hit


@pytest.mark.parametrize(
    "accept",
    [
        "application/geo+json",
        "Application/GEO+JSON",  # media types are case-insensitive
        "application/json;q=0.5, application/geo+json",
        # Parameters do not hide the type (werkzeug alone matched nothing with them).
        "application/geo+json; charset=utf-8",
        "application/geo+json;profile=x, application/json;q=0.5",
        "application/*;q=0.2, application/geo+json",
    ],
)
def test_geojson_by_accept_header(client, varied_ads, accept):
    response = search(client, {"Accept": accept})
    assert response.status_code == 200
    assert response.mimetype == "application/geo+json"
    _check_feature_collection(response.json, varied_ads)


@pytest.mark.parametrize(
    "accept",
    [
        "application/json",
        "*/*",
        "application/json, application/geo+json;q=0.5",
        None,
        "application/json; charset=utf-8",
        "text/html, */*;q=0.8",  # a browser's
        "application/*",
    ],
)
def test_json_unless_geojson_is_preferred(client, varied_ads, accept):
    response = search(client, {"Accept": accept} if accept else {})
    assert response.mimetype == "application/json"
    assert "hits" in response.json


@pytest.mark.parametrize(
    "accept",
    ["application/xml", "text/html", "application/json;q=0", "*/*;q=0", "text/*"],
)
def test_an_accept_header_taking_neither_format_is_refused_with_406(client, accept):
    response = search(client, {"Accept": accept})
    assert response.status_code == 406, response.get_data(as_text=True)
    assert response.json["error"] == "not_acceptable"
    assert response.json["errors"]["headers"]["Accept"]
    # Asked for by name, a format is served whatever Accept says.
    assert search(client, {"Accept": accept}, format="geojson").status_code == 200


def test_format_json_wins_over_the_accept_header(client, varied_ads):
    response = search(client, {"Accept": "application/geo+json"}, format="json")
    assert response.mimetype == "application/json"
    assert "hits" in response.json


def test_geojson_carries_facets_when_asked(client, varied_ads):
    body = search(client, format="geojson", facets="kind").json
    assert body["facets"] == {"total": 4, "kind": {"offer": 3, "want": 1}}


# --- words and tags as people write them ---------------------------------------------------


@pytest.mark.parametrize(
    "odd_word",
    [
        pytest.param("\u2474", id="parenthesised-digit"),  # unaccent: "(1)"
        pytest.param("a\u02d0b", id="modifier-colon"),  # unaccent: "a:b"
        pytest.param("\u02bc", id="modifier-apostrophe"),  # unaccent: a quote
    ],
)
def test_words_that_unaccent_turns_into_query_syntax_are_still_words(client, portal, odd_word):
    batch(client, portal, {"cafe": ad_payload(title="Café associatif")})
    for q in (odd_word, f"café {odd_word}"):
        for sort in ("relevance", "recent"):
            response = search(client, q=q, sort=sort)
            assert response.status_code == 200, response.json


def test_a_query_in_a_script_with_combining_marks_counts_its_words_whole(client, portal):
    # 10 words, which cut at their vowel signs and viramas counted 17: refused, past 16.
    q = "मुझे हिन्दी में लिखी पुरानी किताबें और पत्रिकाएँ चाहिए, कृपया"
    ids = batch(client, portal, {"hindi": ad_payload(title=q, language="hi")})
    response = search(client, q=q)
    assert response.status_code == 200, response.json
    assert [hit["id"] for hit in response.json["hits"]] == [ids["hindi"]]


@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        pytest.param("Bike", "bIKE", id="ascii"),
        pytest.param("Straße", "Straße", id="sharp-s-as-written"),
        pytest.param("Straße", "STRAßE", id="sharp-s-other-case"),
        pytest.param("İstanbul", "İstanbul", id="dotted-capital-i-as-written"),
        pytest.param("İstanbul", "istanbul", id="dotted-capital-i-lower"),
    ],
)
def test_a_tag_is_found_whatever_the_case_of_its_letters(client, portal, stored, asked):
    ids = batch(client, portal, {"tagged": ad_payload(tags=[stored])})
    hits = search(client, tags=asked).json["hits"]
    assert [hit["id"] for hit in hits] == [ids["tagged"]]


@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        pytest.param("en", "EN", id="upper-case-asked"),
        pytest.param("EN", "en", id="upper-case-stored"),
        pytest.param("fr-CA", "fr-ca", id="lower-case-region-asked"),
        pytest.param("fr-ca", "FR-CA", id="upper-case-tag-asked"),
        pytest.param("fr-CA", "Fr", id="mixed-case-primary-asked"),
    ],
)
def test_an_ad_is_found_whatever_the_case_of_its_language_tag(client, portal, stored, asked):
    ids = batch(
        client,
        portal,
        {"in-language": ad_payload(language=stored), "other": ad_payload(language="de")},
    )
    response = search(client, language=asked)
    assert response.status_code == 200, response.json
    assert [hit["id"] for hit in response.json["hits"]] == [ids["in-language"]]


# --- HTTP ---------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [{"limit": "1"}, {"q": "bicycle"}, POINT])
def test_head_answers_as_get_does(client, three_bikes, params):
    get = search(client, **params)
    head = client.head("/v1/search", query_string=params)
    assert (
        (head.status_code, head.mimetype)
        == (get.status_code, get.mimetype)
        == (
            200,
            "application/json",
        )
    )
    assert head.get_data() == b""


@pytest.mark.parametrize("params", [{}, {"format": "geojson"}])
@pytest.mark.parametrize("accept", [None, "application/geo+json"])
def test_answers_say_they_vary_with_accept(client, three_bikes, params, accept):
    # The format follows Accept unless asked for: a shared cache must key on it.
    response = search(client, {"Accept": accept} if accept else {}, **params)
    assert response.status_code == 200
    assert "Accept" in response.headers["Vary"]
