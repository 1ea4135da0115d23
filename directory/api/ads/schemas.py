from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from directory.api.fields import (
    BCP47,
    EXTERNAL_ID_ERROR,
    HANDLE,
    LEDGER_ACCOUNT,
    BoundedList,
    DecimalString,
    FullMatch,
    PerItemList,
    Str,
    StrictBoolean,
    Text,
    Url,
    WholeNumber,
    currency_code_field,
    external_id_field,
    published_link,
    validate_ledger_account,
    validate_member_handle,
    validate_tag,
)
from directory.api.loading import FastLoader
from directory.geo import Point, Privacy
from directory.models import AdKind, PriceUnit
from directory.models.ads import Visibility
from directory.services.ads import EXTERNAL_ID, MAX_BATCH_ITEMS, AdInput, Price


class LocationSchema(Schema):
    lat = fields.Float(
        required=True,
        allow_nan=False,
        validate=validate.Range(-90, 90),
        metadata={"description": "Latitude in degrees (WGS84)", "example": 48.8566},
    )
    lon = fields.Float(
        required=True,
        allow_nan=False,
        validate=validate.Range(-180, 180),
        metadata={"description": "Longitude in degrees (WGS84)", "example": 2.3522},
    )

    @post_load
    def to_point(self, data, **kwargs):
        return Point(data["lat"], data["lon"])


class LocationField(fields.Nested):
    """Documented as LocationSchema, but loaded without a nested schema: a location is
    two numbers, and a nested load per ad is a large share of a batch's cost."""

    def __init__(self, **kwargs):
        super().__init__(LocationSchema, **kwargs)

    def _deserialize(self, value, attr, data, partial=None, **kwargs):
        if not isinstance(value, dict):
            raise ValidationError({"_schema": ["Must be an object with lat and lon."]})
        errors = {}
        unknown = set(value) - {"lat", "lon"}
        for name in sorted(unknown):
            errors[name] = ["Unknown field."]
        coordinates = {}
        for name, limit in (("lat", 90), ("lon", 180)):
            number = value.get(name)
            if name not in value:
                errors[name] = ["Missing data for required field."]
            elif isinstance(number, bool) or not isinstance(number, int | float):
                errors[name] = ["Not a valid number."]
            elif not -limit <= number <= limit:
                errors[name] = [
                    f"Must be greater than or equal to -{limit} and less than or equal to {limit}."
                ]
            else:
                coordinates[name] = float(number)
        if errors:
            raise ValidationError(errors)
        return Point(coordinates["lat"], coordinates["lon"])


class PriceSchema(Schema):
    amount = DecimalString(
        digits=10,
        places=4,
        required=True,
        metadata={"description": "Amount as a decimal string", "example": "12.50"},
    )
    currency = currency_code_field(
        required=True,
        metadata={"description": "One of the ad's accepted currencies", "example": "EUR"},
    )
    unit = fields.Enum(
        PriceUnit,
        by_value=True,
        required=True,
        metadata={"description": "What the amount is for: once, per item, hour, day..."},
    )

    @post_load
    def to_price(self, data, **kwargs):
        return Price(**data)


