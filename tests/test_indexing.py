"""The Meilisearch engine and its indexing, as far as they run without a Meilisearch
server: what is sent to Meilisearch (documents, filters, sorts, settings), the feed
position table, and how the worker, the CLI and the API behave when the engine is
Meilisearch but no server answers. How indexing follows the feed, survives failures and
rebuilds is checked against a stand-in that keeps indexes as Meilisearch would
(StandInMeilisearch). The tests at the end need a live server and skip unless
DIRECTORY_TEST_MEILISEARCH_URL points at one (tests/search/ runs the engine contract on
it too)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import signal
import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import update

from directory import build_wiring, create_app
from directory import worker as worker_module
from directory.__main__ import cli
from directory.api.search.routes import public_ad
from directory.db import unit_of_work
from directory.geo import EARTH_RADIUS_M, BBox, Point, Privacy, haversine_m
from directory.models import Ad, AdKind, LedgerProtocol, PortalStatus
from directory.models.ads import Visibility
from directory.search import Facet, PriceRange, SearchQuery, Sort, SortKey, indexing, meili
from directory.services import portals
from directory.services.ads import AdRecord, Payment, Price, get_public_ads
from directory.services.feed import read_feed
from directory.settings import Settings
from tests.factories import ad_payload, in_days

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
NOW_US = 1795608000000000
# Nothing listens on port 1: connections are refused at once.
UNREACHABLE_MEILISEARCH = "http://127.0.0.1:1"
MEILISEARCH_URL_VARIABLE = "DIRECTORY_TEST_MEILISEARCH_URL"
MEILISEARCH_KEY_VARIABLE = "DIRECTORY_TEST_MEILISEARCH_KEY"


def record(**overrides) -> AdRecord:
    values = {
        "id": uuid.UUID("0192f3a4-5b6c-7d8e-9fa0-b1c2d3e4f506"),
        "portal": "brussels-lets",
        "external_id": "ad-1",
        "kind": AdKind.OFFER,
        "title": "Bicycle repairs",
        "body": "Punctures, brakes and gears.",
        "category": "home.repairs",
        "tags": ["Bikes", "REPAIRS"],
        "location": Point(50.8503, 4.3517),
        "privacy": Privacy.EXACT,
        "visibility": Visibility.PUBLIC,
        "currencies": ["EUR", "HOUR"],
        "price": Price(amount=Decimal("12.5000"), currency="EUR", unit="hour"),
        "language": "fr-BE",
        "images": [],
        "expires_at": NOW + timedelta(days=90),
        "member": "m-1",
        "ledger_account": None,
        "version": 1,
        "created_at": NOW,
        "updated_at": NOW,
    }
    return AdRecord(**(values | overrides))


def conditions(**query) -> list[str]:
    """The filter for a query, less the expiry condition every query carries."""
    built = meili.query_filter(SearchQuery(**query), now=NOW)
    assert built[0] == f"expires_at_ts > {NOW_US}"
    return built[1:]


# --- documents --------------------------------------------------------------------------


def test_document_holds_what_filters_sorts_and_words_need():
    ad = record()

    doc = meili.document(ad)

    assert doc == {
        "id": "0192f3a4-5b6c-7d8e-9fa0-b1c2d3e4f506",
        **dict(zip(meili.ID_FIELDS, meili.id_parts(ad.id), strict=True)),
        "portal": "brussels-lets",
        "kind": "offer",
        "category": "home.repairs",
        "category_group": "home",
        "title": "Bicycle repairs",
        "body": "Punctures, brakes and gears.",
        "tags": ["bikes", "repairs"],
        "currencies": ["EUR", "HOUR"],
        "language": "fr-be",
        "language_primary": "fr",
        "has_price": True,
        "price_amount": 12.5,
        "price_currency": "EUR",
        "updated_at_ts": NOW_US,
        "expires_at_ts": NOW_US + 90 * 86_400_000_000,
        "has_location": True,
        "payable": False,
        "_geo": {"lat": 50.8503, "lng": 4.3517},
        "lat": 50.8503,
        "lng": 4.3517,
    }


def test_document_of_an_ad_with_a_payment_block_is_payable():
    payment = Payment(
        protocol=LedgerProtocol.CREDIT_COMMONS,
        ledger_url="https://ledger.example.org/",
        node="brussels",
        payee="acct-7",
        currencies=["EUR"],
        price=None,
    )

    assert meili.document(record(ledger_account="acct-7", payment=payment))["payable"] is True
    # An account alone (the portal has no ledger) cannot be paid.
    assert meili.document(record(ledger_account="acct-7"))["payable"] is False


def test_hidden_ad_document_has_no_geo_so_areas_never_find_it():
    doc = meili.document(record(location=None, privacy=Privacy.HIDDEN))

    assert "_geo" not in doc and "lat" not in doc and "lng" not in doc
    assert doc["has_location"] is False


def test_document_without_price_or_language_leaves_them_null():
    doc = meili.document(record(price=None, language=None, category="food"))

    assert doc["has_price"] is False
    assert doc["price_amount"] is None and doc["price_currency"] is None
    assert doc["language"] is None and doc["language_primary"] is None
    assert doc["category_group"] == "food"


def test_document_of_a_stored_ad_matches_its_record(client, portal, wiring):
    created = client.put(
        "/v1/ads/x",
        json=ad_payload("approximate", "priced", tags=["Garden"]),
        headers=portal.headers,
    )
    assert created.status_code == 201, created.json
    ad_id = uuid.UUID(created.json["id"])
    with unit_of_work(wiring.session_factory) as session:
        stored = get_public_ads(session, ad_ids=[ad_id])[ad_id]

    doc = meili.document(stored)

    # The snapped point, never the submitted one.
    assert doc["_geo"] == {"lat": stored.location.lat, "lng": stored.location.lon}
    assert doc["_geo"] != {"lat": 50.8503, "lng": 4.3517}
    assert doc["tags"] == ["garden"]
    assert doc["price_amount"] == 12.5
    assert meili.from_epoch_us(doc["updated_at_ts"]) == stored.updated_at
    assert meili.from_epoch_us(doc["expires_at_ts"]) == stored.expires_at


def test_id_parts_round_trip_and_sort_like_uuids():
    rng = random.Random(7)
    ids = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(500)]
    # Ids of one batch share their first 48 bits (the time): the parts must still order them.
    base = uuid.uuid4().int & ~((1 << 80) - 1)
    ids += [uuid.UUID(int=base | rng.getrandbits(80)) for _ in range(500)]

    assert all(meili.id_from_parts(meili.id_parts(ad_id)) == ad_id for ad_id in ids)
    assert sorted(ids, key=meili.id_parts) == sorted(ids)
    assert all(part < 2**53 for ad_id in ids for part in meili.id_parts(ad_id))


def test_epoch_microseconds_are_exact():
    moment = datetime(2026, 11, 25, 12, 0, 0, 123457, tzinfo=UTC)

    assert meili.from_epoch_us(meili.epoch_us(moment)) == moment
    assert meili.epoch_us(moment) < 2**53


# --- values in filters --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain", '"plain"'),
        ("two words", '"two words"'),
        ('say "hi"', r'"say \"hi\""'),
        ("back\\slash", r'"back\\slash"'),
        ('ends with \\"', r'"ends with \\\""'),
        ("AND", '"AND"'),
        ("x OR tags = y", '"x OR tags = y"'),
        ("ünïcödé", '"ünïcödé"'),
    ],
)
def test_string_values_are_quoted_and_escaped(value, quoted):
    assert meili.quote(value) == quoted


@pytest.mark.parametrize(
    "value", ['"', "\\", '\\"', 'a"b\\c"d', '") OR id EXISTS OR ("', "'single'"]
)
def test_a_quoted_value_is_one_token_as_meilisearch_reads_it(value):
    """Read back the way Meilisearch's filter parser does (its value.rs): the quoted
    span ends at the first quote not preceded by a backslash; then \\" becomes " and
    remaining escapes are resolved."""
    quoted = meili.quote(value)
    body = quoted[1:-1]
    index, end = 0, None
    while index < len(body):
        if body[index] == "\\":
            index += 2
            continue
        if body[index] == '"':
            end = index
            break
        index += 1
    assert end is None, "the value would end early"
    unescaped = re.sub(r"\\(.)", r"\1", body)
    assert unescaped == value


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (12, "12"),
        (Decimal("12.50"), "12.5"),
        (Decimal("100"), "100"),
        (Decimal("1E+2"), "100"),
        (Decimal("0.0001"), "0.0001"),
        (1e-05, "0.00001"),
        (50.8503, "50.8503"),
        (-179.999999, "-179.999999"),
        (2.0, "2"),
    ],
)
def test_numbers_are_written_in_plain_decimal_notation(value, text):
    assert meili.number(value) == text


# --- filters ------------------------------------------------------------------------------


def test_every_query_leaves_expired_ads_out():
    assert meili.query_filter(SearchQuery(), now=NOW) == [f"expires_at_ts > {NOW_US}"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param({"kinds": (AdKind.WANT,)}, ['kind IN ["want"]'], id="kinds"),
        pytest.param(
            {"categories": ("food", "food.baked")},
            ['category IN ["food", "food.baked"]'],
            id="categories",
        ),
        pytest.param({"tags": ("bikes", "vélo")}, ['tags IN ["bikes", "vélo"]'], id="tags"),
        pytest.param(
            {"currencies": ("EUR", "HOUR")}, ['currencies IN ["EUR", "HOUR"]'], id="currencies"
        ),
        pytest.param(
            {"languages": ("fr", "de-ch")},
            ['(language IN ["fr", "de-ch"] OR language_primary IN ["fr"])'],
            id="languages",
        ),
        pytest.param(
            {"languages": ("fr-ca",)}, ['language IN ["fr-ca"]'], id="regional-language-only"
        ),
        pytest.param({"portals": ("a", "b-c")}, ['portal IN ["a", "b-c"]'], id="portals"),
        pytest.param(
            {"updated_since": NOW - timedelta(microseconds=1)},
            [f"updated_at_ts >= {NOW_US - 1}"],
            id="updated-since",
        ),
        pytest.param({"has_price": True}, ["has_price = true"], id="has-price"),
        pytest.param({"has_price": False}, ["has_price = false"], id="has-no-price"),
        pytest.param({"payable": True}, ["payable = true"], id="payable"),
        pytest.param({"payable": False}, ["payable = false"], id="not-payable"),
        pytest.param(
            {"price": PriceRange("EUR", Decimal("5"), Decimal("12.50"))},
            ['price_currency = "EUR"', "price_amount >= 5", "price_amount <= 12.5"],
            id="price-range",
        ),
        pytest.param(
            {"price": PriceRange("HOUR", None, Decimal("2"))},
            ['price_currency = "HOUR"', "price_amount <= 2"],
            id="price-maximum",
        ),
    ],
)
def test_each_filter_becomes_a_condition(query, expected):
    assert conditions(**query) == expected


def test_filters_are_combined_as_a_list_meilisearch_ands():
    built = conditions(kinds=(AdKind.OFFER,), tags=("bikes",), portals=("p",))

    assert built == ['kind IN ["offer"]', 'tags IN ["bikes"]', 'portal IN ["p"]']


def test_a_tag_cannot_escape_its_condition():
    (condition,) = conditions(tags=('x"] OR kind = "want',))

    # Quoted and escaped whole (and in lower case, as tags are compared).
    assert condition == r'tags IN ["x\"] or kind = \"want"]'


def test_radius_is_scaled_to_meilisearchs_earth():
    point = Point(50.85, 4.35)

    (has_location, radius) = conditions(point=point, radius_km=10.0)

    assert has_location == "has_location = true"
    match = re.fullmatch(r"_geoRadius\(50\.85, 4\.35, ([0-9.]+)\)", radius)
    assert match, radius
    sent = float(match.group(1))
    # What Meilisearch compares with its 6,371,000 m sphere is our 10 km on PostGIS's.
    assert sent == pytest.approx(10_000 * 6_371_000 / EARTH_RADIUS_M, rel=1e-12)
    assert sent < 10_000


def test_box_is_sent_north_east_then_south_west():
    (_, box) = conditions(bbox=BBox(west=4.3, south=50.8, east=4.4, north=50.9))

    assert box == "_geoBoundingBox([50.9, 4.4], [50.8, 4.3])"


def test_box_across_the_antimeridian_is_sent_as_its_two_halves():
    (_, box) = conditions(bbox=BBox(west=170.0, south=-20.0, east=-170.0, north=-10.0))

    assert box == (
        "(_geoBoundingBox([-10, 180], [-20, 170]) OR _geoBoundingBox([-10, -170], [-20, -180]))"
    )


def _halves(*boxes: tuple[float, float, float, float]) -> str:
    return " OR ".join(f"_geoBoundingBox([{n}, {e}], [{s}, {w}])" for w, s, e, n in boxes)


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        # 180 and -180 are one meridian, stored as 180: a box starting at -180 takes 180
        # too, as a box of no width; one ending at 180 has it already.
        ((-180.0, -20.0, -170.0, -10.0), f"({_halves((-180, -20, -170, -10), (180, -20, 180, -10))})"),
        ((170.0, -20.0, 180.0, -10.0), _halves((170, -20, 180, -10))),
        # These have both spellings, or neither, already.
        ((-180.0, -90.0, 180.0, 90.0), _halves((-180, -90, 180, 90))),
        ((170.0, -20.0, -180.0, -10.0), f"({_halves((170, -20, 180, -10), (-180, -20, -180, -10))})"),
        ((180.0, -20.0, -170.0, -10.0), f"({_halves((180, -20, 180, -10), (-180, -20, -170, -10))})"),
        ((-179.9, -20.0, 179.9, -10.0), _halves((-179.9, -20, 179.9, -10))),
    ],
    ids=["from-the-east", "from-the-west", "whole-world", "across-ending-on-it",
         "across-starting-on-it", "short-of-it"],
)  # fmt: skip
def test_box_touching_the_antimeridian_takes_the_spelling_it_is_stored_under(box, expected):
    west, south, east, north = box
    (_, sent) = conditions(bbox=BBox(west=west, south=south, east=east, north=north))

    assert sent == expected


def test_hidden_ads_are_left_out_of_distance_order_without_an_area():
    point = Point(1.0, 2.0)

    assert conditions(point=point, sort=Sort.DISTANCE) == ["has_location = true"]
    assert conditions(point=point, sort=Sort.RECENT) == []


# --- sorts and cursors --------------------------------------------------------------------


def test_sort_rules_break_ties_by_id_like_postgresql():
    point = Point(-33.8688, 151.2093)

    assert meili.sort_rules(SearchQuery(sort=Sort.RECENT)) == [
        "updated_at_ts:desc",
        "id_hi:desc",
        "id_mid:desc",
        "id_lo:desc",
    ]
    assert meili.sort_rules(SearchQuery(point=point, sort=Sort.DISTANCE)) == [
        "_geoPoint(-33.8688, 151.2093):asc",
        "id_hi:asc",
        "id_mid:asc",
        "id_lo:asc",
    ]
    assert meili.sort_rules(SearchQuery(text="bread", sort=Sort.RELEVANCE)) is None


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        pytest.param("-bike", "bike", id="not-an-exclusion"),
        pytest.param('"red lamp" tools', "red lamp tools", id="not-a-phrase"),
        pytest.param("e-bike, café!", "e bike café", id="punctuation"),
    ],
)
def test_meilisearch_is_sent_the_words_postgresql_searches_for(text, sent):
    # Meilisearch reads "-word" as "without word" and quotes as a phrase: PostgreSQL, and
    # the contract, find ads with the words.
    assert meili.search_words(SearchQuery(text=text, sort=Sort.RELEVANCE)) == sent


def test_id_before_compares_the_parts_in_order():
    ad_id = meili.id_from_parts((5, 6, 7))

    assert meili.id_before(ad_id) == (
        "(id_hi < 5 OR (id_hi = 5 AND id_mid < 6) OR (id_hi = 5 AND id_mid = 6 AND id_lo < 7))"
    )
    assert meili.id_before(ad_id, inclusive=True).endswith("id_lo <= 7))")


def test_recent_cursor_continues_with_older_ads_or_lower_ids_at_the_same_time():
    ad_id = meili.id_from_parts((1, 2, 3))
    key = SortKey((NOW + timedelta(microseconds=5)).isoformat(), ad_id)

    assert meili.recent_after(key) == (
        f"(updated_at_ts < {NOW_US + 5} OR (updated_at_ts = {NOW_US + 5} AND "
        "(id_hi < 1 OR (id_hi = 1 AND id_mid < 2) OR (id_hi = 1 AND id_mid = 2 AND id_lo < 3))))"
    )


def test_distance_cursor_skips_nearer_ads_and_the_keys_own_point():
    point, key_point = Point(0.0, 0.0), Point(0.0, 0.01)
    ad_id = meili.id_from_parts((1, 2, 3))
    key = SortKey(haversine_m(point, key_point), ad_id)

    nearer, same_point = meili.nearest_after(point, key, key_point)

    radius = (key.value - meili.DISTANCE_BAND_M) * meili.RADIUS_SCALE
    assert nearer == f"NOT _geoRadius(0, 0, {meili.number(radius)})"
    assert same_point == (
        "NOT (lat = 0 AND lng = 0.01 AND "
        "(id_hi < 1 OR (id_hi = 1 AND id_mid < 2) OR (id_hi = 1 AND id_mid = 2 AND id_lo <= 3)))"
    )


def test_distance_cursor_near_the_point_or_without_its_place_keeps_only_what_is_sure():
    key = SortKey(1.5, uuid.uuid4())

    assert meili.nearest_after(Point(0.0, 0.0), key, None) == []


def test_search_params_ask_for_ids_and_sort_values_only():
    query = SearchQuery(text="bread", sort=Sort.RELEVANCE, kinds=(AdKind.OFFER,), limit=20)

    params = meili.search_params(query, now=NOW, limit=21, offset=40)

    assert params == {
        "filter": [f"expires_at_ts > {NOW_US}", 'kind IN ["offer"]'],
        "limit": 21,
        "offset": 40,
        "attributesToRetrieve": ["id", "updated_at_ts", "_geo", "id_hi", "id_mid", "id_lo"],
        "matchingStrategy": "all",
        "showRankingScore": True,
    }


def test_search_params_add_the_cursor_conditions_to_the_query_filters():
    query = SearchQuery(sort=Sort.RECENT, currencies=("EUR",))

    params = meili.search_params(query, now=NOW, after=["x < 1"], limit=5)

    assert params["filter"] == [f"expires_at_ts > {NOW_US}", 'currencies IN ["EUR"]', "x < 1"]
    assert params["sort"][0] == "updated_at_ts:desc"
    assert "showRankingScore" not in params


# --- facets -------------------------------------------------------------------------------


def test_facet_request_counts_whole_result_set_and_always_kind_for_the_total():
    query = SearchQuery(facets=(Facet.CURRENCY, Facet.PORTAL), after=SortKey("x", uuid.uuid4()))

    params = meili.facet_params(query, now=NOW)

    assert params == {
        "filter": [f"expires_at_ts > {NOW_US}"],
        "limit": 0,
        "facets": ["currencies", "kind", "portal"],
        "matchingStrategy": "all",
    }


def test_facets_roll_children_up_into_groups_and_sort_like_postgresql():
    query = SearchQuery(facets=(Facet.CATEGORY, Facet.CURRENCY))
    distribution = {
        "category": {"food.baked": 2, "food": 1, "home.repairs": 3, "food.drinks": 2},
        "currencies": {"HOUR": 4, "EUR": 4, "GIFT": 1},
        "kind": {"offer": 6, "want": 2},
    }

    facets = meili.facets_from_distribution(query, distribution)

    assert facets.total == 8
    assert facets.counts == {
        Facet.CATEGORY: {
            "food": 5,
            "home": 3,
            "home.repairs": 3,
            "food.baked": 2,
            "food.drinks": 2,
        },
        Facet.CURRENCY: {"EUR": 4, "HOUR": 4, "GIFT": 1},
    }
    assert list(facets.counts[Facet.CATEGORY]) == [
        "food",
        "home",
        "home.repairs",
        "food.baked",
        "food.drinks",
    ]


def test_facets_of_an_empty_result_are_empty():
    facets = meili.facets_from_distribution(SearchQuery(facets=(Facet.KIND,)), {})

    assert facets.total == 0 and facets.counts == {Facet.KIND: {}}


# --- settings -----------------------------------------------------------------------------


def test_settings_already_in_place_change_nothing():
    current = {
        **meili.INDEX_SETTINGS,
        # Meilisearch returns attribute sets sorted, and more faceting keys than we set.
        "filterableAttributes": sorted(meili.FILTERABLE_ATTRIBUTES, reverse=True),
        "faceting": {**meili.INDEX_SETTINGS["faceting"], "other": 1},
        "displayedAttributes": ["*"],
    }

    assert meili.settings_changes(current, meili.INDEX_SETTINGS) == {}


def test_settings_that_differ_are_the_only_ones_sent():
    current = {
        **meili.INDEX_SETTINGS,
        "rankingRules": ["words", "typo", "proximity", "attribute", "sort", "exactness"],
        "sortableAttributes": ["updated_at_ts"],
        "pagination": {"maxTotalHits": 1000},
    }

    changes = meili.settings_changes(current, meili.INDEX_SETTINGS)

    assert changes == {
        "rankingRules": meili.RANKING_RULES,
        "sortableAttributes": meili.SORTABLE_ATTRIBUTES,
        "pagination": {"maxTotalHits": meili.MAX_TOTAL_HITS},
    }


def test_every_filtered_sorted_or_counted_attribute_is_declared():
    filterable = set(meili.FILTERABLE_ATTRIBUTES)
    doc = meili.document(record())

    assert set(meili.FACET_ATTRIBUTES.values()) <= filterable
    assert set(meili.SORTABLE_ATTRIBUTES) <= set(doc)
    assert filterable <= set(doc)
    for condition in meili.query_filter(
        SearchQuery(
            point=Point(1, 1),
            radius_km=5,
            kinds=(AdKind.OFFER,),
            categories=("food",),
            tags=("t",),
            currencies=("EUR",),
            languages=("fr",),
            portals=("p",),
            updated_since=NOW,
            has_price=True,
            price=PriceRange("EUR", Decimal(1), Decimal(2)),
        ),
        now=NOW,
    ):
        attributes = set(re.findall(r"\b([a-z_]+) (?:IN|[<>=!]=?)", condition))
        assert attributes <= filterable, condition


# --- the position table -------------------------------------------------------------------


def test_position_round_trip(wiring):
    with unit_of_work(wiring.session_factory) as session:
        assert indexing.load_position(session, index_name="ads") is None
        indexing.store_position(session, index_name="ads", feed_cursor="f1.first")
    with unit_of_work(wiring.session_factory) as session:
        assert indexing.load_position(session, index_name="ads") == "f1.first"
        indexing.store_position(session, index_name="ads", feed_cursor="f1.second")
        indexing.store_position(session, index_name="other", feed_cursor="f1.other")
    with unit_of_work(wiring.session_factory) as session:
        assert indexing.load_position(session, index_name="ads") == "f1.second"
        assert indexing.load_position(session, index_name="other") == "f1.other"


def test_feed_head_is_where_reading_the_whole_feed_ends(client, portal, wiring):
    for number in range(3):
        client.put(f"/v1/ads/a-{number}", json=ad_payload(), headers=portal.headers)
    client.delete("/v1/ads/a-1", headers=portal.headers)
    with unit_of_work(wiring.session_factory) as session:
        cursor = None
        while True:
            page = read_feed(session, since=cursor, limit=2)
            cursor = page.next_cursor
            if not page.more:
                break
        head = indexing.feed_head(session)

    assert head == cursor
    with unit_of_work(wiring.session_factory) as session:
        assert read_feed(session, since=head, limit=10).entries == []


def test_feed_head_of_an_empty_feed_is_its_start(wiring):
    with unit_of_work(wiring.session_factory) as session:
        assert indexing.feed_head(session) == read_feed(session, since=None, limit=1).next_cursor


def test_rebuild_reads_only_what_the_public_may_see_in_id_order(client, portal, wiring, session):
    ids = set()
    for number in range(5):
        ids.add(
            client.put(f"/v1/ads/p-{number}", json=ad_payload(), headers=portal.headers).json["id"]
        )
    client.put("/v1/ads/own", json=ad_payload("portal_only"), headers=portal.headers)
    expired = client.put("/v1/ads/old", json=ad_payload(), headers=portal.headers).json["id"]
    session.execute(
        update(Ad).where(Ad.id == uuid.UUID(expired)).values(expires_at=datetime.now(UTC))
    )
    session.commit()

    with unit_of_work(wiring.session_factory) as reading:
        first = indexing.public_ads_after(reading, after=None, limit=3)
        rest = indexing.public_ads_after(reading, after=first[-1].id, limit=3)
        total = indexing.count_public_ads(reading)

    read = [ad.id for ad in first + rest]
    assert read == sorted(read)
    assert {str(ad_id) for ad_id in read} == ids
    assert total == 5


def test_rebuild_leaves_a_suspended_portals_ads_out(client, portal, wiring):
    client.put("/v1/ads/a", json=ad_payload(), headers=portal.headers)
    with unit_of_work(wiring.session_factory) as session:
        portals.set_status(session, portal_slug=portal.slug, status=PortalStatus.SUSPENDED)

    with unit_of_work(wiring.session_factory) as session:
        assert indexing.public_ads_after(session, after=None, limit=10) == []


# --- without a Meilisearch server ---------------------------------------------------------


@pytest.fixture
def unreachable_meilisearch(migrated):
    """The wiring of a deployment on Meilisearch whose server does not answer."""
    wiring = build_wiring(
        Settings(
            environment="test",
            database_url=migrated.database_url,
            search_engine="meilisearch",
            meilisearch_url=UNREACHABLE_MEILISEARCH,
        )
    )
    yield wiring
    wiring.close()


@pytest.fixture
def restore_signal_handlers():
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_reindex_refuses_with_the_postgres_engine(migrated):
    result = CliRunner().invoke(
        cli,
        ["reindex"],
        env={
            "DIRECTORY_DATABASE_URL": migrated.database_url,
            "DIRECTORY_ENVIRONMENT": "test",
            "DIRECTORY_SEARCH_ENGINE": "postgres",
        },
    )

    assert result.exit_code != 0
    assert result.output.startswith("Error: reindex rebuilds the Meilisearch index")
    assert "DIRECTORY_SEARCH_ENGINE is 'postgres'" in result.output
    assert "Traceback" not in result.output


def test_reindex_reports_an_unreachable_meilisearch_clearly(migrated, wiring):
    result = CliRunner().invoke(
        cli,
        ["reindex"],
        env={
            "DIRECTORY_DATABASE_URL": migrated.database_url,
            "DIRECTORY_ENVIRONMENT": "test",
            "DIRECTORY_SEARCH_ENGINE": "meilisearch",
            "DIRECTORY_MEILISEARCH_URL": UNREACHABLE_MEILISEARCH,
        },
    )

    assert result.exit_code != 0
    assert result.output.startswith("Error: reindex failed:")
    assert "Traceback" not in result.output


def test_indexing_refuses_a_wiring_on_the_postgres_engine(wiring):
    with pytest.raises(indexing.NotMeilisearch, match="'postgres'"):
        indexing.catch_up(wiring)
    with pytest.raises(indexing.NotMeilisearch):
        indexing.rebuild(wiring)


def test_worker_on_postgres_runs_no_indexing_jobs(wiring):
    names = [job.name for job in worker_module.jobs_for(wiring)]
    assert names == ["housekeeping", "website re-checks"]


def test_worker_survives_an_unreachable_meilisearch(
    unreachable_meilisearch, restore_signal_handlers, caplog
):
    caplog.set_level(logging.INFO, logger="directory.worker")

    succeeded = worker_module.run(unreachable_meilisearch, once=True)

    assert succeeded is False
    failed = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert [message.split(" failed")[0] for message in failed] == [
        "search indexing",
        "expired ads purge",
    ]
    messages = [r.getMessage() for r in caplog.records if r.name == "directory.worker"]
    assert messages[0] == "worker started" and messages[-1] == "worker stopped"


def test_a_failing_job_backs_off_and_a_success_resets_it(wiring):
    outcomes = iter([RuntimeError("down"), RuntimeError("still down"), None])

    def flaky(_wiring):
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    job = worker_module.Job("flaky", 1, flaky)
    delays = []
    for _ in range(3):
        before = worker_module.time.monotonic()
        job.run_if_due(wiring, job.due_at)  # as if its time had come
        delays.append(job.due_at - before)

    assert job.failures == 0
    assert 0.75 <= delays[0] <= 1.3  # first failure: about one interval
    assert 1.5 <= delays[1] <= 2.6  # then twice as long
    assert 0.9 <= delays[2] <= 1.1  # success: back to the interval


def test_search_answers_503_when_meilisearch_is_unreachable(migrated):
    app = create_app(
        Settings(
            environment="test",
            database_url=migrated.database_url,
            search_engine="meilisearch",
            meilisearch_url=UNREACHABLE_MEILISEARCH,
        )
    )
    try:
        response = app.test_client().get("/v1/search", query_string={"q": "bread"})
    finally:
        app.extensions["directory"].close()

    assert response.status_code == 503, response.json
    assert response.json["error"] == "search_unavailable"


class BrokenAnswers:
    """A server on 127.0.0.1 that answers every request with a broken 200: cut short
    (as from a Meilisearch that stops mid-answer), or not JSON (as from a proxy's page)."""

    ANSWERS = {
        "cut short": (b'{"hits": [', 1000),
        "not json": (b"<html>502 Bad Gateway</html>", None),
    }

    def __init__(self, kind: str):
        body, length = self.ANSWERS[kind]

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Length", str(length or len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            do_GET = do_POST

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.mark.parametrize("kind", sorted(BrokenAnswers.ANSWERS))
def test_search_answers_503_when_meilisearch_answers_brokenly(migrated, kind):
    """The client wraps refused connections and timeouts in its own errors, but not an
    answer cut short (requests' ChunkedEncodingError) or one that is not JSON."""
    server = BrokenAnswers(kind)
    app = create_app(
        Settings(
            environment="test",
            database_url=migrated.database_url,
            search_engine="meilisearch",
            meilisearch_url=server.url,
        )
    )
    try:
        response = app.test_client().get("/v1/search", query_string={"q": "bread"})
    finally:
        app.extensions["directory"].close()
        server.close()

    assert response.status_code == 503, response.json
    assert response.json["error"] == "search_unavailable"


class RankingMeilisearch:
    """A Meilisearch on 127.0.0.1 that answers every search with the same ranked hits
    (ids and ranking scores), a window of them as `offset` and `limit` ask."""

    def __init__(self, ranked: list[tuple[str, float]]):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                asked = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                window = ranked[asked["offset"] : asked["offset"] + asked["limit"]]
                body = json.dumps(
                    {"hits": [{"id": ad_id, "_rankingScore": score} for ad_id, score in window]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_relevance_paging_repeats_no_ad_when_the_cursors_ad_rose_meanwhile(
    migrated, wiring, portal, client
):
    """A relevance cursor is found again by reading the hits from the top. The ad it
    ended at (c, scored 0.7) was edited since and now ranks first: the ads it had come
    after (a, b) were shown already and stay put; the page goes on after 0.7."""
    ids = {}
    for name in ("a", "b", "c", "d"):
        response = client.put(f"/v1/ads/{name}", json=ad_payload(), headers=portal.headers)
        assert response.status_code == 201, response.json
        ids[name] = response.json["id"]
    server = RankingMeilisearch(
        [(ids["c"], 0.95), (ids["a"], 0.9), (ids["b"], 0.8), (ids["d"], 0.6)]
    )
    engine = build_wiring(
        dataclasses.replace(migrated, search_engine="meilisearch", meilisearch_url=server.url)
    )
    try:
        query = SearchQuery(text="bicycle", sort=Sort.RELEVANCE, limit=10)
        page = engine.search.search(query.continued_after(SortKey(0.7, uuid.UUID(ids["c"]))))
    finally:
        engine.close()
        server.close()

    assert [str(hit.row[0]) for hit in page.hits] == [ids["d"]]


def test_a_portals_own_search_is_answered_by_postgresql(unreachable_meilisearch, portal, client):
    own = client.put("/v1/ads/own", json=ad_payload("portal_only"), headers=portal.headers)
    assert own.status_code == 201, own.json
    engine = unreachable_meilisearch.search
    assert isinstance(engine, meili.MeiliSearch)

    page = engine.search(SearchQuery(viewer_portal_id=portal.id))

    assert [str(hit.row[0]) for hit in page.hits] == [own.json["id"]]


def test_a_page_of_meilisearch_candidates_renders_as_postgresql_renders_it(
    unreachable_meilisearch, wiring, portal, client
):
    """Meilisearch only ranks: the page's ads are read again from PostgreSQL, in the
    candidates' order, skipping those no longer public, and render as the default
    engine's hits (distances measured from the stored point)."""
    ids = {}
    for name, fields in {
        "near": {"location": {"lat": 50.85, "lon": 4.40}, "privacy": "approximate"},
        "far": {"location": {"lat": 50.85, "lon": 4.70}, "privacy": "exact"},
        "own": {"visibility": "portal"},
        "later": {"location": {"lat": 50.85, "lon": 4.50}},
    }.items():
        response = client.put(f"/v1/ads/{name}", json=ad_payload(**fields), headers=portal.headers)
        assert response.status_code == 201, response.json
        ids[name] = uuid.UUID(response.json["id"])
    point = Point(50.85, 4.35)
    query = SearchQuery(point=point, sort=Sort.DISTANCE, limit=2)
    candidates = [
        meili._Candidate(ids[name], SortKey(float(rank), ids[name]), None)
        for rank, name in enumerate(["far", "own", "near", "later"])
    ]
    engine = unreachable_meilisearch.search
    with engine._session_factory() as session:
        hits, keys, more = engine._page(session, query, iter(candidates))

    assert [hit.row[0] for hit in hits] == [ids["far"], ids["near"]]  # not the portal's own
    assert [key.ad_id for key in keys] == [ids["far"], ids["near"]] and more
    by_postgres = {
        hit.row[0]: hit for hit in wiring.search.search(dataclasses.replace(query, limit=10)).hits
    }
    for hit in hits:
        assert orjson.loads(orjson.dumps(public_ad(hit))) == orjson.loads(
            orjson.dumps(public_ad(by_postgres[hit.row[0]]))
        )
    assert [public_ad(hit)["distance_km"] for hit in hits] == [24.6, 3.0]


@pytest.mark.parametrize(
    "place",
    [
        pytest.param({"radius_km": 10.0}, id="radius"),
        pytest.param({"bbox": BBox(west=4.2, south=50.7, east=4.5, north=51.0)}, id="box"),
        pytest.param({"sort": Sort.DISTANCE}, id="nearest-first"),
    ],
)
def test_a_page_leaves_out_ads_the_index_places_where_they_no_longer_are(
    unreachable_meilisearch, portal, client, place
):
    """The index follows the feed a second behind (hours, with the worker stopped): an
    ad made hidden since, or moved away, is still where it was in the index. Its place is
    checked again as the page is read: a hidden ad never shows in an area or in distance
    order, an ad elsewhere now not in the area."""
    ids = {}
    for name, fields in {
        "there": {"location": {"lat": 50.85, "lon": 4.36}},
        "hidden-since": {"location": None, "privacy": "hidden"},
        "moved-away": {"location": {"lat": 48.85, "lon": 2.35}},
    }.items():
        response = client.put(f"/v1/ads/{name}", json=ad_payload(**fields), headers=portal.headers)
        assert response.status_code == 201, response.json
        ids[name] = uuid.UUID(response.json["id"])
    point = Point(50.85, 4.35)
    query = SearchQuery(point=point, limit=10, **place)
    # Ranked by the index, where every one of them is still beside the point.
    candidates = [
        meili._Candidate(ids[name], SortKey(float(rank), ids[name]), Point(50.85, 4.37))
        for rank, name in enumerate(["hidden-since", "moved-away", "there"])
    ]
    engine = unreachable_meilisearch.search
    with engine._session_factory() as session:
        hits, _, more = engine._page(session, query, iter(candidates))

    expected = [ids["there"]]
    if "sort" in place:  # no area: an ad anywhere is in nearest-first order
        expected = [ids["moved-away"], ids["there"]]
    assert [hit.row[0] for hit in hits] == expected and not more


# --- with a stand-in Meilisearch ----------------------------------------------------------


class StandInMeilisearch:
    """Meilisearch on 127.0.0.1 as far as indexing uses it: indexes, settings, documents,
    deletions, swaps and tasks, so tests see what indexing sends and what an index would
    then hold. Tasks are processed in the order they arrive and are done at once. As
    Meilisearch does, adding documents to a missing index creates it (with default
    settings). `hold(method, path)` keeps the next such request waiting until released;
    `fail_next(path)` makes the task of the next request to that path fail."""

    def __init__(self):
        self.indexes: dict[str, dict] = {}
        self.tasks: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._holds: dict[tuple[str, str], tuple[threading.Event, threading.Event]] = {}
        self._failing: set[str] = set()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                path = urlsplit(self.path).path
                stand_in.requests.append((self.command, path))
                held = stand_in._holds.pop((self.command, path), None)
                if held is not None:
                    reached, release = held
                    reached.set()
                    release.wait(30)
                status, answer = stand_in._answer(self.command, path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        for _, release in self._holds.values():
            release.set()
        self._server.shutdown()
        self._server.server_close()

    def hold(self, method: str, path: str) -> tuple[threading.Event, threading.Event]:
        """(reached, release): set when the request arrives; set it to let it go on."""
        events = (threading.Event(), threading.Event())
        self._holds[(method, path)] = events
        return events

    def fail_next(self, path: str) -> None:
        self._failing.add(path)

    def lose_everything(self) -> None:
        """As a Meilisearch restarted without its data."""
        with self._lock:
            self.indexes.clear()

    def documents(self, uid: str = "ads") -> dict[str, dict]:
        return self.indexes[uid]["documents"]

    def _answer(self, method: str, path: str, body):
        with self._lock:
            if method == "GET" and (match := re.fullmatch(r"/tasks/(\d+)", path)):
                return 200, self.tasks[int(match[1])]
            match = re.fullmatch(r"/indexes/([^/]+)(/settings|/documents|/documents/delete)?", path)
            uid, part = (match[1], match[2]) if match else (None, None)
            if method == "GET" and uid:
                index = self.indexes.get(uid)
                if index is None:
                    return 404, _meili_error("index_not_found", f"Index `{uid}` not found.")
                if part == "/settings":
                    return 200, dict(index["settings"])
                return 200, {"uid": uid, "primaryKey": index["primaryKey"]}
            if method == "POST" and path == "/indexes":
                return self._task(path, body["uid"], "indexCreation", self._create, body)
            if method == "DELETE" and uid and part is None:
                return self._task(path, uid, "indexDeletion", self._delete, None)
            if method == "PATCH" and part == "/settings":
                return self._task(path, uid, "settingsUpdate", self._configure, body)
            if method == "POST" and part == "/documents":
                return self._task(path, uid, "documentAdditionOrUpdate", self._add, body)
            if method == "POST" and part == "/documents/delete":
                return self._task(path, uid, "documentDeletion", self._delete_where, body)
            if method == "POST" and path == "/swap-indexes":
                return self._task(path, None, "indexSwap", self._swap, body)
            return 404, _meili_error("not_found", f"the stand-in does not serve {method} {path}")

    def _task(self, path, uid, kind, work, body):
        error = (
            _meili_error("internal", "failed as the test asked")
            if path in self._failing
            else work(uid, body)
        )
        self._failing.discard(path)
        moment = datetime.now(UTC).isoformat()
        self.tasks.append(
            {
                "uid": len(self.tasks),
                "indexUid": uid,
                "type": kind,
                "status": "failed" if error else "succeeded",
                "error": error,
                "enqueuedAt": moment,
                "finishedAt": moment,
            }
        )
        info = {"taskUid": len(self.tasks) - 1, "indexUid": uid, "type": kind}
        return 202, info | {"status": "enqueued", "enqueuedAt": moment}

    def _create(self, _uid, body):
        if body["uid"] in self.indexes:
            return _meili_error("index_already_exists", f"Index `{body['uid']}` already exists.")
        self.indexes[body["uid"]] = _new_index(body.get("primaryKey"))
        return None

    def _delete(self, uid, _body):
        if self.indexes.pop(uid, None) is None:
            return _meili_error("index_not_found", f"Index `{uid}` not found.")
        return None

    def _configure(self, uid, changes):
        self.indexes.setdefault(uid, _new_index(None))["settings"].update(changes)
        return None

    def _add(self, uid, documents):
        index = self.indexes.setdefault(uid, _new_index(meili.PRIMARY_KEY))
        index["documents"].update({document["id"]: document for document in documents})
        return None

    def _delete_where(self, uid, body):
        index = self.indexes.get(uid)
        if index is None:
            return _meili_error("index_not_found", f"Index `{uid}` not found.")
        if match := re.fullmatch(r"id IN \[(.*)\]", body["filter"]):
            for ad_id in json.loads(f"[{match[1]}]"):
                index["documents"].pop(ad_id, None)
        elif match := re.fullmatch(r"expires_at_ts <= (\d+)", body["filter"]):
            expired = int(match[1])
            index["documents"] = {
                ad_id: doc
                for ad_id, doc in index["documents"].items()
                if doc["expires_at_ts"] > expired
            }
        else:
            return _meili_error("invalid_document_filter", body["filter"])
        return None

    def _swap(self, _uid, body):
        first, second = body[0]["indexes"]
        if first not in self.indexes or second not in self.indexes:
            return _meili_error("index_not_found", f"{first} or {second} not found.")
        self.indexes[first], self.indexes[second] = self.indexes[second], self.indexes[first]
        return None


def _new_index(primary_key: str | None) -> dict:
    return {"primaryKey": primary_key, "settings": {}, "documents": {}}


def _meili_error(code: str, message: str) -> dict:
    return {"message": message, "code": code, "type": "invalid_request", "link": ""}


@pytest.fixture
def stand_in():
    server = StandInMeilisearch()
    yield server
    server.close()


def _stand_in_settings(migrated: Settings, stand_in: StandInMeilisearch) -> Settings:
    return dataclasses.replace(migrated, search_engine="meilisearch", meilisearch_url=stand_in.url)


@pytest.fixture
def stand_in_wiring(stand_in, migrated, wiring):
    """A wiring on the stand-in Meilisearch (`wiring` empties the database afterwards)."""
    built = build_wiring(_stand_in_settings(migrated, stand_in))
    yield built
    built.close()


def _publish(client, portal, count: int) -> dict[str, str]:
    """`count` public ads: their ids by external id."""
    return {
        f"p-{number}": client.put(
            f"/v1/ads/p-{number}", json=ad_payload(), headers=portal.headers
        ).json["id"]
        for number in range(count)
    }


def test_catch_up_builds_the_index_then_follows_the_feed(stand_in, stand_in_wiring, client, portal):
    ids = _publish(client, portal, 3)

    assert indexing.catch_up(stand_in_wiring) == 3
    assert set(stand_in.documents()) == set(ids.values())
    assert stand_in.indexes["ads"]["settings"] == meili.INDEX_SETTINGS

    client.delete("/v1/ads/p-0", headers=portal.headers)
    new = client.put("/v1/ads/new", json=ad_payload(), headers=portal.headers).json["id"]
    assert indexing.catch_up(stand_in_wiring) == 2
    assert set(stand_in.documents()) == {ids["p-1"], ids["p-2"], new}


def test_a_page_meilisearch_failed_is_applied_again_on_the_next_round(
    stand_in, stand_in_wiring, client, portal
):
    """A crash between reading a page and recording how far the index got loses nothing:
    the position moves only once Meilisearch has applied the page."""
    _publish(client, portal, 2)
    indexing.catch_up(stand_in_wiring)
    with unit_of_work(stand_in_wiring.session_factory) as session:
        before = indexing.load_position(session, index_name="ads")
    added = client.put("/v1/ads/added", json=ad_payload(), headers=portal.headers).json["id"]
    stand_in.fail_next("/indexes/ads/documents")

    with pytest.raises(meili.IndexingError):
        indexing.catch_up(stand_in_wiring)

    assert added not in stand_in.documents()
    with unit_of_work(stand_in_wiring.session_factory) as session:
        assert indexing.load_position(session, index_name="ads") == before
    assert indexing.catch_up(stand_in_wiring) == 1
    assert added in stand_in.documents()


def test_catch_up_removes_an_ad_that_expired_after_its_last_change(
    stand_in, stand_in_wiring, client, portal, session
):
    ad_id = client.put("/v1/ads/a", json=ad_payload(), headers=portal.headers).json["id"]
    indexing.catch_up(stand_in_wiring)
    client.put("/v1/ads/a", json=ad_payload(expires_at=in_days(1)), headers=portal.headers)
    session.execute(  # the day passes before the worker's next round
        update(Ad).where(Ad.id == uuid.UUID(ad_id)).values(expires_at=datetime.now(UTC))
    )
    session.commit()

    indexing.catch_up(stand_in_wiring)

    assert ad_id not in stand_in.documents()


def test_catch_up_rebuilds_an_index_meilisearch_lost_while_the_worker_ran(
    stand_in, stand_in_wiring, client, portal
):
    ids = set(_publish(client, portal, 3).values())
    indexing.catch_up(stand_in_wiring)
    stand_in.lose_everything()
    ids.add(client.put("/v1/ads/new", json=ad_payload(), headers=portal.headers).json["id"])

    indexing.catch_up(stand_in_wiring)

    assert set(stand_in.documents()) == ids  # not just the page that came after the loss
    assert stand_in.indexes["ads"]["settings"] == meili.INDEX_SETTINGS


def test_a_lost_index_whose_rebuild_failed_is_rebuilt_on_the_next_round(
    stand_in, stand_in_wiring, client, portal
):
    """The index made anew when Meilisearch lost it is empty: until a rebuild fills it,
    the feed position stored for the old one must not be followed."""
    ids = set(_publish(client, portal, 3).values())
    indexing.catch_up(stand_in_wiring)
    stand_in.lose_everything()
    stand_in.fail_next("/indexes/ads_new/documents")
    with pytest.raises(meili.IndexingError):
        indexing.catch_up(stand_in_wiring)
    ids.add(client.put("/v1/ads/new", json=ad_payload(), headers=portal.headers).json["id"])

    indexing.catch_up(stand_in_wiring)

    assert set(stand_in.documents()) == ids


def test_an_index_built_by_an_earlier_release_is_rebuilt_not_only_reconfigured(
    stand_in, stand_in_wiring, migrated, client, portal
):
    """A release that indexes a new attribute (payable came so) declares it filterable
    and writes it in new documents; the documents already indexed lack it until rebuilt,
    and a filter on it (payable = false) would leave them out."""
    ids = set(_publish(client, portal, 3).values())
    indexing.catch_up(stand_in_wiring)
    index = stand_in.indexes["ads"]  # as the release before payable left it
    for doc in index["documents"].values():
        del doc["payable"]
    filterable = index["settings"]["filterableAttributes"]
    index["settings"]["filterableAttributes"] = [name for name in filterable if name != "payable"]

    upgraded = build_wiring(_stand_in_settings(migrated, stand_in))  # the new release's worker
    try:
        indexing.catch_up(upgraded)
    finally:
        upgraded.close()

    assert stand_in.indexes["ads"]["settings"] == meili.INDEX_SETTINGS
    assert set(stand_in.documents()) == ids
    assert all(doc["payable"] is False for doc in stand_in.documents().values())


def test_a_second_rebuild_refuses_while_one_runs_and_leaves_it_whole(
    stand_in, stand_in_wiring, client, portal
):
    """Two workers starting on a new deployment, or `directory reindex` beside a worker:
    sharing the fresh index, each would drop what the other was filling."""
    ids = set(_publish(client, portal, 3).values())
    reached, release = stand_in.hold("POST", "/indexes/ads_new/documents")
    first = threading.Thread(target=indexing.rebuild, args=(stand_in_wiring,))
    first.start()
    try:
        assert reached.wait(10)
        sent = len(stand_in.requests)
        with pytest.raises(indexing.RebuildInProgress, match="being rebuilt"):
            indexing.rebuild(stand_in_wiring)
        assert len(stand_in.requests) == sent  # nothing sent to Meilisearch
        with unit_of_work(stand_in_wiring.session_factory) as session:
            assert indexing.load_position(session, index_name="ads") is None
        assert indexing.catch_up(stand_in_wiring) == 0  # a worker leaves it be
        assert not [path for _, path in stand_in.requests[sent:] if "ads_new" in path]
    finally:
        release.set()
        first.join(30)

    assert set(stand_in.documents()) == ids
    assert stand_in.indexes["ads"]["settings"] == meili.INDEX_SETTINGS


def test_reindex_refuses_while_another_rebuild_runs(stand_in, stand_in_wiring, migrated):
    settings = _stand_in_settings(migrated, stand_in)
    with indexing.rebuild_lock(stand_in_wiring, "ads"):
        result = CliRunner().invoke(
            cli,
            ["reindex"],
            env={
                "DIRECTORY_DATABASE_URL": settings.database_url,
                "DIRECTORY_ENVIRONMENT": "test",
                "DIRECTORY_SEARCH_ENGINE": "meilisearch",
                "DIRECTORY_MEILISEARCH_URL": stand_in.url,
            },
        )

    assert result.exit_code != 0
    assert result.output.startswith("Error: reindex failed: search index ads is being rebuilt")
    assert stand_in.requests == []


# --- with a Meilisearch server ------------------------------------------------------------


def _meilisearch_or_skip() -> tuple[str, str]:
    url = os.environ.get(MEILISEARCH_URL_VARIABLE, "").rstrip("/")
    if not url:
        pytest.skip(f"needs a Meilisearch server: set {MEILISEARCH_URL_VARIABLE}")
    return url, os.environ.get(MEILISEARCH_KEY_VARIABLE, "")


@pytest.fixture
def meili_wiring(migrated, wiring):
    """A wiring on a live Meilisearch, with an index of its own for this test."""
    url, key = _meilisearch_or_skip()
    built = build_wiring(
        Settings(
            environment="test",
            database_url=migrated.database_url,
            search_engine="meilisearch",
            meilisearch_url=url,
            meilisearch_key=key,
        )
    )
    engine = meili.MeiliSearch(
        built.search.client,
        database=built.search_db,
        index_name=f"test_{uuid.uuid4().hex[:12]}",
    )
    test_wiring = dataclasses.replace(built, search=engine)
    yield test_wiring
    for uid in (engine.index_name, engine.index_name + indexing.FRESH_SUFFIX):
        engine.drop_index(uid, timeout_s=60)
    built.close()


def _found(wiring, **query) -> list[str]:
    return [str(hit.row[0]) for hit in wiring.search.search(SearchQuery(**query)).hits]


def _indexed(wiring) -> dict[str, dict]:
    """The documents in the index itself (a search also re-checks each ad in PostgreSQL,
    which would hide a document left behind)."""
    engine = wiring.search
    hits = engine.client.index(engine.index_name).search("", {"limit": 1000})["hits"]
    return {hit["id"]: hit for hit in hits}


def test_rebuild_then_search_finds_the_public_ads(meili_wiring, client, portal):
    public = client.put(
        "/v1/ads/a", json=ad_payload(title="Sourdough bread"), headers=portal.headers
    )
    client.put(
        "/v1/ads/b", json=ad_payload("portal_only", title="Sourdough"), headers=portal.headers
    )

    assert indexing.rebuild(meili_wiring) == 1

    assert _found(meili_wiring, text="sourdough") == [public.json["id"]]
    with unit_of_work(meili_wiring.session_factory) as session:
        assert indexing.load_position(session, index_name=meili_wiring.search.index_name)


def test_catch_up_applies_new_changed_and_deleted_ads(meili_wiring, client, portal):
    kept = client.put("/v1/ads/kept", json=ad_payload(title="Ladder"), headers=portal.headers)
    gone = client.put("/v1/ads/gone", json=ad_payload(title="Ladder two"), headers=portal.headers)
    indexing.rebuild(meili_wiring)
    assert gone.json["id"] in _indexed(meili_wiring)

    client.delete("/v1/ads/gone", headers=portal.headers)
    client.put("/v1/ads/kept", json=ad_payload(title="Tall ladder"), headers=portal.headers)
    new = client.put("/v1/ads/new", json=ad_payload(title="Ladder three"), headers=portal.headers)
    applied = indexing.catch_up(meili_wiring)

    assert applied == 3
    assert set(_found(meili_wiring, text="ladder")) == {kept.json["id"], new.json["id"]}
    indexed = _indexed(meili_wiring)
    assert set(indexed) == {kept.json["id"], new.json["id"]}
    assert indexed[kept.json["id"]]["title"] == "Tall ladder"
    assert indexing.catch_up(meili_wiring) == 0


def test_replaying_the_feed_from_an_old_position_changes_nothing(meili_wiring, client, portal):
    with unit_of_work(meili_wiring.session_factory) as session:
        start = indexing.feed_head(session)
    for number in range(4):
        client.put(f"/v1/ads/r-{number}", json=ad_payload(), headers=portal.headers)
    client.delete("/v1/ads/r-2", headers=portal.headers)
    indexing.rebuild(meili_wiring)
    before = _indexed(meili_wiring)

    with unit_of_work(meili_wiring.session_factory) as session:
        index_name = meili_wiring.search.index_name
        indexing.store_position(session, index_name=index_name, feed_cursor=start)
    indexing.catch_up(meili_wiring, batch=2)

    assert _indexed(meili_wiring) == before
    assert len(before) == 3


def test_configuring_twice_changes_nothing_the_second_time(meili_wiring):
    engine = meili_wiring.search
    engine.prepare(timeout_s=60)

    assert engine.configure(engine.index_name, timeout_s=60) is False


def test_purge_removes_expired_documents_only(meili_wiring, client, portal):
    soon = client.put(
        "/v1/ads/soon", json=ad_payload(expires_at=in_days(1)), headers=portal.headers
    )
    later = client.put(
        "/v1/ads/later", json=ad_payload(expires_at=in_days(9)), headers=portal.headers
    )
    indexing.rebuild(meili_wiring)
    assert soon.json["id"] in _indexed(meili_wiring)

    indexing.purge_expired(meili_wiring, now=datetime.now(UTC) + timedelta(days=2))

    assert set(_indexed(meili_wiring)) == {later.json["id"]}


def test_a_worker_round_builds_the_missing_index_and_follows_the_feed(
    meili_wiring, client, portal, restore_signal_handlers
):
    first = client.put("/v1/ads/a", json=ad_payload(title="Sourdough"), headers=portal.headers)

    assert worker_module.run(meili_wiring, once=True) is True
    assert _found(meili_wiring, text="sourdough") == [first.json["id"]]

    client.delete("/v1/ads/a", headers=portal.headers)
    assert worker_module.run(meili_wiring, once=True) is True
    assert _indexed(meili_wiring) == {}  # gone from the index, not only hidden at read time
