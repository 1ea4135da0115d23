"""FastLoader must give exactly what Schema.load gives: the same ad, or the same errors."""

from __future__ import annotations

import itertools

import pytest
from marshmallow import Schema, ValidationError, fields, pre_load

from directory.api.ads.schemas import AdPutSchema
from directory.api.loading import FastLoader
from directory.api.search.schemas import SearchArgsSchema
from tests.factories import TRAITS, ad_payload, in_days

BAD_VALUES = {
    "kind": [None, "swap", 1, ...],
    "title": [None, "", " ", "x" * 201, "a\nb", "a\u0000b", 5, ...],
    "body": [None, "x" * 8001, "a\u0007b", ...],
    "category": [None, "", 3, "x" * 65, ...],
    "tags": [None, "bikes", ["x" * 41], ["a", "A"], [""] * 21, [1]],
    "location": ["here", {"lat": 91, "lon": 0}, {"lat": True, "lon": 0}, {"lat": 1}, []],
    "privacy": ["secret", None, 0],
    "visibility": ["friends", None],
    "currencies": ["EUR", [], ["EUR", "EUR"], ["eur"], ["EUR"] * 21, [None]],
    "price": [{"amount": 1, "currency": "EUR", "unit": "hour"}, {"amount": "-1"}, "cheap"],
    "language": ["english", "en\n", 1],
    "images": ["https://x.org/a.jpg", ["ftp://x.org/a"], ["https://x.org/a"] * 11],
    "expires_at": ["tomorrow", "2030-01-01T00:00:00", 5],
    "member": [None, "a@b.org", "+33 6 12 34 56 78", "m 1", "m-1\n", ...],
    "ledger_account": ["has space", "x" * 129, 7],
    "accepts_contact": [None, "yes", "true", "false", 1, 0, 1.0, [True]],
    "unknown_field": ["anything"],
}

GOOD = (
    [ad_payload()]
    + [ad_payload(trait) for trait in TRAITS]
    + [
        ad_payload("priced", expires_at=in_days(3), images=["https://x.org/a.jpg"], tags=[]),
        ad_payload(currencies=None, language=None, ledger_account="acc-1"),
        ad_payload(accepts_contact=False),
        ad_payload("portal_only", accepts_contact=True),
        ad_payload("hidden", location=...),
    ]
)


def outcome(load, data):
    try:
        return "ok", load(data)
    except ValidationError as error:
        return "error", error.messages


def cases():
    yield from GOOD
    for (field, values), base in itertools.product(BAD_VALUES.items(), GOOD[:3]):
        for value in values:
            yield ad_payload(**{**base, field: value})
    yield from ([], "ad", None, 5)


@pytest.mark.parametrize("data", list(cases()))
def test_fast_loader_agrees_with_schema_load(data):
    schema = AdPutSchema()
    assert outcome(FastLoader(schema).load, data) == outcome(schema.load, data)


def test_fast_loader_refuses_a_schema_with_hooks_it_cannot_run():
    class WithPreLoad(Schema):
        name = fields.String()

        @pre_load
        def strip(self, data, **kwargs):
            return data

    with pytest.raises(TypeError):
        FastLoader(WithPreLoad())


def test_fast_loader_refuses_a_partial_schema():
    with pytest.raises(TypeError):
        FastLoader(AdPutSchema(partial=True))


# Query strings of searches, good and bad (the parser takes them through FastLoader).
SEARCH_QUERIES = [
    {},
    {"q": "bike repair", "lat": "48.85", "lon": "2.35", "radius_km": "10"},
    {"bbox": "170,-10,-170,10", "facets": "category,kind,currency,portal", "limit": "100"},
    {"lat": "48.85", "lon": "2.35", "sort": "distance", "kind": "offer", "tags": "a,b"},
    {"currency": "EUR,HOUR", "language": "fr", "portal": "sel-paris", "has_price": "true"},
    {"price_currency": "EUR", "price_min": "1.5", "price_max": "20", "sort": "recent"},
    {"updated_since": "2026-01-01T00:00:00Z", "format": "geojson", "category": "food"},
    {"radius_km": "10"},
    {"lat": "48.85"},
    {"lat": "91", "lon": "0"},
    {"lat": "48.85", "lon": "2.35", "radius_km": "5000"},
    {"bbox": "1,2,3"},
    {"bbox": "0,10,1,5"},
    {"sort": "distance"},
    {"sort": "relevance"},
    {"limit": "0"},
    {"limit": "101"},
    {"limit": "ten"},
    {"unknown": "x"},
    {"currency": "EUR,,HOUR"},
    {"price_min": "1"},
    {"price_currency": "EUR", "price_min": "5", "price_max": "1"},
    {"updated_since": "yesterday"},
    {"q": "a\u0000b"},
]


@pytest.mark.parametrize("query", SEARCH_QUERIES)
def test_fast_loader_agrees_with_schema_load_on_search_queries(query):
    schema = SearchArgsSchema()
    assert outcome(FastLoader(schema).load, query) == outcome(schema.load, query)


def test_the_api_loads_query_strings_and_json_bodies_through_the_fast_loader(
    client, make_portal, monkeypatch
):
    loaded = []
    checked_load = FastLoader.load  # the suite's own check of each fast load (conftest)

    def counted_load(loader, data):
        loaded.append(type(loader.schema).__name__)
        return checked_load(loader, data)

    monkeypatch.setattr(FastLoader, "load", counted_load)
    portal = make_portal()
    assert client.get("/v1/search?lat=48.85&lon=2.35&radius_km=10").status_code == 200
    put = client.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers)
    assert put.status_code == 201, put.json
    assert client.get("/v1/search?lat=48.85&lon=2.35&radius=10").status_code == 400
    assert loaded == ["SearchArgsSchema", "AdPutSchema", "SearchArgsSchema"]