class AdPutSchema(Schema):
    """An ad as a portal publishes it."""

    kind = fields.Enum(
        AdKind, by_value=True, required=True, metadata={"description": "offer or want"}
    )
    title = Text(
        required=True, validate=validate.Length(1, 200), metadata={"example": "Bike repairs"}
    )
    body = Text(
        required=True,
        multiline=True,
        allow_blank=True,
        validate=validate.Length(max=8000),
        metadata={"description": "Description, plain text, up to 8,000 characters"},
    )
    category = Str(
        required=True,
        validate=validate.Length(1, 64),
        metadata={"description": "A code from GET /v1/categories", "example": "home.repairs"},
    )
    tags = BoundedList(
        Text(validate=[validate.Length(1, 40), validate_tag]),
        validate=validate.Length(max=20),
        load_default=(),
        metadata={"description": "Free tags, up to 20 of up to 40 characters"},
    )
    location = LocationField(
        allow_none=True,
        load_default=None,
        metadata={
            "description": "Where the offer or want is. Required unless privacy is hidden; "
            "for approximate and area only a snapped point is stored, for hidden nothing."
        },
    )
    privacy = fields.Enum(
        Privacy,
        by_value=True,
        load_default=Privacy.APPROXIMATE,
        metadata={
            "description": "How precisely the location is published: exact; approximate "
            "(snapped to a ~1 km cell); area (~10 km cell); hidden (no location). "
            "Default approximate."
        },
    )
    visibility = fields.Enum(
        Visibility,
        by_value=True,
        load_default=Visibility.PUBLIC,
        metadata={"description": "public, or portal: seen only by the owning portal"},
    )
    currencies = BoundedList(
        currency_code_field(
            metadata={"description": "A code from GET /v1/currencies", "example": "EUR"}
        ),
        validate=validate.Length(1, 20),
        allow_none=True,
        load_default=None,
        metadata={"description": "Accepted currency codes; the portal's defaults when absent"},
    )
    price = fields.Nested(PriceSchema, allow_none=True, load_default=None)
    language = fields.String(
        allow_none=True,
        load_default=None,
        validate=[
            validate.Length(max=35),
            FullMatch(BCP47, error="Must be a BCP 47 language tag such as en or pt-BR."),
        ],
        metadata={"description": "BCP 47 language tag of the text", "example": "en"},
    )
    images = BoundedList(
        Url(schemes={"https", "http"}, validate=[validate.Length(max=2048), published_link]),
        validate=validate.Length(max=10),
        load_default=(),
        metadata={
            "description": "Up to 10 image URLs, loaded by the apps that show the ad: none "
            "with a user name or password, nor to localhost or an address that is not public"
        },
    )
    expires_at = fields.AwareDateTime(
        allow_none=True,
        load_default=None,
        metadata={
            "description": "When the ad ends (with a time zone). Default: 90 days after its "
            "last change; at most a year ahead."
        },
    )
    member = fields.String(
        required=True,
        validate=validate_member_handle,
        metadata={
            "description": "The portal's opaque handle of the advertiser; never an email "
            "address or phone number",
            "pattern": HANDLE.pattern,
            "example": "m-4821",
        },
    )
    ledger_account = fields.String(
        allow_none=True,
        load_default=None,
        validate=[
            FullMatch(
                LEDGER_ACCOUNT,
                error="Must be 1 to 128 characters: letters, digits and . _ : @ / -",
            ),
            validate_ledger_account,
        ],
        metadata={
            "description": "The advertiser's account on the portal's ledger (published "
            "with the ad for payers; never an email address)"
        },
    )
    accepts_contact = StrictBoolean(
        load_default=True,
        metadata={
            "description": "false: members cannot contact the advertiser through the "
            "directory's relay. Default true."
        },
    )

    @validates_schema
    def no_duplicates(self, data, **kwargs):
        for name in ("tags", "currencies"):
            values = data.get(name) or ()
            folded = [value.casefold() for value in values]
            if len(set(folded)) != len(folded):
                raise ValidationError("Must not repeat a value.", name)

    @post_load
    def to_input(self, data, **kwargs):
        for name in ("tags", "images"):
            data[name] = tuple(data[name])
        if data["currencies"] is not None:
            data["currencies"] = tuple(data["currencies"])
        return AdInput(**data)


class PublicLocationSchema(Schema):
    lat = fields.Float(metadata={"description": "Latitude (already snapped to the privacy level)"})
    lon = fields.Float(metadata={"description": "Longitude (already snapped to the privacy level)"})


class PublicPriceSchema(Schema):
    amount = DecimalString(digits=10, places=4)
    currency = fields.String()
    unit = fields.Enum(PriceUnit, by_value=True)


class PaymentSchema(Schema):
    """Where and whom to pay for the ad, on its portal's ledger, with the payer's own
    client and credentials; the directory never holds credentials or moves value."""

    # A string, not an enum, in the spec: a client generated from it must still read the
    # search pages of a later release, when an ad is paid by a protocol added since.
    protocol = fields.String(
        metadata={
            "description": "The ledger's protocol: which client adapter pays (credit-commons; "
            "more may come: a client that does not know one cannot pay that ad, and reads "
            "the rest as usual)",
            "example": "credit-commons",
        }
    )
    ledger_url = fields.String(metadata={"description": "The ledger node's base URL"})
    node = fields.String(metadata={"description": "The node's name on its ledger"})
    payee = fields.String(metadata={"description": "The advertiser's account on the node"})
    currencies = fields.List(fields.String(), metadata={"description": "What the ad accepts"})
    price = fields.Nested(PublicPriceSchema, allow_none=True)


