"""Search: nearby, by category, currency and text, as JSON or GeoJSON."""

from __future__ import annotations

from flask import request
from flask.views import MethodView

from directory.api.auth import BEARER_AUTH, calling_portal
from directory.api.blueprint import Blueprint
from directory.api.db import wiring
from directory.api.errors import RETRY_AFTER_HEADER, ErrorSchema
from directory.api.fields import json_response
from directory.api.search.schemas import GeoJSONPageSchema, SearchArgsSchema, SearchPageSchema
from directory.errors import NotAcceptable
from directory.geo import Point
from directory.search import (
    PriceRange,
    SearchHit,
    SearchPage,
    SearchQuery,
    Sort,
    decode_cursor,
    shown_distance_km,
)
from directory.services.ads import global_id_prefix
from directory.services.categories import expand_categories

blp = Blueprint("search", __name__, url_prefix="/v1", description="Search ads")

GEOJSON = "application/geo+json"


@blp.route("/search")
class Search(MethodView):
    @blp.arguments(SearchArgsSchema, location="query")
    @blp.response(200, SearchPageSchema, description="A page of hits (GeoJSON on request)")
    @blp.alt_response(
        406,
        schema=ErrorSchema,
        description="The Accept header takes neither application/json nor "
        "application/geo+json (not_acceptable)",
    )
    @blp.alt_response(
        429,
        schema=ErrorSchema,
        description="Too many searches from this client: see Retry-After",
        headers=RETRY_AFTER_HEADER,
    )
    @blp.doc(
        operationId="searchAds",
        security=[{}, *BEARER_AUTH],
        responses={
            "200": {
                "description": "A page of hits (GeoJSON on request)",
                "content": {
                    "application/json": {"schema": SearchPageSchema},
                    GEOJSON: {"schema": GeoJSONPageSchema},
                },
            }
        },
    )
    def get(self, args):
        """Search ads near a point or in a box, by words, category, kind and currency

        Anyone may search. A portal that sends its key also finds its own portal-only
        ads, does not find those of a community it blocked or that blocked it (their
        members cannot talk), and has a higher rate limit. Hidden ads never appear in an area search or
        in distance order; the other ads show only their published (snapped) point, and
        distances are rounded to their privacy level."""
        viewer = calling_portal()
        search = wiring().search
        query = build_query(
            args,
            viewer_portal_id=None if viewer is None else viewer.id,
            categories=wiring().category_codes,
        )
        geojson = _wants_geojson(args["format"])  # a 406 before any work
        page = search.search(query)
        if geojson:
            response = json_response(render_geojson(page), mimetype=GEOJSON)
        else:
            response = json_response(render_json(page))
        response.headers["Vary"] = "Accept"  # the format may follow it: caches must too
        return response


def _wants_geojson(format_: str | None) -> bool:
    """GeoJSON when `format` asks for it, or Accept prefers it; JSON otherwise. Accept
    naming neither (nor a wildcard) is refused with 406."""
    if format_ is not None:
        return format_ == "geojson"
    if not request.accept_mimetypes:
        return False
    json, geojson = (_quality("application/json"), _quality(GEOJSON))
    if not json and not geojson:
        raise NotAcceptable(
            "this search answers in application/json or application/geo+json, and the "
            "Accept header takes neither (or give format=json or format=geojson)",
            field="Accept",
            details={"location": "headers"},
        )
    # Only when preferred: a client accepting both (or */*) gets JSON.
    return geojson > json


def _quality(media_type: str) -> float:
    """How much the request's Accept header wants `media_type`, by its most specific
    entry (RFC 9110 section 12.5.1). Parameters are read past: werkzeug matches
    "application/geo+json; charset=utf-8" against nothing without them."""
    kind = media_type.split("/")[0]
    best, quality = -1, 0.0
    for value, entry_quality in request.accept_mimetypes:
        entry = value.split(";")[0].strip().lower()
        if entry == media_type:
            specificity = 2
        elif entry == f"{kind}/*":
            specificity = 1
        elif entry == "*/*":
            specificity = 0
        else:
            continue
        if specificity > best:
            best, quality = specificity, entry_quality
    return quality


