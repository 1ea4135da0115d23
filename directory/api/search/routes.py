"""Search: nearby, by category, currency and text, as JSON or GeoJSON."""

from __future__ import annotations

from flask import g, request
from flask.views import MethodView

from directory.api.auth import BEARER_AUTH, optional_portal
from directory.api.blueprint import Blueprint
from directory.api.db import transaction, wiring
from directory.api.fields import json_response
from directory.api.search.schemas import GeoJSONPageSchema, SearchArgsSchema, SearchPageSchema
from directory.geo import Point
from directory.search import PriceRange, SearchHit, SearchPage, SearchQuery, Sort, decode_cursor
from directory.services.ads import Payment, Price
from directory.services.categories import expand_categories
from directory.services.portals import AuthenticatedPortal

blp = Blueprint("search", __name__, url_prefix="/v1", description="Search ads")

GEOJSON = "application/geo+json"


@blp.route("/search")
class Search(MethodView):
    @blp.arguments(SearchArgsSchema(), location="query")  # an instance: built once, not per request
    @blp.response(200, SearchPageSchema, description="A page of hits (GeoJSON on request)")
    @blp.alt_response(429, description="Too many searches from this client: see Retry-After")
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
        ads, and has a higher rate limit. Hidden ads never appear in an area search or
        in distance order; the other ads show only their published (snapped) point, and
        distances are rounded to their privacy level."""
        viewer = search_viewer()
        search = wiring().search
        query = build_query(
            args,
            viewer_portal_id=None if viewer is None else viewer.id,
            categories=wiring().category_codes,
        )
        page = search.search(query)
        if _wants_geojson(args["format"]):
            body = render_geojson(page)
            return json_response(body, mimetype=GEOJSON)
        return json_response(render_json(page))


def search_viewer() -> AuthenticatedPortal | None:
    """The portal whose key came with the search, if any (a wrong key is refused with
    401, never treated as anonymous). Looked up once per request: the rate limiter
    asks first, to count the search against the portal rather than the address."""
    if "search_viewer" not in g:
        viewer = None
        if "Authorization" in request.headers:
            with transaction() as session:
                viewer = optional_portal(session)
        g.search_viewer = viewer
    return g.search_viewer


def _wants_geojson(format_: str | None) -> bool:
    if format_ is not None:
        return format_ == "geojson"
    # Only when preferred: a client accepting both (or */*) gets JSON.
    accepted = request.accept_mimetypes
    return accepted[GEOJSON] > accepted["application/json"]


def build_query(args: dict, *, viewer_portal_id: int | None, categories: set[str]) -> SearchQuery:
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
        tags=tuple(tag.casefold() for tag in args["tags"]),
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
# By hand rather than through marshmallow: a page of 100 hits is the hottest path of the
# service. Ids and times are left to orjson, which writes them as marshmallow would, in C.
# tests/api/test_search.py checks the output against SearchHitSchema.dump.


def _price(price: Price | None) -> dict | None:
    if price is None:
        return None
    return {"amount": str(price.amount), "currency": price.currency, "unit": price.unit.value}


def _payment(payment: Payment | None) -> dict | None:
    if payment is None:
        return None
    return {
        "protocol": payment.protocol.value,
        "ledger_url": payment.ledger_url,
        "node": payment.node,
        "payee": payment.payee,
        "currencies": payment.currencies,
        "price": _price(payment.price),
    }


def public_ad(hit: SearchHit) -> dict:
    ad = hit.ad
    return {
        "id": ad.id,
        "global_id": ad.global_id,
        "portal": ad.portal,
        "kind": ad.kind.value,
        "title": ad.title,
        "body": ad.body,
        "category": ad.category,
        "tags": ad.tags,
        "location": None
        if ad.location is None
        else {"lat": ad.location.lat, "lon": ad.location.lon},
        "privacy": ad.privacy.value,
        "currencies": ad.currencies,
        "price": _price(ad.price),
        "language": ad.language,
        "images": ad.images,
        "ledger_account": ad.ledger_account,
        "payment": _payment(ad.payment),
        "accepts_contact": ad.accepts_contact,
        "expires_at": ad.expires_at,
        "version": ad.version,
        "created_at": ad.created_at,
        "updated_at": ad.updated_at,
        "distance_km": hit.distance_km,
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