class PublicAdSchema(Schema):
    """An ad as the world may see it."""

    id = fields.UUID(metadata={"description": "The directory's id of the ad"})
    global_id = fields.String(
        allow_none=True,
        metadata={
            "description": "The ad's identity in every directory that carries it: its "
            "portal's verified website (scheme and host in lower case, no default port, "
            "query, fragment or trailing slash), '#', and the portal's own id of the ad. "
            "The same ad of the same portal has the same global_id in any directory; it "
            "splits unambiguously at its one '#'. null when the portal has no verified "
            "website (one it proved is its own): the ad then has no identity across "
            "directories",
            "example": "https://sel-lyon.example.org#annonce-1234",
        },
    )
    portal = fields.String(metadata={"description": "Slug of the publishing portal"})
    kind = fields.Enum(AdKind, by_value=True)
    title = fields.String()
    body = fields.String()
    category = fields.String()
    tags = fields.List(fields.String())
    location = fields.Nested(PublicLocationSchema, allow_none=True)
    privacy = fields.Enum(Privacy, by_value=True)
    currencies = fields.List(fields.String())
    price = fields.Nested(PublicPriceSchema, allow_none=True)
    language = fields.String(allow_none=True)
    images = fields.List(fields.String())
    ledger_account = fields.String(allow_none=True)
    payment = fields.Nested(
        PaymentSchema,
        allow_none=True,
        metadata={
            "description": "How to pay the advertiser; null unless the ad has a ledger "
            "account and its portal a registered ledger"
        },
    )
    accepts_contact = fields.Boolean(
        metadata={"description": "Whether members may contact the advertiser through the relay"}
    )
    expires_at = fields.DateTime()
    version = fields.Integer()
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class AdSchema(PublicAdSchema):
    """An ad as its own portal sees it."""

    external_id = fields.String()
    visibility = fields.Enum(Visibility, by_value=True)
    member = fields.String()
    expired = fields.Boolean()
    etag = fields.String(metadata={"description": "Pass as If-Match to make a PUT conditional"})


class OwnAdsArgsSchema(Schema):
    limit = WholeNumber(load_default=100, validate=validate.Range(1, 1000))
    cursor = fields.String(
        load_default=None,
        validate=validate.Length(1, 200),
        metadata={"description": "next_cursor of the previous page"},
    )
    include_expired = fields.Boolean(load_default=True)


class OwnAdsPageSchema(Schema):
    items = fields.List(fields.Nested(AdSchema))
    next_cursor = fields.String(allow_none=True)


class BatchItemSchema(Schema):
    """One item of a batch (for the spec; items are loaded by AdItemField)."""

    op = fields.String(
        load_default="upsert",
        validate=validate.OneOf(["upsert", "delete", "expire"]),
        metadata={"description": "upsert (default), delete or expire"},
    )
    external_id = external_id_field(required=True)
    ad = fields.Nested(
        AdPutSchema, metadata={"description": "Required for upsert, absent otherwise"}
    )


class StageItemSchema(Schema):
    """One ad staged in a sync session (for the spec; items are loaded by AdItemField)."""

    external_id = external_id_field(required=True)
    ad = fields.Nested(AdPutSchema, required=True)


