from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from directory.api.ads.schemas import PublicAdSchema
from directory.api.fields import (
    ASCII_DECIMAL,
    BCP47,
    DecimalString,
    FullMatch,
    QueryNumber,
    Text,
    WholeNumber,
    currency_code_field,
)
from directory.api.spec import OPTIONAL_ANSWER_FIELD
from directory.geo import BBox
from directory.models import AdKind
from directory.search import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_QUERY_WORDS,
    MAX_RADIUS_KM,
    Facet,
    Sort,
    query_words,
)

MAX_LIST_ITEMS = 20
SLUG = r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$"


class CommaList(fields.String):
    """Several values in one parameter, separated by commas: `currency=EUR,HOUR`.

    Absent, a list is empty: `load_default=tuple`, called, since a literal () would be
    written into the spec as the parameter's default, "()"."""

    def __init__(self, item: fields.Field, *, max_items: int = MAX_LIST_ITEMS, **kwargs):
        super().__init__(**kwargs)
        self.item = item
        self.max_items = max_items

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        parts = text.split(",")
        if any(not part.strip() for part in parts):
            raise ValidationError("Must be a comma-separated list without empty items.")
        if len(parts) > self.max_items:
            raise ValidationError(f"Must list at most {self.max_items} values.")
        values, problems = [], []
        for part in parts:
            try:
                values.append(self.item.deserialize(part.strip()))
            except ValidationError as error:
                problems.append(f"{part.strip()!r}: {' '.join(error.messages)}")
        if problems:
            raise ValidationError(problems)
        return tuple(dict.fromkeys(values))  # repeats change nothing


class BBoxField(fields.String):
    PROBLEM = "bbox must be 4 numbers: min_lon,min_lat,max_lon,max_lat"

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        parts = text.split(",")
        # Plain ASCII numbers only: float() also reads "1_0" (as 10), "+1", "٤" and "nan".
        if len(parts) != 4 or not all(ASCII_DECIMAL.fullmatch(part) for part in parts):
            raise ValidationError(self.PROBLEM)
        numbers = [float(part) for part in parts]
        west, south, east, north = numbers
        try:
            return BBox(west=west, south=south, east=east, north=north)
        except ValueError as error:
            raise ValidationError(
                f"{error} ({self.PROBLEM}; min_lon > max_lon crosses the antimeridian)"
            ) from None


def _has_a_word(text: str) -> None:
    # Without a letter or digit there is nothing to look for, and what such a query finds
    # is up to each engine (nothing in PostgreSQL): said, rather than left to chance.
    if not any(character.isalnum() for character in text):
        raise ValidationError("Must contain at least one letter or digit.")


def _few_enough_words(text: str) -> None:
    words = query_words(text)
    if len(words) > MAX_QUERY_WORDS:
        raise ValidationError(
            f"Must have at most {MAX_QUERY_WORDS} different words (it has {len(words)}): "
            "every word must match, so fewer find more."
        )