def build_query(
    args: dict, *, viewer_portal_id: int | None, categories: frozenset[str]
) -> SearchQuery:
    point = None if args["lat"] is None else Point(args["lat"], args["lon"])
    sort = args["sort"]
    if sort is None:
        sort = Sort.RELEVANCE if args["q"] else Sort.DISTANCE if point else Sort.RECENT
    price = None
    if args["price_currency"] is not None:
        price = PriceRange(args["price_currency"], args["price_min"], args["price_max"])
    query = SearchQuery(
        text=args["q"],
        point=point,
        radius_km=args["radius_km"],
        bbox=args["bbox"],
        kinds=() if args["kind"] is None else (args["kind"],),
        categories=expand_categories(categories, args["category"]),
        tags=tuple(args["tags"]),
        currencies=args["currency"],
        languages=tuple(language.lower() for language in args["language"]),
        portals=args["portal"],
        updated_since=args["updated_since"],
        has_price=True if price is not None else args["has_price"],
        payable=args["payable"],
        price=price,
        sort=sort,
        limit=args["limit"],
        facets=args["facets"],
        viewer_portal_id=viewer_portal_id,
    )
    if args["cursor"] is not None:
        query = query.continued_after(decode_cursor(query, args["cursor"]))
    return query


# --- rendering ---------------------------------------------------------------------------
# By hand from the engine's rows rather than through marshmallow: a page of 100 hits is
# the hottest path of the service. Ids and times are left to orjson, which writes them as
# marshmallow would, in C; enums come as their text (or as StrEnum members, which orjson
# writes as their text). tests/api/test_search.py checks the output against
# SearchHitSchema.dump of the same ads.


def public_ad(hit: SearchHit) -> dict:
    """The ad as the world may see it: never its member handle or its visibility."""
    # RECORD_COLUMNS' order, as record_from_row reads it.
    (ad_id, slug, external_id, kind, title, body, category, tags, lat, lon, privacy,
     _visibility, currencies, amount, currency, unit, language, images, expires_at,
     _member, ledger_account, accepts_contact, version, created_at,
     updated_at, ledger_protocol, ledger_url, ledger_node, verified_website) = hit.row  # fmt: skip
    price = None
    if amount is not None:
        price = {"amount": str(amount), "currency": currency, "unit": unit}
    payment = None
    if ledger_account is not None and ledger_url is not None:
        payment = {
            "protocol": ledger_protocol,
            "ledger_url": ledger_url,
            "node": ledger_node,
            "payee": ledger_account,
            "currencies": currencies,
            "price": price,
        }
    identity = global_id_prefix(verified_website)
    return {
        "id": ad_id,
        "global_id": None if identity is None else identity + external_id,
        "portal": slug,
        "kind": kind,
        "title": title,
        "body": body,
        "category": category,
        "tags": tags,
        "location": None if lat is None else {"lat": lat, "lon": lon},
        "privacy": privacy,
        "currencies": currencies,
        "price": price,
        "language": language,
        "images": images,
        "ledger_account": ledger_account,
        "payment": payment,
        "accepts_contact": accepts_contact,
        "expires_at": expires_at,
        "version": version,
        "created_at": created_at,
        "updated_at": updated_at,
        "distance_km": shown_distance_km(hit.distance_m, privacy),
    }


def _facets(page: SearchPage) -> dict | None:
    if page.facets is None:
        return None
    return {"total": page.facets.total} | {
        facet.value: counts for facet, counts in page.facets.counts.items()
    }


def render_json(page: SearchPage) -> dict:
    return {
        "hits": [public_ad(hit) for hit in page.hits],
        "next_cursor": page.next_cursor,
        "facets": _facets(page),
    }


def render_geojson(page: SearchPage) -> dict:
    features = []
    for hit in page.hits:
        properties = public_ad(hit)
        location = properties.pop("location")
        features.append(
            {
                "type": "Feature",
                "id": properties["id"],
                "geometry": None
                if location is None
                else {"type": "Point", "coordinates": [location["lon"], location["lat"]]},
                "properties": properties,
            }
        )
    return {
        "type": "FeatureCollection",
        "features": features,
        "next_cursor": page.next_cursor,
        "facets": _facets(page),
    }