class AdItemField(fields.Nested):
    """An item {op?, external_id, ad}: documented by its schema, loaded by hand around
    one AdPutSchema load, since a nested schema per item costs a third of a batch."""

    def __init__(self, schema: type[Schema], *, ops: tuple[str, ...] | None, **kwargs):
        super().__init__(schema, **kwargs)
        self.ops = ops
        self.ad_loader = FastLoader(AdPutSchema())

    def _deserialize(self, value, attr, data, partial=None, **kwargs):
        if not isinstance(value, dict):
            raise ValidationError({"_schema": ["Must be an object."]})
        allowed = {"external_id", "ad"} | ({"op"} if self.ops else set())
        errors = {name: ["Unknown field."] for name in sorted(set(value) - allowed)}
        # Staging takes no op (refused above as unknown): its items are upserts.
        op = value.get("op", "upsert") if self.ops else "upsert"
        if self.ops and op not in self.ops:
            errors["op"] = [f"Must be one of: {', '.join(self.ops)}."]
            op = None  # which ad it would take is unknown: nothing is said of it
        external_id = value.get("external_id")
        if external_id is None:
            errors["external_id"] = ["Missing data for required field."]
        elif not isinstance(external_id, str) or not EXTERNAL_ID.fullmatch(external_id):
            errors["external_id"] = [EXTERNAL_ID_ERROR]
        ad = None
        if op == "upsert":
            if value.get("ad") is None:
                errors["ad"] = ["Missing data for required field."]
            else:
                try:
                    ad = self.ad_loader.load(value["ad"])
                except ValidationError as error:
                    errors["ad"] = error.messages
        elif op is not None and "ad" in value:
            errors["ad"] = [f"Must be absent for op {op}."]
        if errors:
            raise ValidationError(errors)
        return {"op": op, "external_id": external_id, "ad": ad}


class BatchSchema(Schema):
    items = PerItemList(
        AdItemField(BatchItemSchema, ops=("upsert", "delete", "expire")),
        required=True,
        validate=validate.Length(1, MAX_BATCH_ITEMS),
        metadata={"description": f"1 to {MAX_BATCH_ITEMS} items, applied in one transaction"},
    )
    replace = StrictBoolean(
        load_default=False,
        metadata={
            "description": "The items are the portal's complete set: every other ad of the "
            "portal is deleted (an item that is rejected keeps its ad as it was). For a "
            "set larger than one batch, use a sync session."
        },
    )


class ItemResultSchema(Schema):
    index = fields.Integer()
    external_id = fields.String(allow_none=True)
    status = fields.String(
        metadata={
            "description": "created, updated, unchanged, deleted, expired, staged or rejected"
        }
    )
    id = fields.UUID(allow_none=True)
    version = fields.Integer(allow_none=True)
    etag = fields.String(allow_none=True)
    error = fields.String(
        allow_none=True,
        metadata={
            "description": "Why the item was rejected, as a stable machine code: the `error` "
            "that a single write of it (putAd, expireAd) would be answered with; null unless "
            "rejected. Fix the ad, then send it again: validation_error (a field fails its "
            "type, length, range or pattern, is missing or unknown; or the external_id is "
            "not one the directory takes), invalid_input (a rule of the directory's: no "
            "currencies while the portal has no defaults, a price in a currency the ad "
            "does not accept, no location unless privacy is hidden, an expires_at past or "
            "too far ahead), unknown_category, unknown_currency (of the ad's currencies; "
            "or, when errors name default_currencies, of the portal's defaults: fix those "
            "with PATCH /v1/portals/me). Send each ad once: duplicate_external_id (an "
            "earlier item of the same request has its external_id; that one stands). "
            "Nothing to expire: not_found (an expiry of an ad the portal does not have). "
            "Make room first: too_many_ads (a new ad beyond the portal's limit on stored "
            "ads: delete ads it no longer needs, or ask the directory's operators for a "
            "higher limit, then send it again; sent again unchanged, it is refused alike). "
            "In a commit's rejected_items, also null for a commit answered before items "
            "had codes (its errors still say why). A code not listed here is a problem "
            "with the item, told by its errors.",
            "example": "unknown_currency",
        },
    )
    errors = fields.Dict(
        allow_none=True,
        metadata={"description": "For rejected items: messages by field path, for a person"},
    )


class BatchResultSchema(Schema):
    results = fields.List(fields.Nested(ItemResultSchema))
    counts = fields.Dict(
        keys=fields.String(), values=fields.Integer(), metadata={"description": "Items by status"}
    )
    deleted_by_replace = fields.Integer(
        metadata={"description": "Ads deleted because a replace batch left them out"}
    )