class SearchArgsSchema(Schema):
    q = Text(
        load_default=None,
        validate=[validate.Length(1, 200), _has_a_word, _few_enough_words],
        metadata={
            "description": "Words to find in the title, tags and body: accents and case do "
            "not matter, words match by prefix and by stem, and small typos are forgiven. "
            f"Every word must match; at most {MAX_QUERY_WORDS} different words"
        },
    )
    lat = QueryNumber(
        load_default=None,
        validate=validate.Range(-90, 90),
        metadata={"description": "Latitude of the point to search around (with lon)"},
    )
    lon = QueryNumber(
        load_default=None,
        validate=validate.Range(-180, 180),
        metadata={"description": "Longitude of the point to search around (with lat)"},
    )
    radius_km = QueryNumber(
        load_default=None,
        validate=validate.Range(0, MAX_RADIUS_KM, min_inclusive=False),
        metadata={
            "description": "Only ads within this distance of lat/lon, measured on the "
            f"Earth's surface (at most {MAX_RADIUS_KM:g} km). Without it a point means "
            "nearest first, worldwide"
        },
    )
    bbox = BBoxField(
        load_default=None,
        metadata={
            "description": "Only ads inside min_lon,min_lat,max_lon,max_lat (degrees); "
            "min_lon > max_lon crosses the antimeridian",
            "example": "2.2,48.8,2.5,48.95",
        },
    )
    kind = fields.Enum(AdKind, by_value=True, load_default=None)
    category = CommaList(
        fields.String(validate=validate.Length(1, 64)),
        load_default=tuple,
        metadata={"description": "Category codes; a group includes its children"},
    )
    tags = CommaList(
        Text(validate=validate.Length(1, 40)),
        load_default=tuple,
        metadata={"description": "Ads with any of these tags (case does not matter)"},
    )
    currency = CommaList(
        currency_code_field(),
        load_default=tuple,
        metadata={"description": "Ads that accept any of these currencies"},
    )
    language = CommaList(
        fields.String(
            validate=FullMatch(BCP47, error="Must be a language tag such as fr or fr-CA.")
        ),
        load_default=tuple,
        metadata={
            "description": "Ads in any of these languages (fr also matches fr-CA); also "
            "stems q in them"
        },
    )
    portal = CommaList(
        fields.String(validate=FullMatch(SLUG, error="Must be a portal slug.")),
        load_default=tuple,
        metadata={"description": "Only ads of these portals (slugs)"},
    )
    updated_since = fields.AwareDateTime(
        load_default=None,
        metadata={"description": "Only ads changed at or after this time (with a time zone)"},
    )
    has_price = fields.Boolean(
        load_default=None,
        truthy={"true"},
        falsy={"false"},
        metadata={"description": "true: only ads with a price; false: only ads without"},
    )
    payable = fields.Boolean(
        load_default=None,
        truthy={"true"},
        falsy={"false"},
        metadata={
            "description": "true: only ads that can be paid on their portal's ledger (they "
            "carry a payment block); false: only ads that cannot"
        },
    )
    price_currency = currency_code_field(
        load_default=None,
        metadata={"description": "The currency of price_min and price_max (required with them)"},
    )
    price_min = DecimalString(digits=10, places=4, load_default=None)
    price_max = DecimalString(digits=10, places=4, load_default=None)
    sort = fields.Enum(
        Sort,
        by_value=True,
        load_default=None,
        metadata={
            "description": "distance (needs lat/lon), relevance (needs q) or recent. "
            "Default: relevance with q, else distance with a point, else recent"
        },
    )
    limit = WholeNumber(load_default=DEFAULT_LIMIT, validate=validate.Range(1, MAX_LIMIT))
    cursor = fields.String(
        load_default=None,
        validate=validate.Length(1, 500),
        metadata={"description": "next_cursor of the previous page of the same search"},
    )
    facets = CommaList(
        fields.Enum(Facet, by_value=True),
        load_default=tuple,
        metadata={
            "description": "Count the whole result set by category, kind, currency and/or "
            "portal, e.g. facets=category,currency"
        },
    )
    format = fields.String(
        load_default=None,
        validate=validate.OneOf(["json", "geojson"]),
        metadata={
            "description": "geojson answers a FeatureCollection (as does Accept: "
            "application/geo+json)"
        },
    )

    @validates_schema
    def check_combination(self, data, **kwargs):
        problems: dict[str, list[str]] = {}

        def refuse(field: str, message: str) -> None:
            problems.setdefault(field, []).append(message)

        if (data["lat"] is None) != (data["lon"] is None):
            missing = "lon" if data["lon"] is None else "lat"
            refuse(missing, "lat and lon must be given together.")
        has_point = data["lat"] is not None and data["lon"] is not None
        if data["radius_km"] is not None and not has_point:
            refuse("radius_km", "radius_km needs a point: give lat and lon.")
        if data["radius_km"] is not None and data["bbox"] is not None:
            refuse("bbox", "Give either bbox or radius_km, not both.")
        if data["sort"] is Sort.DISTANCE and not has_point:
            refuse("sort", "sort=distance needs a point: give lat and lon.")
        if data["sort"] is Sort.RELEVANCE and data["q"] is None:
            refuse("sort", "sort=relevance needs q.")
        has_range = data["price_min"] is not None or data["price_max"] is not None
        if has_range and data["price_currency"] is None:
            refuse("price_currency", "price_min and price_max need price_currency.")
        if data["price_currency"] is not None and not has_range:
            refuse("price_currency", "price_currency goes with price_min and/or price_max.")
        if has_range and data["has_price"] is False:
            refuse("has_price", "has_price=false contradicts a price range.")
        if (
            data["price_min"] is not None
            and data["price_max"] is not None
            and data["price_min"] > data["price_max"]
        ):
            refuse("price_max", "price_max must not be less than price_min.")
        if problems:
            raise ValidationError(problems)


class SearchHitSchema(PublicAdSchema):
    distance_km = fields.Float(
        allow_none=True,
        metadata={
            "description": "Distance from lat/lon to the ad's published point, rounded to "
            "its privacy level: 0.1 km (exact), 1 km (approximate), 10 km (area); null "
            "without a point or for hidden ads"
        },
    )


# The counts present only when asked for in `facets` (see directory/api/spec.py).
ASKED_FOR = {OPTIONAL_ANSWER_FIELD: True}


class FacetCountsSchema(Schema):
    total = fields.Integer(metadata={"description": "Ads in the whole result set"})
    category = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={
            "description": "By category code; a group counts its children's ads too",
            **ASKED_FOR,
        },
    )
    kind = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata=ASKED_FOR)
    currency = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={
            "description": "By accepted currency (an ad counts once per currency)",
            **ASKED_FOR,
        },
    )
    portal = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata=ASKED_FOR)


class SearchPageSchema(Schema):
    hits = fields.List(fields.Nested(SearchHitSchema))
    next_cursor = fields.String(
        allow_none=True,
        metadata={"description": "Pass as cursor (with the same parameters) for the next page"},
    )
    facets = fields.Nested(
        FacetCountsSchema,
        allow_none=True,
        metadata={"description": "null unless facets were asked for"},
    )


class GeoJSONGeometrySchema(Schema):
    type = fields.String(validate=validate.Equal("Point"))
    coordinates = fields.List(fields.Float(), metadata={"description": "[lon, lat]"})


class GeoJSONPropertiesSchema(SearchHitSchema):
    class Meta:
        exclude = ("location",)


class GeoJSONFeatureSchema(Schema):
    type = fields.String(validate=validate.Equal("Feature"))
    id = fields.UUID()
    geometry = fields.Nested(GeoJSONGeometrySchema, allow_none=True)
    properties = fields.Nested(
        GeoJSONPropertiesSchema, metadata={"description": "The hit, its location aside"}
    )


class GeoJSONPageSchema(Schema):
    type = fields.String(validate=validate.Equal("FeatureCollection"))
    features = fields.List(fields.Nested(GeoJSONFeatureSchema))
    next_cursor = fields.String(allow_none=True)
    facets = fields.Nested(
        FacetCountsSchema,
        allow_none=True,
        metadata={"description": "null unless facets were asked for"},
    )
