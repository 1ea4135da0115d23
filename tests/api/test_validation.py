"""Bad inputs, field by field: each gets a clear 4xx JSON error envelope
{code, status, error, message, errors} whose `errors` names the location and the field,
never a 500, and never a silent change or loss of data."""

from __future__ import annotations

import gzip
import io
import json
import uuid
from dataclasses import replace

import pytest

from directory import create_app, cursors
from directory.db import unit_of_work
from directory.models import PortalStatus
from directory.services import portals
from directory.services.portals import generate_key
from tests.factories import ad_payload, in_days

# --- helpers -------------------------------------------------------------------------------


def lookup(errors: dict, path: str):
    """The node of an `errors` map at a dotted path ("location.lat", "tags.0")."""
    node = errors
    for part in path.split("."):
        assert isinstance(node, dict) and part in node, f"no {path!r} in errors {errors!r}"
        node = node[part]
    return node


def assert_refused(
    response,
    status: int = 400,
    *,
    field: str | None = None,
    location: str = "json",
    error: str | None = None,
) -> dict:
    """The response is the error envelope with this status; when `field` is given,
    `errors[location]` names it. Returns the envelope."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    body = response.get_json(silent=True)
    assert isinstance(body, dict), f"not a JSON object: {text!r}"
    assert body["code"] == status
    assert isinstance(body.get("status"), str) and body["status"], body
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("message"), str) and body["message"], body
    if error is not None:
        assert body["error"] == error, body
    if field is not None:
        assert location in body.get("errors", {}), body
        assert lookup(body["errors"][location], field), body
    return body


def all_messages(body: dict) -> str:
    """The envelope's message and every message of its errors, as one text."""

    def leaves(node):
        if isinstance(node, dict):
            for value in node.values():
                yield from leaves(value)
        elif isinstance(node, list):
            for value in node:
                yield from leaves(value)
        else:
            yield str(node)

    return " ".join([body["message"], *leaves(body.get("errors", {}))])


def put_ad(client, portal, external_id: str = "a-1", /, *traits, headers=None, **overrides):
    return client.put(
        f"/v1/ads/{external_id}",
        json=ad_payload(*traits, **overrides),
        headers={**portal.headers, **(headers or {})},
    )


def own_ads(client, portal) -> list[dict]:
    response = client.get("/v1/portals/me/ads", headers=portal.headers)
    assert response.status_code == 200, response.json
    return response.json["items"]


def own_ad(client, portal, external_id: str = "a-1") -> dict:
    response = client.get(f"/v1/portals/me/ads/{external_id}", headers=portal.headers)
    assert response.status_code == 200, response.json
    return response.json


def assert_nothing_stored(client, portal) -> None:
    assert own_ads(client, portal) == []


@pytest.fixture
def existing_ad(client, portal) -> dict:
    """Ad a-1 of `portal`, as stored (version 1)."""
    response = put_ad(client, portal, "a-1", "priced")
    assert response.status_code == 201, response.json
    return own_ad(client, portal, "a-1")


def refused_put(client, portal, /, *traits, **overrides) -> dict:
    """PUT a bad ad and return the error envelope, checking nothing was stored."""
    response = put_ad(client, portal, "a-1", *traits, **overrides)
    body = assert_refused(response)
    assert_nothing_stored(client, portal)
    return body


def upsert(external_id: str, *traits, **overrides) -> dict:
    return {"external_id": external_id, "ad": ad_payload(*traits, **overrides)}


def post_batch(client, portal, items, **extra):
    return client.post("/v1/ads/batch", json={"items": items, **extra}, headers=portal.headers)


def rejected_result(response, index: int, field: str) -> dict:
    """The batch answered 200 and item `index` was rejected with errors naming `field`."""
    assert response.status_code == 200, response.json
    result = response.json["results"][index]
    assert result["status"] == "rejected", result
    assert result["index"] == index
    assert lookup(result["errors"], field), result
    return result


def own_portal(client, portal) -> dict:
    response = client.get("/v1/portals/me", headers=portal.headers)
    assert response.status_code == 200, response.json
    return response.json


# --- PUT /v1/ads/{external_id}: the ad's fields --------------------------------------------


@pytest.mark.parametrize("name", ["kind", "title", "body", "category", "member"])
def test_put_refuses_ad_missing_a_required_field(client, portal, name):
    response = put_ad(client, portal, **{name: ...})
    body = assert_refused(response, field=name, error="validation_error")
    assert "Missing data" in lookup(body["errors"]["json"], name)[0]
    assert_nothing_stored(client, portal)


WRONG_TYPES = [
    pytest.param("kind", 1, "kind", id="kind-number"),
    pytest.param("kind", None, "kind", id="kind-null"),
    pytest.param("title", 123, "title", id="title-number"),
    pytest.param("title", ["Bike"], "title", id="title-list"),
    pytest.param("title", {"en": "Bike"}, "title", id="title-object"),
    pytest.param("title", None, "title", id="title-null"),
    pytest.param("body", 42, "body", id="body-number"),
    pytest.param("body", None, "body", id="body-null"),
    pytest.param("category", 7, "category", id="category-number"),
    pytest.param("tags", "bikes", "tags", id="tags-string"),
    pytest.param("tags", None, "tags", id="tags-null"),
    pytest.param("tags", [1], "tags.0", id="tag-number"),
    pytest.param("location", "50.85,4.35", "location", id="location-string"),
    pytest.param("location", [50.85, 4.35], "location", id="location-list"),
    pytest.param("location", {"lat": "50.85", "lon": 4.35}, "location.lat", id="lat-string"),
    pytest.param("location", {"lat": 50.85, "lon": "4.35"}, "location.lon", id="lon-string"),
    pytest.param("location", {"lat": True, "lon": 4.35}, "location.lat", id="lat-bool"),
    pytest.param("location", {"lat": 50.85, "lon": False}, "location.lon", id="lon-bool"),
    pytest.param("location", {"lat": None, "lon": 4.35}, "location.lat", id="lat-null"),
    pytest.param("location", {"lat": [50.85], "lon": 4.35}, "location.lat", id="lat-list"),
    pytest.param("location", {"lon": 4.35}, "location.lat", id="lat-missing"),
    pytest.param("location", {"lat": 50.85}, "location.lon", id="lon-missing"),
    pytest.param("privacy", 1, "privacy", id="privacy-number"),
    pytest.param("privacy", None, "privacy", id="privacy-null"),
    pytest.param("visibility", True, "visibility", id="visibility-bool"),
    pytest.param("currencies", "EUR", "currencies", id="currencies-string"),
    pytest.param("currencies", {"EUR": True}, "currencies", id="currencies-object"),
    pytest.param("currencies", [978], "currencies.0", id="currency-number"),
    pytest.param("price", "12.50 EUR", "price", id="price-string"),
    pytest.param("price", ["12.50", "EUR", "hour"], "price", id="price-list"),
    pytest.param(
        "price",
        {"amount": True, "currency": "EUR", "unit": "hour"},
        "price.amount",
        id="amount-bool",
    ),
    pytest.param(
        "price",
        {"amount": [1], "currency": "EUR", "unit": "hour"},
        "price.amount",
        id="amount-list",
    ),
    pytest.param(
        "price",
        {"amount": "1", "currency": 978, "unit": "hour"},
        "price.currency",
        id="price-currency-number",
    ),
    pytest.param("language", 5, "language", id="language-number"),
    pytest.param("images", "https://example.org/a.png", "images", id="images-string"),
    pytest.param("images", None, "images", id="images-null"),
    pytest.param("images", [5], "images.0", id="image-number"),
    pytest.param("expires_at", 1893456000, "expires_at", id="expires-at-number"),
    pytest.param("expires_at", True, "expires_at", id="expires-at-bool"),
    pytest.param("member", 1001, "member", id="member-number"),
    pytest.param("member", None, "member", id="member-null"),
    pytest.param("ledger_account", 42, "ledger_account", id="ledger-account-number"),
    # A JSON boolean only: no coercion of 1, "yes" or "true".
    pytest.param("accepts_contact", "yes", "accepts_contact", id="accepts-contact-yes"),
    pytest.param("accepts_contact", "true", "accepts_contact", id="accepts-contact-true-string"),
    pytest.param("accepts_contact", "false", "accepts_contact", id="accepts-contact-false-string"),
    pytest.param("accepts_contact", 1, "accepts_contact", id="accepts-contact-one"),
    pytest.param("accepts_contact", 0, "accepts_contact", id="accepts-contact-zero"),
    pytest.param("accepts_contact", 0.0, "accepts_contact", id="accepts-contact-float"),
    pytest.param("accepts_contact", None, "accepts_contact", id="accepts-contact-null"),
    pytest.param("accepts_contact", [True], "accepts_contact", id="accepts-contact-list"),
    pytest.param("accepts_contact", {}, "accepts_contact", id="accepts-contact-object"),
]


@pytest.mark.parametrize(("name", "value", "field"), WRONG_TYPES)
def test_put_refuses_field_of_wrong_type(client, portal, name, value, field):
    response = put_ad(client, portal, **{name: value})
    assert_refused(response, field=field, error="validation_error")
    assert_nothing_stored(client, portal)


@pytest.mark.parametrize(
    ("location", "field"),
    [
        pytest.param({"lat": -90.01, "lon": 4.35}, "location.lat", id="lat-below-minus-90"),
        pytest.param({"lat": 90.01, "lon": 4.35}, "location.lat", id="lat-above-90"),
        pytest.param({"lat": 50.85, "lon": -180.01}, "location.lon", id="lon-below-minus-180"),
        pytest.param({"lat": 50.85, "lon": 180.01}, "location.lon", id="lon-above-180"),
        pytest.param({"lat": 1e300, "lon": 4.35}, "location.lat", id="lat-huge"),
        pytest.param({"lat": "NaN", "lon": 4.35}, "location.lat", id="lat-nan-string"),
        pytest.param({"lat": 50.85, "lon": "NaN"}, "location.lon", id="lon-nan-string"),
        pytest.param({"lat": "Infinity", "lon": 4.35}, "location.lat", id="lat-infinity-string"),
    ],
)
def test_put_refuses_coordinates_out_of_range(client, portal, location, field):
    response = put_ad(client, portal, location=location)
    assert_refused(response, field=field)
    assert_nothing_stored(client, portal)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_put_refuses_non_finite_number_literal_as_malformed_json(client, portal, literal):
    text = json.dumps(ad_payload(location={"lat": 0, "lon": 4.35})).replace(
        '"lat": 0', f'"lat": {literal}'
    )
    assert literal in text
    response = client.put(
        "/v1/ads/a-1", data=text, content_type="application/json", headers=portal.headers
    )
    assert_refused(response, field="_schema", error="malformed_json")
    assert_nothing_stored(client, portal)


def test_put_refuses_location_with_unknown_key(client, portal):
    refused = refused_put(client, portal, location={"lat": 50.85, "lon": 4.35, "alt": 12})
    assert lookup(refused["errors"]["json"], "location.alt")


@pytest.mark.parametrize(
    "title",
    ["", " ", "   \u00a0 ", "\u200b", "\ufeff \u200d\u2060", "\u3164\u3164", "\u2800", "\u200e "],
    ids=[
        "empty", "space", "blank", "zero-width-space", "joiners-and-bom", "hangul-filler",
        "braille-blank", "direction-mark",
    ],
)  # fmt: skip
def test_put_refuses_empty_or_blank_title(client, portal, title):
    """Blank also when made of characters that show as nothing: an ad whose title lists
    as empty."""
    refused = refused_put(client, portal, title=title)
    assert lookup(refused["errors"]["json"], "title")


@pytest.mark.parametrize(
    "title",
    ["\U0001f469\u200d\U0001f527 Plumber", "\u200bBike repairs", "\u05e9\u05dc\u05d5\u05dd\u200f"],
    ids=["emoji-with-joiner", "leading-zero-width", "hebrew-with-mark"],
)  # fmt: skip
def test_a_title_with_some_invisible_characters_among_visible_ones_is_taken(client, portal, title):
    response = client.put("/v1/ads/a-1", json=ad_payload(title=title), headers=portal.headers)
    assert response.status_code == 201, response.json
    assert response.json["title"] == title


def test_put_refuses_title_over_200_characters(client, portal):
    refused = refused_put(client, portal, title="x" * 201)
    assert lookup(refused["errors"]["json"], "title")


@pytest.mark.parametrize(
    "title",
    [
        pytest.param("Bike\nrepairs", id="newline"),
        pytest.param("Bike\rrepairs", id="carriage-return"),
        pytest.param("Bike\r\nrepairs", id="crlf"),
        pytest.param("Bike\trepairs", id="tab"),
        pytest.param("Bike\u2028repairs", id="line-separator"),
        pytest.param("Bike\u2029repairs", id="paragraph-separator"),
    ],
)
def test_put_refuses_title_with_line_break(client, portal, title):
    refused = refused_put(client, portal, title=title)
    assert "single line" in lookup(refused["errors"]["json"], "title")[0]


@pytest.mark.parametrize(
    "title",
    [
        pytest.param("Bike\u0000repairs", id="nul"),
        pytest.param("Bike\u0007repairs", id="bell"),
        pytest.param("\u001b[31mBike", id="escape"),
        pytest.param("Bike\u007f", id="delete"),
        pytest.param("Bike\u000brepairs", id="vertical-tab"),
        pytest.param("Bike\u0085repairs", id="c1-next-line"),
        pytest.param("\u009b31mBike", id="c1-csi"),
    ],
)
def test_put_refuses_title_with_control_characters(client, portal, title):
    refused = refused_put(client, portal, title=title)
    assert "control characters" in lookup(refused["errors"]["json"], "title")[0]


def test_put_refuses_body_over_8000_characters(client, portal):
    refused = refused_put(client, portal, body="x" * 8001)
    assert lookup(refused["errors"]["json"], "body")


@pytest.mark.parametrize(
    "body",
    ["Fixes\u0000bikes", "Fixes\u001bbikes", "Fixes\u000cbikes"],
    ids=["nul", "escape", "form-feed"],
)
def test_put_refuses_body_with_control_characters(client, portal, body):
    refused = refused_put(client, portal, body=body)
    assert "control characters" in lookup(refused["errors"]["json"], "body")[0]


def test_put_refuses_more_than_20_tags(client, portal):
    refused = refused_put(client, portal, tags=[f"tag-{i}" for i in range(21)])
    assert lookup(refused["errors"]["json"], "tags")


def test_put_refuses_tag_over_40_characters(client, portal):
    refused = refused_put(client, portal, tags=["bikes", "x" * 41])
    assert lookup(refused["errors"]["json"], "tags.1")


@pytest.mark.parametrize(
    "tags", [["bikes", "bikes"], ["Bikes", "bikes"]], ids=["same", "differ-by-case"]
)
def test_put_refuses_duplicate_tags(client, portal, tags):
    refused = refused_put(client, portal, tags=tags)
    assert "repeat" in lookup(refused["errors"]["json"], "tags")[0]


@pytest.mark.parametrize(
    "tag", ["", "   ", "two\nlines", "nul\u0000"], ids=["empty", "blank", "newline", "nul"]
)
def test_put_refuses_empty_blank_or_control_character_tag(client, portal, tag):
    refused = refused_put(client, portal, tags=["bikes", tag])
    assert lookup(refused["errors"]["json"], "tags.1")


@pytest.mark.parametrize(
    ("tag", "problem"),
    [
        ("bikes,tools", "comma"),
        (" bikes", "space"),
        ("bikes\u00a0", "space"),
    ],
    ids=["comma", "leading-space", "trailing-no-break-space"],
)
def test_put_refuses_a_tag_a_search_could_not_ask_for(client, portal, tag, problem):
    """tags= in a search separates tags with commas and trims each: such a tag would be
    found by no search for it."""
    refused = refused_put(client, portal, tags=["bikes", tag])
    (message,) = lookup(refused["errors"]["json"], "tags.1")
    assert problem in message


def test_an_ads_tags_are_found_by_a_search_for_each_as_written(client, portal):
    tags = ["vélo", "Bike repair", "2-wheels"]
    created = client.put("/v1/ads/a-1", json=ad_payload(tags=tags), headers=portal.headers)
    assert created.status_code == 201, created.json
    for tag in tags:
        found = client.get("/v1/search", query_string={"tags": tag})
        assert [hit["id"] for hit in found.json["hits"]] == [created.json["id"]], tag


def test_put_refuses_empty_currency_list(client, portal):
    refused = refused_put(client, portal, currencies=[])
    assert lookup(refused["errors"]["json"], "currencies")


def test_put_refuses_more_than_20_currencies(client, portal):
    codes = ["EUR", "USD", "GBP", "CHF", "JPY", "CAD", "AUD", "NZD", "SEK", "NOK", "DKK"]
    codes += ["PLN", "CZK", "HUF", "RON", "BGN", "ISK", "TRY", "BRL", "MXN", "ARS"]
    assert len(codes) == 21
    refused = refused_put(client, portal, currencies=codes)
    assert lookup(refused["errors"]["json"], "currencies")


@pytest.mark.parametrize(
    "currencies", [["EUR", "EUR"], ["HOUR", "EUR", "HOUR"]], ids=["pair", "among-others"]
)
def test_put_refuses_duplicate_currencies(client, portal, currencies):
    refused = refused_put(client, portal, currencies=currencies)
    assert "repeat" in lookup(refused["errors"]["json"], "currencies")[0]


@pytest.mark.parametrize(
    "code",
    ["ZZZ", "eur", "XAU", "EURO", "other-portal:TALENT", ""],
    ids=[
        "not-iso",
        "lowercase",
        "precious-metal",
        "four-letters",
        "unregistered-community",
        "empty",
    ],
)
def test_put_refuses_unknown_currency_naming_allowed_values(client, portal, code):
    response = put_ad(client, portal, currencies=["HOUR", code])
    body = assert_refused(response, field="currencies")
    if code and code != "eur":  # "eur" and "" are refused by their shape, before the registry
        assert body["error"] == "unknown_currency"
        assert code in body["message"]
        assert "HOUR" in body["message"]
        assert "ISO 4217" in body["message"]
    assert_nothing_stored(client, portal)


def test_put_without_currencies_is_refused_when_portal_has_no_defaults(client, make_portal):
    portal = make_portal(default_currencies=())
    response = put_ad(client, portal, currencies=...)
    assert_refused(response, field="currencies")
    assert_nothing_stored(client, portal)


@pytest.mark.parametrize(
    "amount",
    [
        "-1",
        "-0.01",
        -5,
        "1.23456",
        "0.00001",
        "NaN",
        "Infinity",
        "-Infinity",
        "10000000000",
        "abc",
        "",
        "1,50",
        "1e400",
        # Python's \d and Decimal() take any script's digits; the spec's pattern does not.
        pytest.param("\u0661\u0662.\u0665\u0660", id="arabic-indic-digits"),
        pytest.param("\uff11\uff12", id="fullwidth-digits"),
        pytest.param("\u06f1\u06f2", id="persian-digits"),
    ],
)
def test_put_refuses_price_with_bad_amount(client, portal, amount):
    price = {"amount": amount, "currency": "EUR", "unit": "hour"}
    refused = refused_put(client, portal, price=price)
    assert lookup(refused["errors"]["json"], "price.amount")


@pytest.mark.parametrize("part", ["amount", "currency", "unit"])
def test_put_refuses_price_missing_a_part(client, portal, part):
    price = {"amount": "12.50", "currency": "EUR", "unit": "hour"}
    del price[part]
    refused = refused_put(client, portal, price=price)
    assert lookup(refused["errors"]["json"], f"price.{part}")


def test_put_refuses_price_with_unknown_field(client, portal):
    price = {"amount": "12.50", "currency": "EUR", "unit": "hour", "vat": "21"}
    refused = refused_put(client, portal, price=price)
    assert lookup(refused["errors"]["json"], "price.vat")


@pytest.mark.parametrize(
    ("currencies", "price_currency"),
    [
        pytest.param(["EUR"], "HOUR", id="known-but-not-accepted"),
        pytest.param(["EUR", "HOUR"], "GBP", id="national-not-accepted"),
        pytest.param(["EUR"], "ZZZ", id="unknown-code"),
        pytest.param(..., "USD", id="not-among-portal-defaults"),
    ],
)
def test_put_refuses_price_currency_not_among_accepted(client, portal, currencies, price_currency):
    price = {"amount": "12.50", "currency": price_currency, "unit": "hour"}
    refused = refused_put(client, portal, currencies=currencies, price=price)
    assert price_currency in lookup(refused["errors"]["json"], "price.currency")[0]


@pytest.mark.parametrize("unit", ["fortnight", "HOUR", "", "hours"])
def test_put_refuses_price_with_unknown_unit(client, portal, unit):
    price = {"amount": "12.50", "currency": "EUR", "unit": unit}
    refused = refused_put(client, portal, price=price)
    assert lookup(refused["errors"]["json"], "price.unit")


@pytest.mark.parametrize(
    "language",
    [
        "english",
        "e",
        "en_US",
        "en-",
        "123",
        "",
        "en us",
        "en-toolongsubtag",
        pytest.param("en\n", id="trailing-newline"),
    ],
)
def test_put_refuses_language_that_is_not_bcp47(client, portal, language):
    refused = refused_put(client, portal, language=language)
    assert lookup(refused["errors"]["json"], "language")


@pytest.mark.parametrize("language", ["EN", "Fr-ca", "PT-BR"])
def test_put_takes_a_language_tag_in_any_case_and_keeps_it_as_sent(client, portal, language):
    # BCP 47 tags are case-insensitive; search compares them in lower case.
    assert put_ad(client, portal, language=language).status_code == 201
    assert own_ad(client, portal)["language"] == language


def test_put_refuses_more_than_10_images(client, portal):
    images = [f"https://example.org/{i}.png" for i in range(11)]
    refused = refused_put(client, portal, images=images)
    assert lookup(refused["errors"]["json"], "images")


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "ftp://example.org/a.png",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "//example.org/a.png",
        "data:image/png;base64,AAAA",
        "example.org/a.png",
        "",
        "https://example.org:99999/a.png",  # a port that cannot exist
        "https://example.org:0/a.png",
        "https://example.org:-1/a.png",
    ],
)
def test_put_refuses_image_that_is_not_an_http_url(client, portal, url):
    refused = refused_put(client, portal, images=["https://example.org/ok.png", url])
    assert lookup(refused["errors"]["json"], "images.1")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://user:secret@example.org/a.png", "user name or password"),
        ("https://anna@example.org/a.png", "user name or password"),
        ("http://localhost/a.png", "localhost"),
        ("http://cam.localhost./a.png", "localhost"),
        ("http://127.0.0.1:8080/a.png", "loopback"),
        ("http://[::1]/a.png", "loopback"),
        ("http://192.168.1.1/apply.cgi?reboot=1", "private"),
        ("http://10.0.0.7/a.png", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::ffff:192.168.0.1]/a.png", "private"),
        ("http://100.64.0.1/a.png", "carrier-grade NAT"),
        ("http://0.0.0.0/a.png", "unspecified"),
    ],
)
def test_put_refuses_an_image_that_apps_must_not_load(client, portal, url, problem):
    """Each app showing the ad loads its images on its users' devices: a link to their
    own networks is a request there from each viewer, and credentials would be published."""
    refused = refused_put(client, portal, images=["https://example.org/ok.png", url])
    messages = lookup(refused["errors"]["json"], "images.1")
    (ours,) = [m for m in messages if m.startswith("Must be a link others may load: it must not ")]
    assert problem in ours
    assert "secret" not in str(refused)


def test_put_takes_image_links_to_public_hosts_and_addresses(client, portal):
    images = [
        "https://cdn.example.org/a.png",
        "http://93.184.216.34/b.png",
        "https://[2606:2800:220:1:248:1893:25c8:1946]/c.png",
        "https://xn--vlo-9la.example/d.png",
    ]
    assert put_ad(client, portal, images=images).status_code == 201
    assert own_ad(client, portal)["images"] == images


def test_put_takes_image_urls_with_a_port(client, portal):
    images = ["https://example.org:8443/a.png", "http://example.org:65535/b.png"]
    assert put_ad(client, portal, images=images).status_code == 201
    assert own_ad(client, portal)["images"] == images


def test_put_refuses_image_url_over_2048_characters(client, portal):
    url = "https://example.org/" + "a" * 2040 + ".png"
    refused = refused_put(client, portal, images=[url])
    assert lookup(refused["errors"]["json"], "images.0")


@pytest.mark.parametrize(
    "expires_at", ["2030-01-01T00:00:00", "2030-01-01T12:30", "2030-01-01"], ids=str
)
def test_put_refuses_expires_at_without_timezone(client, portal, expires_at):
    refused = refused_put(client, portal, expires_at=expires_at)
    assert lookup(refused["errors"]["json"], "expires_at")


@pytest.mark.parametrize(
    "expires_at",
    ["tomorrow", "", "2030-02-30T00:00:00+00:00", "2030-01-01T25:00:00Z", "+10000-01-01T00:00:00Z"],
    ids=["word", "empty", "february-30", "hour-25", "year-10000"],
)
def test_put_refuses_expires_at_that_is_not_a_datetime(client, portal, expires_at):
    refused = refused_put(client, portal, expires_at=expires_at)
    assert lookup(refused["errors"]["json"], "expires_at")


@pytest.mark.parametrize("days", [-1, -0.0001, -3650], ids=["yesterday", "just-now", "years-ago"])
def test_put_refuses_expires_at_in_the_past(client, portal, days):
    refused = refused_put(client, portal, expires_at=in_days(days))
    assert "future" in lookup(refused["errors"]["json"], "expires_at")[0]


@pytest.mark.parametrize("days", [367, 3650], ids=["a-year-and-a-day", "ten-years"])
def test_put_refuses_expires_at_more_than_a_year_ahead(client, portal, days):
    refused = refused_put(client, portal, expires_at=in_days(days))
    assert "at most" in lookup(refused["errors"]["json"], "expires_at")[0]


@pytest.mark.parametrize(
    "member", ["alice@example.org", "mailto:alice@example.org", "Alice <alice@example.org>"]
)
def test_put_refuses_member_that_is_an_email(client, portal, member):
    refused = refused_put(client, portal, member=member)
    assert "email" in lookup(refused["errors"]["json"], "member")[0]


@pytest.mark.parametrize(
    "member",
    [
        "+33 6 12 34 56 78",
        "06-12-34-56-78",
        "0612345678",
        "+33612345678",
        "(555) 123-4567",
        "06.12.34.56.78",
    ],
)
def test_put_refuses_member_that_is_a_phone_number(client, portal, member):
    refused = refused_put(client, portal, member=member)
    assert "phone" in lookup(refused["errors"]["json"], "member")[0]


@pytest.mark.parametrize(
    "member",
    [
        pytest.param("alice smith", id="inner-space"),
        pytest.param(" m-1001", id="leading-space"),
        pytest.param("m-1001 ", id="trailing-space"),
        pytest.param("", id="empty"),
        pytest.param("x" * 65, id="65-chars"),
        pytest.param("m/1001", id="slash"),
        pytest.param("m\u00e9", id="accent"),
        pytest.param("m\u00001", id="nul"),
        pytest.param("m-1001\n", id="trailing-newline"),
    ],
)
def test_put_refuses_member_that_is_not_an_opaque_handle(client, portal, member):
    refused = refused_put(client, portal, member=member)
    assert lookup(refused["errors"]["json"], "member")


@pytest.mark.parametrize(
    "account",
    [
        pytest.param("acc ount", id="space"),
        pytest.param("acc#1", id="hash"),
        pytest.param("", id="empty"),
        pytest.param("a" * 129, id="129-chars"),
        pytest.param("acc\n1", id="newline"),
        pytest.param("acc\u00001", id="nul"),
        pytest.param("caf\u00e9", id="accent"),
        pytest.param("acc-1\n", id="trailing-newline"),
        pytest.param("anna.smith@gmail.com", id="email-address"),
        pytest.param("lyon/Anna@Example.ORG", id="email-address-in-a-path"),
    ],
)
def test_put_refuses_ledger_account_with_invalid_characters(client, portal, account):
    refused = refused_put(client, portal, ledger_account=account)
    assert lookup(refused["errors"]["json"], "ledger_account")


@pytest.mark.parametrize("account", ["anna@lyon", "lyon/anna", "node:anna.smith", "a@b.c"])
def test_put_takes_ledger_accounts_that_are_not_email_addresses(client, portal, account):
    assert put_ad(client, portal, ledger_account=account).status_code == 201


@pytest.mark.parametrize(
    "name", ["colour", "id", "external_id", "portal", "version", "etag", "Title"]
)
def test_put_refuses_unknown_field(client, portal, name):
    refused = refused_put(client, portal, **{name: "x"})
    assert lookup(refused["errors"]["json"], name) == ["Unknown field."]


@pytest.mark.parametrize(
    "category", ["magic", "FOOD", "food.", "food.unknown", "food.produce.apples"]
)
def test_put_refuses_unknown_category_naming_allowed_groups(client, portal, category):
    response = put_ad(client, portal, category=category)
    body = assert_refused(response, field="category", error="unknown_category")
    for group in ("food", "household", "garden"):
        assert group in body["message"]
    assert_nothing_stored(client, portal)


@pytest.mark.parametrize("privacy", ["exact", "approximate", "area"])
@pytest.mark.parametrize("location", [..., None], ids=["absent", "null"])
def test_put_refuses_missing_location_unless_hidden(client, portal, privacy, location):
    refused = refused_put(client, portal, privacy=privacy, location=location)
    assert "hidden" in lookup(refused["errors"]["json"], "location")[0]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("kind", "service"),
        ("kind", "Offer"),
        ("kind", ""),
        ("privacy", "public"),
        ("privacy", "EXACT"),
        ("privacy", "none"),
        ("visibility", "private"),
        ("visibility", "hidden"),
        ("visibility", "Public"),
    ],
)
def test_put_refuses_unknown_enum_value(client, portal, name, value):
    refused = refused_put(client, portal, **{name: value})
    assert lookup(refused["errors"]["json"], name)


@pytest.mark.parametrize(
    "external_id",
    [
        pytest.param("has%20space", id="space"),
        pytest.param("a" * 129, id="129-chars"),
        pytest.param("caf%C3%A9", id="accent"),
        pytest.param("a+b", id="plus"),
        pytest.param("a'b", id="quote"),
        pytest.param("%3Cscript%3E", id="angle-brackets"),
        pytest.param("a%00b", id="nul"),
        pytest.param("a-1%0A", id="trailing-newline"),
    ],
)
def test_put_refuses_invalid_external_id_in_path(client, portal, external_id):
    response = client.put(f"/v1/ads/{external_id}", json=ad_payload(), headers=portal.headers)
    assert_refused(response, field="ad_ref", location="path")
    assert_nothing_stored(client, portal)


# --- NUL characters, which PostgreSQL text cannot hold ----------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"currencies": ["EUR\u0000"]}, "currencies", id="currency"),
        pytest.param(
            {"price": {"amount": "1", "currency": "EUR\u0000", "unit": "hour"}},
            "price.currency",
            id="price-currency",
        ),
        pytest.param({"images": ["https://example.org/a\u0000.png"]}, "images.0", id="image"),
    ],
)
def test_put_refuses_nul_character_in_a_code_or_url(client, portal, overrides, field):
    refused = refused_put(client, portal, **overrides)
    assert lookup(refused["errors"]["json"], field)


def test_batch_rejects_item_with_nul_character_and_applies_the_others(client, portal):
    items = [upsert("a-1"), upsert("a-2", currencies=["EUR\u0000"])]
    response = client.post("/v1/ads/batch", json={"items": items}, headers=portal.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert [result["status"] for result in response.json["results"]] == ["created", "rejected"]
    assert [ad["external_id"] for ad in own_ads(client, portal)] == ["a-1"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"default_currencies": ["EUR\u0000"]}, "default_currencies", id="default"),
        pytest.param({"website": "https://example.org/\u0000"}, "website", id="website"),
        pytest.param({"webhook_url": "https://example.org/\u0000"}, "webhook_url", id="webhook"),
    ],
)
def test_patch_portal_refuses_nul_character(client, portal, changes, field):
    before = own_portal(client, portal)
    response = client.patch("/v1/portals/me", json=changes, headers=portal.headers)
    assert_refused(response, field=field)
    assert own_portal(client, portal) == before


def test_currency_list_refuses_nul_character_in_portal_parameter(client):
    assert_refused(client.get("/v1/currencies?portal=a%00b"), field="portal", location="query")


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_currency_code_with_nul_character_is_not_found(client, portal, method):
    body = {"name": "x"} if method == "PATCH" else None
    response = client.open("/v1/currencies/a%00b", method=method, json=body, headers=portal.headers)
    assert_refused(response, 404, error="not_found")


# --- PUT over an existing ad: the previous version stays as it was ---------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"title": "x" * 201}, id="title-too-long"),
        pytest.param({"title": "Bike\u0000"}, id="title-nul"),
        pytest.param({"location": {"lat": 91, "lon": 0}}, id="lat-out-of-range"),
        pytest.param({"currencies": ["EUR", "ZZZ"]}, id="unknown-currency"),
        pytest.param({"currencies": ["HOUR"]}, id="price-currency-no-longer-accepted"),
        pytest.param({"category": "magic"}, id="unknown-category"),
        pytest.param({"expires_at": in_days(-1)}, id="expired-in-the-past"),
        pytest.param({"location": None}, id="location-removed"),
        pytest.param({"member": "alice@example.org"}, id="member-email"),
        pytest.param({"accepts_contact": "no"}, id="accepts-contact-string"),
        pytest.param({"colour": "red"}, id="unknown-field"),
    ],
)
def test_refused_put_leaves_existing_ad_intact(client, portal, existing_ad, overrides):
    response = put_ad(client, portal, "a-1", "priced", **overrides)
    assert_refused(response)
    assert own_ad(client, portal, "a-1") == existing_ad


def test_put_with_stale_if_match_is_refused_with_412_and_changes_nothing(
    client, portal, existing_ad
):
    response = put_ad(
        client, portal, "a-1", "priced", title="Changed", headers={"If-Match": '"000000000000-1"'}
    )
    assert_refused(response, 412, field="If-Match", location="headers")
    assert own_ad(client, portal, "a-1") == existing_ad


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", None])
def test_a_delete_with_a_body_of_any_type_is_refused_and_deletes_nothing(
    client, portal, content_type
):
    # {"If-Match": ...} in a body is no condition: the ad would go all the same.
    put_ad(client, portal, "a-1")
    response = client.delete(
        "/v1/ads/a-1",
        data=b'{"If-Match": "\\"000000000000-1\\""}',
        content_type=content_type,
        headers=portal.headers,
    )
    assert_refused(response, field="_schema", error="body_not_taken")
    assert own_ad(client, portal)["external_id"] == "a-1"


MALFORMED_ENTITY_TAGS = [
    pytest.param("000000000000-1", id="unquoted"),
    pytest.param('"x", *', id="star-in-a-list"),
    pytest.param("W/*", id="weak-star"),
    pytest.param('"x" "y"', id="no-comma"),
    pytest.param('"x', id="unterminated"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("header", ["If-Match", "If-None-Match"])
@pytest.mark.parametrize("value", MALFORMED_ENTITY_TAGS)
def test_a_malformed_condition_is_refused_naming_the_header_and_changes_nothing(
    client, portal, existing_ad, header, value
):
    # Read as matching nothing, If-None-Match would let through what it meant to stop.
    put = put_ad(client, portal, "a-1", title="Changed", headers={header: value})
    assert_refused(put, field=header, location="headers")
    delete = client.delete("/v1/ads/a-1", headers={**portal.headers, header: value})
    assert_refused(delete, field=header, location="headers")
    expire = client.post("/v1/ads/a-1/expire", headers={**portal.headers, header: value})
    assert_refused(expire, field=header, location="headers")
    assert own_ad(client, portal, "a-1") == existing_ad


@pytest.mark.parametrize("value", MALFORMED_ENTITY_TAGS)
def test_a_malformed_if_none_match_on_a_read_is_refused_naming_it(
    client, portal, existing_ad, value
):
    response = client.get(
        "/v1/portals/me/ads/a-1", headers={**portal.headers, "If-None-Match": value}
    )
    assert_refused(response, field="If-None-Match", location="headers")


@pytest.mark.parametrize(
    "header",
    [
        ("If-Match", '"stale-1"'),
        ("If-None-Match", "*"),
        ("If-Unmodified-Since", "Sun, 06 Nov 1994 08:49:37 GMT"),
    ],
    ids=["if-match", "if-none-match", "if-unmodified-since"],
)
def test_a_change_with_a_condition_the_operation_does_not_check_is_refused(
    client, portal, existing_ad, header
):
    name, value = header
    headers = {**portal.headers, name: value}
    profile = client.get("/v1/portals/me", headers=portal.headers).json
    patched = client.patch("/v1/portals/me", json={"name": "Renamed"}, headers=headers)
    assert_refused(patched, field=name, location="headers", error="precondition_not_supported")
    assert client.get("/v1/portals/me", headers=portal.headers).json == profile
    batch = client.post(
        "/v1/ads/batch", json={"items": [upsert("a-1", title="Changed")]}, headers=headers
    )
    assert_refused(batch, field=name, location="headers", error="precondition_not_supported")
    if name == "If-Unmodified-Since":  # not even the ads' own operations take it
        put = put_ad(client, portal, "a-1", title="Changed", headers={name: value})
        assert_refused(put, field=name, location="headers", error="precondition_not_supported")
    assert own_ad(client, portal, "a-1") == existing_ad


def test_put_with_if_match_on_missing_ad_names_the_if_match_header(client, portal):
    response = put_ad(client, portal, "a-1", headers={"If-Match": '"000000000000-1"'})
    assert_refused(response, 412, field="If-Match", location="headers")
    assert_nothing_stored(client, portal)


# --- bodies that are not an ad at all ------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ['{"kind": "offer"', "{'kind': 'offer'}", '{"kind": "offer",}', "kind=offer", "   ", "{}{}"],
    ids=["truncated", "single-quotes", "trailing-comma", "form-like", "whitespace", "two-objects"],
)
def test_put_refuses_malformed_json(client, portal, text):
    response = client.put(
        "/v1/ads/a-1", data=text, content_type="application/json", headers=portal.headers
    )
    assert_refused(response, field="_schema", error="malformed_json")
    assert_nothing_stored(client, portal)


def test_put_refuses_body_that_is_not_utf8(client, portal):
    data = json.dumps(ad_payload()).encode().replace(b"Bicycle", b"Bicycl\xff")
    response = client.put(
        "/v1/ads/a-1", data=data, content_type="application/json", headers=portal.headers
    )
    assert_refused(response, field="_schema", error="malformed_json")
    assert_nothing_stored(client, portal)


def test_put_refuses_too_deeply_nested_json(client, portal):
    response = client.put(
        "/v1/ads/a-1",
        data="[" * 5000 + "]" * 5000,
        content_type="application/json",
        headers=portal.headers,
    )
    assert_refused(response, field="_schema", error="malformed_json")
    assert_nothing_stored(client, portal)


def test_put_refuses_json_nested_deeper_than_the_standard_parser_follows(client, portal):
    # orjson reads 1,000 levels; the check for repeated keys cannot, and says so.
    response = client.put(
        "/v1/ads/a-1",
        data='{"title": ' + "[" * 1000 + "]" * 1000 + "}",
        content_type="application/json",
        headers=portal.headers,
    )
    assert_refused(response, field="_schema", error="malformed_json")
    assert_nothing_stored(client, portal)


def with_repeated_key(document: dict, key_text: str, first_value, *, inside: str = "") -> str:
    """`document` as JSON text with the key written as `key_text` given first, with
    `first_value`, in the object under the key `inside` (the top level if empty)."""
    text = json.dumps(document)
    marker = f'"{inside}": {{' if inside else "{"
    assert marker in text
    return text.replace(marker, f"{marker}{key_text}: {json.dumps(first_value)}, ", 1)


@pytest.mark.parametrize(
    ("key_text", "first_value", "inside", "field"),
    [
        ('"title"', "Bike repair", "", "title"),
        ('"lat"', 0.0, "location", "location.lat"),
        # The same name once its escape is decoded.
        ('"\\u0074itle"', "Bike repair", "", "title"),
    ],
    ids=["top-level", "nested", "escaped"],
)
def test_put_refuses_a_key_given_twice_in_one_object(
    client, portal, key_text, first_value, inside, field
):
    text = with_repeated_key(ad_payload(), key_text, first_value, inside=inside)
    response = client.put(
        "/v1/ads/a-1", data=text, content_type="application/json", headers=portal.headers
    )
    body = assert_refused(response, field=field, error="repeated_key")
    assert repr(field) in body["message"], body
    assert_nothing_stored(client, portal)


def test_batch_refuses_a_key_given_twice_in_one_item_naming_where(client, portal):
    document = {"items": [upsert("a-1"), upsert("a-2", "priced")]}
    text = json.dumps(document).replace('"amount": "12.50"', '"amount": "125.0", "amount": "12.50"')
    assert text.count('"amount"') == 2
    response = client.post(
        "/v1/ads/batch", data=text, content_type="application/json", headers=portal.headers
    )
    assert_refused(response, field="items.1.ad.price.amount", error="repeated_key")
    assert_nothing_stored(client, portal)


def test_the_same_key_in_different_objects_is_not_a_repetition(client, portal):
    response = post_batch(client, portal, [upsert("a-1"), upsert("a-2")])
    assert response.status_code == 200, response.json
    assert [item["status"] for item in response.json["results"]] == ["created", "created"]


@pytest.mark.parametrize(
    "document",
    [[], [ad_payload()], "an ad", 42, None, True],
    ids=["empty-array", "array-of-ad", "string", "number", "null", "bool"],
)
def test_put_refuses_json_that_is_not_an_object(client, portal, document):
    response = client.put(
        "/v1/ads/a-1",
        data=json.dumps(document),
        content_type="application/json",
        headers=portal.headers,
    )
    assert_refused(response, field="_schema")
    assert_nothing_stored(client, portal)


@pytest.mark.parametrize("content_type", ["application/json", None], ids=["json", "untyped"])
def test_put_refuses_empty_body(client, portal, content_type):
    headers = dict(portal.headers)
    if content_type:
        headers["Content-Type"] = content_type
    response = client.put("/v1/ads/a-1", data=b"", headers=headers)
    body = assert_refused(response)
    assert body["errors"]["json"]
    assert_nothing_stored(client, portal)


def test_patch_portal_refuses_empty_body(client, portal):
    before = own_portal(client, portal)
    response = client.patch(
        "/v1/portals/me", data=b"", content_type="application/json", headers=portal.headers
    )
    assert_refused(response, field="_schema")
    assert own_portal(client, portal) == before


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
        "text/json",
        None,
    ],
    ids=["text", "form", "multipart", "xml", "text-json", "untyped"],
)
def test_put_refuses_body_that_is_not_declared_json_with_415(client, portal, content_type):
    headers = dict(portal.headers)
    if content_type:
        headers["Content-Type"] = content_type
    response = client.put("/v1/ads/a-1", data=json.dumps(ad_payload()), headers=headers)
    assert_refused(response, 415, field="Content-Type", location="headers")
    assert_nothing_stored(client, portal)


@pytest.mark.parametrize("charset", ["iso-8859-1", "latin1", "utf-16", "windows-1252"])
def test_put_refuses_json_declared_in_a_charset_other_than_utf8_with_415(client, portal, charset):
    # Read as UTF-8 anyway, "Ã©" sent in Latin-1 would be stored as "é".
    data = json.dumps(ad_payload(title="Ã©"), ensure_ascii=False).encode("utf-8")
    response = client.put(
        "/v1/ads/a-1",
        data=data,
        content_type=f"application/json; charset={charset}",
        headers=portal.headers,
    )
    body = assert_refused(
        response, 415, field="Content-Type", location="headers", error="unsupported_media_type"
    )
    assert charset in body["message"]
    assert_nothing_stored(client, portal)


@pytest.mark.parametrize("charset", ["utf-8", "UTF-8", "utf8", "us-ascii"])
def test_put_takes_json_declared_in_utf8_or_ascii(client, portal, charset):
    response = client.put(
        "/v1/ads/a-1",
        data=json.dumps(ad_payload()),
        content_type=f"application/json; charset={charset}",
        headers=portal.headers,
    )
    assert response.status_code == 201, response.json


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_put_refuses_a_compressed_body_with_415_naming_content_encoding(client, portal, encoding):
    response = client.put(
        "/v1/ads/a-1",
        data=gzip.compress(json.dumps(ad_payload()).encode()),
        content_type="application/json",
        headers={**portal.headers, "Content-Encoding": encoding},
    )
    assert_refused(response, 415, field="Content-Encoding", location="headers")
    assert_nothing_stored(client, portal)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("PATCH", "/v1/ads/a-1", 405), ("PUT", "/v1/nowhere", 404), ("POST", "/v1/ads/a-1/", 404)],
)
def test_a_request_no_route_takes_is_404_or_405_whatever_its_body(
    client, portal, method, path, status
):
    response = client.open(
        path, method=method, data="x", content_type="text/plain", headers=portal.headers
    )
    assert_refused(response, status)


def test_415_carries_error_code_unsupported_media_type(client, portal):
    response = client.put(
        "/v1/ads/a-1",
        data=json.dumps(ad_payload()),
        content_type="text/plain",
        headers=portal.headers,
    )
    assert_refused(response, 415, error="unsupported_media_type")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/ads/a-1/expire"),
        ("POST", "/v1/sync-sessions"),
        ("DELETE", "/v1/ads/a-1"),
        ("GET", "/v1/portals/me/ads/a-1"),
    ],
)
@pytest.mark.parametrize("body", [b'{"reason": "sold"}', b"[]", b'"now"', b"null"])
def test_an_operation_without_a_body_refuses_one_rather_than_ignore_it(
    client, portal, method, path, body
):
    put_ad(client, portal, "a-1")
    before = own_ad(client, portal)
    response = client.open(
        path, method=method, data=body, content_type="application/json", headers=portal.headers
    )
    assert_refused(response, field="_schema", error="body_not_taken")
    assert own_ad(client, portal) == before


@pytest.mark.parametrize("body", [b"", b"{}", b" {} \n"])
def test_an_operation_without_a_body_takes_an_empty_one(client, portal, body):
    put_ad(client, portal, "a-1")
    response = client.post(
        "/v1/ads/a-1/expire", data=body, content_type="application/json", headers=portal.headers
    )
    assert response.status_code == 200, response.json


def test_put_refuses_form_encoded_ad_with_415(client, portal):
    response = client.put(
        "/v1/ads/a-1", data={"kind": "offer", "title": "Bikes"}, headers=portal.headers
    )
    assert_refused(response, 415, field="Content-Type", location="headers")
    assert_nothing_stored(client, portal)


SMALL_LIMIT_BYTES = 1024


@pytest.fixture(scope="module")
def small_limit_client(migrated):
    """A second app on the same database, accepting bodies of at most 1 KiB."""
    app = create_app(replace(migrated, max_request_bytes=SMALL_LIMIT_BYTES))
    yield app.test_client()
    app.extensions["directory"].close()


def test_put_body_over_the_size_limit_is_refused_with_413(client, portal, small_limit_client):
    payload = ad_payload(body="x" * SMALL_LIMIT_BYTES)
    response = small_limit_client.put("/v1/ads/a-1", json=payload, headers=portal.headers)
    assert_refused(response, 413, error="request_too_large")
    assert_nothing_stored(client, portal)


def test_batch_body_over_the_size_limit_is_refused_with_413(client, portal, small_limit_client):
    items = [{"external_id": f"a-{i}", "ad": ad_payload()} for i in range(5)]
    response = small_limit_client.post(
        "/v1/ads/batch", json={"items": items}, headers=portal.headers
    )
    assert_refused(response, 413, error="request_too_large")
    assert_nothing_stored(client, portal)


def put_chunked(client, portal, data: bytes):
    """PUT a body as a server hands on a chunked one: no Content-Length, the stream
    ended by the server (wsgi.input_terminated)."""
    return client.put(
        "/v1/ads/a-1",
        input_stream=io.BytesIO(data),
        content_type="application/json",
        headers={**portal.headers, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_chunked_body_over_the_size_limit_is_refused_with_413(client, portal, small_limit_client):
    data = json.dumps(ad_payload(body="x" * SMALL_LIMIT_BYTES)).encode()
    response = put_chunked(small_limit_client, portal, data)
    assert_refused(response, 413, error="request_too_large")
    assert_nothing_stored(client, portal)


def test_chunked_body_within_the_size_limit_is_taken(client, portal, small_limit_client):
    data = json.dumps(ad_payload(body="")).encode()
    assert len(data) < SMALL_LIMIT_BYTES
    assert put_chunked(small_limit_client, portal, data).status_code == 201


def test_body_over_the_default_16_mib_limit_is_refused_with_413(client, portal):
    padding = "x" * (16 * 1024 * 1024)
    payload = {"items": [{"external_id": "a-1", "ad": ad_payload(body=padding)}]}
    response = client.post("/v1/ads/batch", json=payload, headers=portal.headers)
    assert_refused(response, 413, error="request_too_large")
    assert_nothing_stored(client, portal)


# --- the query string ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "name"),
    [
        ("GET", "/v1/feed?key=abc", "key"),
        ("GET", "/v1/feed?KEY=abc", "KEY"),
        ("GET", "/healthz?api_key=abc", "api_key"),
        ("GET", "/v1/portals/me/ads?access_token=abc", "access_token"),
        ("GET", "/v1/portals/me?token=abc", "token"),
        ("PUT", "/v1/ads/a-1?apikey=abc", "apikey"),
        ("POST", "/v1/ads/batch?auth=abc", "auth"),
        ("GET", "/v1/feed?since=cdir_abc", "since"),
        ("GET", "/v1/categories?q=cdir_", "q"),
    ],
)
def test_key_in_query_string_is_refused(client, portal, method, path, name):
    response = client.open(path, method=method, json=ad_payload(), headers=portal.headers)
    body = assert_refused(response, field=name, location="query", error="key_in_query")
    assert "Authorization" in body["message"]
    assert_nothing_stored(client, portal)


def test_real_key_in_query_string_is_refused_under_any_name(client, portal):
    response = client.put(
        f"/v1/ads/a-1?whatever={portal.key}", json=ad_payload(), headers=portal.headers
    )
    assert_refused(response, field="whatever", location="query", error="key_in_query")
    assert_nothing_stored(client, portal)


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("q=bike%20{key}", id="after-a-word"),
        pytest.param("q=%20{key}", id="after-a-space"),
        pytest.param("{key}", id="as-a-name"),
        pytest.param("{key}=1", id="as-a-name-with-a-value"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/search", "/v1/portals/me"])
def test_a_key_anywhere_in_the_query_string_is_refused_and_never_sent_back(
    client, portal, query, path
):
    response = client.get(f"{path}?{query.format(key=portal.key)}", headers=portal.headers)
    assert_refused(response, location="query", error="key_in_query")
    assert portal.key not in response.get_data(as_text=True)


def test_key_in_query_string_is_refused_even_without_authorization_header(client, portal):
    response = client.get(f"/v1/portals/me/ads?key={portal.key}")
    assert_refused(response, field="key", location="query", error="key_in_query")


@pytest.mark.parametrize(
    ("method", "path", "name"),
    [
        ("GET", "/v1/feed?sinse=f1.MC4w", "sinse"),
        ("GET", "/v1/feed?page=2", "page"),
        ("GET", "/v1/portals/me/ads?offset=10", "offset"),
        ("GET", "/v1/portals/me/ads?include_deleted=true", "include_deleted"),
        ("GET", "/healthz?verbose=1", "verbose"),
        ("GET", "/readyz?deep=1", "deep"),
        ("GET", "/v1/portals/me?fields=name", "fields"),
        ("GET", "/v1/currencies?code=EUR", "code"),
        ("GET", "/v1/currencies/EUR?expand=1", "expand"),
        ("GET", "/v1/categories?lang=fr", "lang"),
        ("PUT", "/v1/ads/a-1?dry_run=1", "dry_run"),
        ("POST", "/v1/ads/batch?replace=true", "replace"),
    ],
)
def test_unknown_query_parameter_is_refused_naming_it(client, portal, method, path, name):
    body = {"items": [{"external_id": "a-1", "ad": ad_payload()}]} if "batch" in path else None
    body = body or ad_payload()
    if method in ("GET", "DELETE"):
        body = None  # they take none, and say so first
    response = client.open(path, method=method, json=body, headers=portal.headers)
    assert_refused(response, field=name, location="query")
    assert_nothing_stored(client, portal)


def test_repeated_query_parameter_is_refused(client):
    response = client.get("/v1/feed?limit=1&limit=2")
    assert_refused(response, field="limit", location="query")


# --- integers: taken as sent or refused, never read loosely --------------------------------

UNKNOWN_CONVERSATION = "/v1/conversations/00000000-0000-4000-8000-000000000000"

INTEGER_PARAMETERS = [
    pytest.param("/v1/search", "limit", id="search-limit"),
    pytest.param("/v1/feed", "limit", id="feed-limit"),
    pytest.param("/v1/portals/me/ads", "limit", id="own-ads-limit"),
    pytest.param("/v1/conversations", "limit", id="conversations-limit"),
    pytest.param(UNKNOWN_CONVERSATION, "after", id="conversation-after"),
    pytest.param(UNKNOWN_CONVERSATION, "limit", id="conversation-limit"),
    pytest.param("/v1/inbox", "limit", id="inbox-limit"),
]

# int() reads a sign, underscores, spaces and any script's digits: each of the first five is
# a number within every parameter's range, so only the reading can refuse it. int() refuses
# the last two already; they must stay refused.
NOT_ASCII_DIGITS = [
    "+5",
    "1_0",
    "\u0661\u0662",  # Arabic-Indic 12
    " 7",
    "7 ",
    "5.0",
    "1e1",
]


@pytest.mark.parametrize("value", NOT_ASCII_DIGITS, ids=repr)
@pytest.mark.parametrize(("path", "name"), INTEGER_PARAMETERS)
def test_integer_parameter_refuses_what_is_not_ascii_digits(client, portal, path, name, value):
    response = client.get(path, query_string={name: value}, headers=portal.headers)
    body = assert_refused(response, field=name, location="query")
    assert body["errors"]["query"][name] == ["Not a valid integer."]


# float() reads these too, as numbers within every range: 10, 45, 45, 45, 3, 1.
NOT_PLAIN_DECIMALS = ["1_0", "+45", " 45", "\uff14\uff15", "\u0663", "1.0 ", "nan", "inf"]


@pytest.mark.parametrize("value", NOT_PLAIN_DECIMALS, ids=repr)
@pytest.mark.parametrize("name", ["lat", "lon", "radius_km"])
def test_search_numbers_refuse_what_is_not_a_plain_decimal(client, name, value):
    query = {"lat": "45", "lon": "4", "radius_km": "10", name: value}
    response = client.get("/v1/search", query_string=query)
    body = assert_refused(response, field=name, location="query")
    assert body["errors"]["query"][name] == ["Not a valid number."]


@pytest.mark.parametrize("value", NOT_PLAIN_DECIMALS, ids=repr)
def test_search_bbox_refuses_what_is_not_plain_decimals(client, value):
    response = client.get("/v1/search", query_string={"bbox": f"{value},0,20,10"})
    assert_refused(response, field="bbox", location="query")


@pytest.mark.parametrize("value", ["45", "-45.5", ".5", "5.", "4.5e1", "45E-0", "0"])
def test_search_numbers_take_plain_decimals(client, value):
    response = client.get(
        "/v1/search",
        query_string={
            "lat": value,
            "lon": "4",
            "radius_km": value.lstrip("-") if value != "0" else "1",
        },
    )
    assert response.status_code == 200, response.json
    bbox = client.get("/v1/search", query_string={"bbox": f"-10,{value},10,50"})
    assert bbox.status_code == 200, bbox.json


@pytest.mark.parametrize("value", ["5", "05"])
@pytest.mark.parametrize(("path", "name"), INTEGER_PARAMETERS)
def test_integer_parameter_takes_ascii_digits(client, portal, path, name, value):
    response = client.get(path, query_string={name: value}, headers=portal.headers)
    if path == UNKNOWN_CONVERSATION:  # taken: the conversation is what is missing
        assert_refused(response, 404, error="conversation_not_found")
    else:
        assert response.status_code == 200, response.json


@pytest.mark.parametrize("value", ["-1", "9223372036854775808", "9" * 30], ids=repr)
@pytest.mark.parametrize(("path", "name"), INTEGER_PARAMETERS)
def test_integer_parameter_out_of_range_is_refused_with_the_range(
    client, portal, path, name, value
):
    response = client.get(path, query_string={name: value}, headers=portal.headers)
    body = assert_refused(response, field=name, location="query")
    assert "Must be greater than or equal to" in body["errors"]["query"][name][0]


@pytest.mark.parametrize("hours", [1.5, 2.0, 1e30, "2", True], ids=repr)
def test_rotation_refuses_overlap_hours_that_is_not_a_json_integer(client, portal, hours):
    before = client.get("/v1/portals/me/webhook-secret", headers=portal.headers).json
    response = client.post(
        "/v1/portals/me/webhook-secret", json={"overlap_hours": hours}, headers=portal.headers
    )
    body = assert_refused(response, field="overlap_hours")
    assert body["errors"]["json"]["overlap_hours"] == ["Not a valid integer."]
    assert client.get("/v1/portals/me/webhook-secret", headers=portal.headers).json == before


# --- authentication ------------------------------------------------------------------------

AUTHENTICATED_REQUESTS = [
    pytest.param("PUT", "/v1/ads/a-1", ad_payload(), id="put-ad"),
    pytest.param("DELETE", "/v1/ads/a-1", None, id="delete-ad"),
    pytest.param("POST", "/v1/ads/a-1/expire", None, id="expire-ad"),
    pytest.param(
        "POST", "/v1/ads/batch", {"items": [{"external_id": "a-1", "ad": ad_payload()}]}, id="batch"
    ),
    pytest.param("GET", "/v1/portals/me/ads", None, id="own-ads"),
    pytest.param("GET", "/v1/portals/me/ads/a-1", None, id="own-ad"),
    pytest.param("GET", "/v1/portals/me", None, id="own-portal"),
    pytest.param("PATCH", "/v1/portals/me", {"name": "Hijacked"}, id="patch-portal"),
    pytest.param("POST", "/v1/currencies", {"code": "TALENT", "name": "Talent"}, id="currency"),
    pytest.param("POST", "/v1/sync-sessions", None, id="sync-session"),
]


def assert_unauthenticated(response, error: str = "unauthenticated") -> dict:
    body = assert_refused(response, 401, error=error, field="Authorization", location="headers")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    return body


@pytest.mark.parametrize(("method", "path", "payload"), AUTHENTICATED_REQUESTS)
def test_request_without_authorization_is_refused_with_401(client, portal, method, path, payload):
    response = client.open(path, method=method, json=payload)
    body = assert_unauthenticated(response)
    assert "Authorization: Bearer" in body["message"]
    assert_nothing_stored(client, portal)


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer cdir_short",
        "Bearer not-a-key",
        "Bearer cdir_" + "0" * 46,
        "Bearer ",
        "Bearer",
        "",
        "cdir_" + "0" * 46,
    ],
    ids=[
        "too-short",
        "no-prefix",
        "bad-checksum",
        "empty-token",
        "scheme-only",
        "empty",
        "no-scheme",
    ],
)
def test_malformed_key_is_refused_with_401(client, portal, authorization):
    response = client.put(
        "/v1/ads/a-1", json=ad_payload(), headers={"Authorization": authorization}
    )
    assert_unauthenticated(response)
    assert_nothing_stored(client, portal)


def test_key_with_a_typo_is_refused_as_malformed(client, portal):
    typo = portal.key[:-1] + ("A" if portal.key[-1] != "A" else "B")
    response = client.put(
        "/v1/ads/a-1", json=ad_payload(), headers={"Authorization": f"Bearer {typo}"}
    )
    body = assert_unauthenticated(response)
    assert "malformed" in body["message"]
    assert_nothing_stored(client, portal)


def test_unknown_well_formed_key_is_refused_with_401(client, portal):
    response = client.put(
        "/v1/ads/a-1", json=ad_payload(), headers={"Authorization": f"Bearer {generate_key()}"}
    )
    body = assert_unauthenticated(response)
    assert "unknown" in body["message"]
    assert_nothing_stored(client, portal)


@pytest.mark.parametrize("scheme", ["Basic", "Token", "Digest"])
def test_other_authorization_scheme_is_refused_with_401(client, portal, scheme):
    response = client.put(
        "/v1/ads/a-1", json=ad_payload(), headers={"Authorization": f"{scheme} {portal.key}"}
    )
    assert_unauthenticated(response)
    assert_nothing_stored(client, portal)


def test_basic_credentials_are_refused_with_401(client, portal):
    response = client.get("/v1/portals/me/ads", auth=("portal", portal.key))
    assert_unauthenticated(response)


def test_revoked_key_is_refused_with_401(client, portal, wiring):
    with unit_of_work(wiring.session_factory) as session:
        (key,) = portals.list_keys(session, portal_slug=portal.slug)
        portals.revoke_key(session, portal_slug=portal.slug, key_id=key.id)
    response = put_ad(client, portal)
    assert_unauthenticated(response, error="key_revoked")


def test_suspended_portal_is_refused_with_403(client, portal, wiring):
    with unit_of_work(wiring.session_factory) as session:
        portals.set_status(session, portal_slug=portal.slug, status=PortalStatus.SUSPENDED)
    response = put_ad(client, portal)
    assert_refused(
        response, 403, error="portal_suspended", field="Authorization", location="headers"
    )
    with unit_of_work(wiring.session_factory) as session:
        portals.set_status(session, portal_slug=portal.slug, status=PortalStatus.ACTIVE)
    assert_nothing_stored(client, portal)


# --- other ad routes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/v1/ads/has%20space"),
        ("DELETE", "/v1/ads/" + "a" * 129),
        ("POST", "/v1/ads/has%20space/expire"),
        # Ids no URL can carry: clients remove "." and ".." segments (RFC 3986).
        ("DELETE", "/v1/ads/.."),
        ("DELETE", "/v1/ads/%2E"),
        ("POST", "/v1/ads/../expire"),
    ],
)
def test_ad_route_refuses_invalid_external_id_in_path(client, portal, method, path):
    response = client.open(path, method=method, headers=portal.headers)
    assert_refused(response, field="ad_ref", location="path")


def test_own_ad_refuses_invalid_external_id_naming_it(client, portal):
    response = client.get("/v1/portals/me/ads/" + "a" * 129, headers=portal.headers)
    assert_refused(response, field="external_id", location="path")


def test_expire_of_missing_ad_is_404(client, portal):
    response = client.post("/v1/ads/nope/expire", headers=portal.headers)
    assert_refused(response, 404, error="not_found")


def test_get_public_ad_with_non_uuid_id_is_404(client):
    assert_refused(client.get("/v1/ads/not-a-uuid"), 404, error="not_found")


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/v1/ads/a-1"), ("PATCH", "/v1/ads/a-1"), ("PUT", "/v1/feed")]
)
def test_unsupported_method_is_refused_with_405_envelope(client, portal, method, path):
    response = client.open(path, method=method, json=ad_payload(), headers=portal.headers)
    assert_refused(response, 405, error="method_not_allowed")
    assert_nothing_stored(client, portal)


def test_unknown_route_is_404_envelope(client):
    assert_refused(client.get("/v1/advertisements"), 404, error="not_found")


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=abc", "limit"),
        ("limit=1.5", "limit"),
        ("limit=-1", "limit"),
        ("limit=", "limit"),
        ("include_expired=maybe", "include_expired"),
        ("cursor=", "cursor"),
    ],
)
def test_own_ads_list_refuses_bad_query_value(client, portal, query, name):
    response = client.get(f"/v1/portals/me/ads?{query}", headers=portal.headers)
    assert_refused(response, field=name, location="query")


def test_own_ads_list_refuses_bad_cursor_naming_it(client, portal):
    response = client.get("/v1/portals/me/ads?cursor=has%20space", headers=portal.headers)
    assert_refused(response, field="cursor", location="query")


# --- POST /v1/ads/batch --------------------------------------------------------------------


def test_batch_refuses_more_than_1000_items(client, portal):
    items = [{"op": "delete", "external_id": f"a-{i}"} for i in range(1001)]
    body = assert_refused(post_batch(client, portal, items), field="items")
    assert "1000" in all_messages(body)


def test_batch_refuses_empty_items(client, portal):
    assert_refused(post_batch(client, portal, []), field="items")


@pytest.mark.parametrize(
    "items",
    ["a-1", {"external_id": "a-1"}, 42, None],
    ids=["string", "object", "number", "null"],
)
def test_batch_refuses_items_that_are_not_a_list(client, portal, items):
    assert_refused(post_batch(client, portal, items), field="items")
    assert_nothing_stored(client, portal)


def test_batch_refuses_missing_items(client, portal):
    response = client.post("/v1/ads/batch", json={"replace": False}, headers=portal.headers)
    assert_refused(response, field="items")


def test_batch_refuses_unknown_top_level_field(client, portal):
    response = post_batch(client, portal, [upsert("a-1")], dry_run=True)
    assert_refused(response, field="dry_run")
    assert_nothing_stored(client, portal)


@pytest.mark.parametrize(
    "replace_value",
    ["yes", "true", "1", 1, "false", 0, 1.5, None, [True], {"all": True}, "maybe"],
    ids=repr,
)
def test_batch_refuses_replace_that_is_not_a_boolean(client, portal, existing_ad, replace_value):
    response = post_batch(client, portal, [upsert("a-2")], replace=replace_value)
    assert_refused(response, field="replace")
    assert own_ads(client, portal) == [existing_ad]


@pytest.mark.parametrize(
    ("item", "field"),
    [
        pytest.param({"op": "upsert", "external_id": "a-2"}, "ad", id="upsert-without-ad"),
        pytest.param({"external_id": "a-2", "ad": None}, "ad", id="upsert-with-null-ad"),
        pytest.param({"external_id": "a-2", "ad": "an ad"}, "ad", id="ad-not-an-object"),
        pytest.param(
            {"op": "delete", "external_id": "a-2", "ad": ad_payload()}, "ad", id="delete-with-ad"
        ),
        pytest.param(
            {"op": "expire", "external_id": "a-2", "ad": ad_payload()}, "ad", id="expire-with-ad"
        ),
        pytest.param({"op": "patch", "external_id": "a-2"}, "op", id="unknown-op"),
        pytest.param({"op": None, "external_id": "a-2"}, "op", id="null-op"),
        pytest.param({"ad": ad_payload()}, "external_id", id="missing-external-id"),
        pytest.param(
            {"external_id": "has space", "ad": ad_payload()}, "external_id", id="external-id-space"
        ),
        pytest.param(
            {"external_id": "a" * 129, "ad": ad_payload()}, "external_id", id="external-id-129"
        ),
        pytest.param(
            {"external_id": 2, "ad": ad_payload()}, "external_id", id="external-id-number"
        ),
        pytest.param(
            {"external_id": "a-2\n", "ad": ad_payload()},
            "external_id",
            id="external-id-trailing-newline",
        ),
        pytest.param(
            {"external_id": "a-2", "ad": ad_payload(), "if_match": "*"},
            "if_match",
            id="unknown-item-field",
        ),
        pytest.param(
            {"external_id": "a-2", "ad": ad_payload(title="x" * 201)},
            "ad.title",
            id="title-too-long",
        ),
        pytest.param(
            {"external_id": "a-2", "ad": ad_payload(colour="red")},
            "ad.colour",
            id="unknown-ad-field",
        ),
        pytest.param(
            {"external_id": "a-2", "ad": ad_payload(member="alice@example.org")},
            "ad.member",
            id="member-email",
        ),
        pytest.param(
            {"external_id": "a-2", "ad": ad_payload(accepts_contact=1)},
            "ad.accepts_contact",
            id="accepts-contact-number",
        ),
        pytest.param("a-2", "_schema", id="item-is-a-string"),
        pytest.param(["a-2"], "_schema", id="item-is-a-list"),
    ],
)
def test_batch_rejects_bad_item_and_applies_the_others(client, portal, item, field):
    response = post_batch(client, portal, [upsert("a-1"), item, upsert("a-3")])
    rejected_result(response, 1, field)
    statuses = [result["status"] for result in response.json["results"]]
    assert statuses == ["created", "rejected", "created"]
    assert response.json["counts"] == {"created": 2, "rejected": 1}
    assert [ad["external_id"] for ad in own_ads(client, portal)] == ["a-1", "a-3"]


def test_batch_reports_rejected_item_with_its_field_errors(client, portal):
    response = post_batch(
        client, portal, [upsert("a-1"), upsert("a-2", title="", location={"lat": 91, "lon": 0})]
    )
    result = rejected_result(response, 1, "ad.title")
    assert result["external_id"] == "a-2"
    assert lookup(result["errors"], "ad.location.lat")
    assert result["id"] is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"currencies": ["ZZZ"]}, "ad.currencies", id="unknown-currency"),
        pytest.param({"category": "magic"}, "ad.category", id="unknown-category"),
        pytest.param({"location": None}, "ad.location", id="location-missing"),
        pytest.param({"expires_at": in_days(-1)}, "ad.expires_at", id="expires-in-past"),
    ],
)
def test_batch_names_domain_errors_of_an_item_under_ad(client, portal, overrides, field):
    response = post_batch(client, portal, [upsert("a-1"), upsert("a-2", **overrides)])
    rejected_result(response, 1, field)
    assert [ad["external_id"] for ad in own_ads(client, portal)] == ["a-1"]


def test_batch_rejects_item_breaking_a_domain_rule_and_applies_the_others(client, portal):
    response = post_batch(
        client, portal, [upsert("a-1"), upsert("a-2", currencies=["ZZZ"]), upsert("a-3")]
    )
    assert response.status_code == 200, response.json
    assert [result["status"] for result in response.json["results"]] == [
        "created",
        "rejected",
        "created",
    ]
    assert "ZZZ" in json.dumps(response.json["results"][1]["errors"])
    assert [ad["external_id"] for ad in own_ads(client, portal)] == ["a-1", "a-3"]


def test_batch_rejects_second_item_with_same_external_id_and_applies_the_first(client, portal):
    response = post_batch(
        client, portal, [upsert("a-1", title="First"), upsert("a-1", title="Second")]
    )
    result = rejected_result(response, 1, "external_id")
    assert "more than once" in result["errors"]["external_id"][0]
    assert response.json["results"][0]["status"] == "created"
    assert own_ad(client, portal, "a-1")["title"] == "First"


def test_batch_rejects_expiry_of_missing_ad(client, portal):
    response = post_batch(client, portal, [{"op": "expire", "external_id": "nope"}])
    rejected_result(response, 0, "external_id")


def test_batch_rejected_item_leaves_existing_ad_intact(client, portal, existing_ad):
    response = post_batch(client, portal, [upsert("a-1", "priced", title="x" * 201)])
    rejected_result(response, 0, "ad.title")
    assert own_ad(client, portal, "a-1") == existing_ad


@pytest.mark.parametrize("op", ["delete", "expire"])
def test_replace_batch_with_delete_or_expire_op_is_refused(client, portal, existing_ad, op):
    items = [upsert("a-2"), {"op": op, "external_id": "a-1"}]
    body = assert_refused(post_batch(client, portal, items, replace=True), field="items")
    assert "upserts" in body["message"]
    assert own_ads(client, portal) == [existing_ad]


def test_replace_batch_keeps_the_ad_of_a_rejected_item(client, portal, existing_ad):
    response = post_batch(
        client, portal, [upsert("a-1", "priced", title=""), upsert("a-2")], replace=True
    )
    rejected_result(response, 0, "ad.title")
    assert response.json["deleted_by_replace"] == 0
    assert own_ad(client, portal, "a-1") == existing_ad


def test_batch_refuses_body_that_is_not_json_with_415(client, portal):
    response = client.post(
        "/v1/ads/batch",
        data=json.dumps({"items": [upsert("a-1")]}),
        content_type="text/plain",
        headers=portal.headers,
    )
    assert_refused(response, 415, field="Content-Type", location="headers")
    assert_nothing_stored(client, portal)


def test_batch_refuses_malformed_json(client, portal):
    response = client.post(
        "/v1/ads/batch",
        data='{"items": [',
        content_type="application/json",
        headers=portal.headers,
    )
    assert_refused(response, field="_schema", error="malformed_json")


# --- PATCH /v1/portals/me ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"slug": "taken-over"}, "slug", id="unknown-field-slug"),
        pytest.param({"status": "active"}, "status", id="unknown-field-status"),
        pytest.param({"colour": "blue"}, "colour", id="unknown-field"),
        pytest.param({"website": "not a url"}, "website", id="website-not-url"),
        pytest.param({"website": "ftp://example.org"}, "website", id="website-ftp"),
        pytest.param({"website": "javascript:alert(1)"}, "website", id="website-javascript"),
        pytest.param({"website": 42}, "website", id="website-number"),
        # Credentials the profile would show, and the worker's log of its re-checks write.
        pytest.param(
            {"website": "https://odile:s3cret@sel.example.org/"}, "website", id="website-password"
        ),
        pytest.param({"website": "https://odile@sel.example.org/"}, "website", id="website-user"),
        pytest.param({"webhook_url": "example.org/hook"}, "webhook_url", id="webhook-no-scheme"),
        pytest.param(
            {"webhook_url": "https://" + "a" * 2048 + ".org"}, "webhook_url", id="webhook-too-long"
        ),
        pytest.param({"name": ""}, "name", id="name-empty"),
        pytest.param({"name": "   "}, "name", id="name-blank"),
        pytest.param({"name": "\u3164"}, "name", id="name-invisible"),
        pytest.param({"name": None}, "name", id="name-null"),
        pytest.param({"name": "x" * 201}, "name", id="name-too-long"),
        pytest.param({"name": "Two\nlines"}, "name", id="name-newline"),
        pytest.param({"name": "Nul\u0000"}, "name", id="name-nul"),
        pytest.param(
            {"contact": "ops@example.org\r\nBcc: x@example.org"}, "contact", id="contact-crlf"
        ),
        pytest.param({"description": "x" * 4001}, "description", id="description-too-long"),
        pytest.param({"default_currencies": "EUR"}, "default_currencies", id="defaults-string"),
        pytest.param({"default_currencies": [1]}, "default_currencies.0", id="defaults-number"),
        pytest.param({"default_currencies": ["EUR"] * 21}, "default_currencies", id="defaults-21"),
    ],
)
def test_patch_portal_refuses_bad_field_and_changes_nothing(client, portal, changes, field):
    before = own_portal(client, portal)
    response = client.patch("/v1/portals/me", json=changes, headers=portal.headers)
    assert_refused(response, field=field)
    assert own_portal(client, portal) == before


@pytest.mark.parametrize("code", ["ZZZ", "other-portal:TALENT"])
def test_patch_portal_refuses_unknown_default_currency_naming_allowed_values(client, portal, code):
    before = own_portal(client, portal)
    response = client.patch(
        "/v1/portals/me", json={"default_currencies": ["EUR", code]}, headers=portal.headers
    )
    body = assert_refused(response, field="default_currencies", error="unknown_currency")
    assert code in body["message"]
    assert "HOUR" in body["message"]
    assert own_portal(client, portal) == before


def test_patch_portal_refuses_a_malformed_default_currency_code(client, portal):
    before = own_portal(client, portal)
    response = client.patch(
        "/v1/portals/me", json={"default_currencies": ["EUR", "eur"]}, headers=portal.headers
    )
    body = assert_refused(response, field="default_currencies", error="validation_error")
    assert "EUR, HOUR, GIFT, BARTER" in str(body["errors"])
    assert own_portal(client, portal) == before


def test_patch_portal_refuses_duplicate_default_currencies(client, portal):
    before = own_portal(client, portal)
    response = client.patch(
        "/v1/portals/me", json={"default_currencies": ["EUR", "EUR"]}, headers=portal.headers
    )
    assert_refused(response, field="default_currencies")
    assert own_portal(client, portal) == before


@pytest.mark.parametrize("document", [[{"name": "x"}], "x", None], ids=["array", "string", "null"])
def test_patch_portal_refuses_json_that_is_not_an_object(client, portal, document):
    before = own_portal(client, portal)
    response = client.patch(
        "/v1/portals/me",
        data=json.dumps(document),
        content_type="application/json",
        headers=portal.headers,
    )
    assert_refused(response, field="_schema")
    assert own_portal(client, portal) == before


# --- the currency registry -----------------------------------------------------------------


def register(client, portal, **fields):
    return client.post(
        "/v1/currencies",
        json={"code": "TALENT", "name": "Talent", **fields},
        headers=portal.headers,
    )


def community_currencies(client, portal) -> list[dict]:
    response = client.get(f"/v1/currencies?portal={portal.slug}")
    assert response.status_code == 200, response.json
    return response.json["currencies"]


@pytest.fixture
def talent(client, portal) -> str:
    response = register(client, portal, value_hours="1")
    assert response.status_code == 201, response.json
    return response.json["code"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        pytest.param({"code": "talent"}, "code", id="code-lowercase"),
        pytest.param({"code": "T"}, "code", id="code-one-letter"),
        pytest.param({"code": "ABCDEFGHIJKLM"}, "code", id="code-13-chars"),
        pytest.param({"code": "1TALENT"}, "code", id="code-leading-digit"),
        pytest.param({"code": "TAL-ENT"}, "code", id="code-dash"),
        pytest.param({"code": "TAL ENT"}, "code", id="code-space"),
        pytest.param({"code": "my-portal:TALENT"}, "code", id="code-namespaced"),
        pytest.param(
            {"code": "TALENT\n"},
            "code",
            id="code-trailing-newline",
        ),
        pytest.param({"code": 42}, "code", id="code-number"),
        pytest.param({"code": ...}, "code", id="code-missing"),
        pytest.param({"name": ...}, "name", id="name-missing"),
        pytest.param({"name": "  "}, "name", id="name-blank"),
        pytest.param({"name": "x" * 101}, "name", id="name-too-long"),
        pytest.param({"symbol": "x" * 9}, "symbol", id="symbol-too-long"),
        pytest.param({"symbol": ""}, "symbol", id="symbol-empty"),
        pytest.param({"value_hours": "0"}, "value_hours", id="hours-zero"),
        pytest.param({"value_hours": "-1"}, "value_hours", id="hours-negative"),
        pytest.param({"value_hours": "abc"}, "value_hours", id="hours-text"),
        pytest.param({"value_hours": "NaN"}, "value_hours", id="hours-nan"),
        pytest.param(
            {"value_amount": "0", "value_currency": "EUR"}, "value_amount", id="amount-zero"
        ),
        pytest.param(
            {"value_amount": "-5", "value_currency": "EUR"}, "value_amount", id="amount-negative"
        ),
        pytest.param({"value_amount": "10"}, "value_currency", id="amount-without-currency"),
        pytest.param({"value_currency": "EUR"}, "value_amount", id="currency-without-amount"),
        pytest.param(
            {"value_amount": "10", "value_currency": "HOUR"},
            "value_currency",
            id="value-currency-hour",
        ),
        pytest.param(
            {"value_amount": "10", "value_currency": "eur"},
            "value_currency",
            id="value-currency-lowercase",
        ),
        pytest.param(
            {"value_amount": "10", "value_currency": "XAU"},
            "value_currency",
            id="value-currency-gold",
        ),
        pytest.param(
            {"value_amount": "10", "value_currency": "ZZZ"},
            "value_currency",
            id="value-currency-unknown",
        ),
        pytest.param({"portal": "other-portal"}, "portal", id="unknown-field"),
    ],
)
def test_register_currency_refuses_bad_field(client, portal, fields, field):
    payload = {"code": "TALENT", "name": "Talent", **fields}
    payload = {key: value for key, value in payload.items() if value is not ...}
    response = client.post("/v1/currencies", json=payload, headers=portal.headers)
    assert_refused(response, field=field)
    assert community_currencies(client, portal) == []


def test_register_currency_twice_is_refused_with_409(client, portal, talent):
    response = register(client, portal, name="Another talent")
    assert_refused(response, 409, field="code", error="conflict")
    (currency,) = community_currencies(client, portal)
    assert currency["name"] == "Talent"


def test_register_currency_refuses_value_hours_too_large_to_store(client, portal):
    response = register(client, portal, value_hours="5000000")
    assert_refused(response, field="value_hours")
    assert community_currencies(client, portal) == []


def test_register_currency_refuses_value_hours_with_more_decimals_than_stored(client, portal):
    response = register(client, portal, value_hours="0.1234567")
    assert_refused(response, field="value_hours")
    assert community_currencies(client, portal) == []


def test_register_currency_refuses_value_amount_with_more_decimals_than_stored(client, portal):
    response = register(client, portal, value_amount="1.23456", value_currency="EUR")
    assert_refused(response, field="value_amount")
    assert community_currencies(client, portal) == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"value_amount": "10"}, "value_currency", id="amount-without-currency"),
        pytest.param({"value_currency": "EUR"}, "value_amount", id="currency-without-amount"),
        pytest.param(
            {"value_amount": "10", "value_currency": "HOUR"},
            "value_currency",
            id="value-currency-hour",
        ),
        pytest.param({"value_hours": "0"}, "value_hours", id="hours-zero"),
        pytest.param({"value_hours": "-2"}, "value_hours", id="hours-negative"),
        pytest.param({"name": ""}, "name", id="name-empty"),
        pytest.param({"code": "OTHER"}, "code", id="rename"),
        pytest.param({"portal": "other-portal"}, "portal", id="unknown-field"),
    ],
)
def test_update_currency_refuses_bad_field_and_changes_nothing(
    client, portal, talent, changes, field
):
    before = community_currencies(client, portal)
    response = client.patch(f"/v1/currencies/{talent}", json=changes, headers=portal.headers)
    assert_refused(response, field=field)
    assert community_currencies(client, portal) == before


def test_update_of_another_portals_currency_is_forbidden(client, portal, other_portal, talent):
    before = community_currencies(client, portal)
    response = client.patch(
        f"/v1/currencies/{talent}", json={"name": "Stolen"}, headers=other_portal.headers
    )
    assert_refused(response, 403, field="code", location="path", error="forbidden")
    assert community_currencies(client, portal) == before


def test_delete_of_another_portals_currency_is_forbidden(client, portal, other_portal, talent):
    response = client.delete(f"/v1/currencies/{talent}", headers=other_portal.headers)
    assert_refused(response, 403, error="forbidden")
    assert [currency["code"] for currency in community_currencies(client, portal)] == [talent]


@pytest.mark.parametrize("code", ["EUR", "HOUR", "nobody:TALENT"])
def test_update_of_currency_that_is_not_a_registered_community_currency_is_404(
    client, portal, code
):
    response = client.patch(f"/v1/currencies/{code}", json={"name": "Mine"}, headers=portal.headers)
    assert_refused(response, 404, error="not_found")


def test_delete_of_currency_used_by_an_ad_is_refused_with_409(client, portal, talent):
    created = put_ad(client, portal, currencies=["EUR", talent])
    assert created.status_code == 201, created.json
    response = client.delete(f"/v1/currencies/{talent}", headers=portal.headers)
    assert_refused(response, 409, field="code", location="path", error="currency_in_use")
    assert client.get(f"/v1/currencies/{talent}").status_code == 200
    assert own_ad(client, portal)["currencies"] == ["EUR", talent]


def test_delete_of_currency_used_as_portal_default_is_refused_with_409(client, portal, talent):
    patched = client.patch(
        "/v1/portals/me", json={"default_currencies": [talent]}, headers=portal.headers
    )
    assert patched.status_code == 200, patched.json
    response = client.delete(f"/v1/currencies/{talent}", headers=portal.headers)
    assert_refused(response, 409, error="currency_in_use")
    assert client.get(f"/v1/currencies/{talent}").status_code == 200


@pytest.mark.parametrize(
    ("query", "name"), [("kind=bogus", "kind"), ("portal=", "portal"), ("kind=", "kind")]
)
def test_currency_list_refuses_bad_query_value(client, query, name):
    assert_refused(client.get(f"/v1/currencies?{query}"), field=name, location="query")


def test_unknown_currency_is_404(client):
    assert_refused(client.get("/v1/currencies/ZZZ"), 404, error="not_found")


# --- GET /v1/feed --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "since",
    [
        "garbage",
        "f1.",
        "f1.!!!",
        "f1.bm90LWEtbnVtYmVy",
        "f1.LTEuMA",
        # A cursor of position 1.2 is f1.MS4y, spelt so only: base64 would drop what is
        # not of its alphabet and read padding, and int() leading zeros.
        "f1.MS4y!!",
        "f1.MS4y==",
        "f1.MS4y%20",
        "f1.MS4y%0A",
        "f1.MDEuMg",
    ],
    ids=str,
)
def test_feed_refuses_bad_since_naming_it_in_query(client, since):
    response = client.get(f"/v1/feed?since={since}")
    assert_refused(response, field="since", location="query", error="invalid_cursor")


@pytest.mark.parametrize("since", ["garbage", "f1.!!!", "f1.LTEuMA"], ids=str)
def test_feed_refuses_bad_since_with_400_naming_since(client, since):
    response = client.get(f"/v1/feed?since={since}")
    body = assert_refused(response, error="invalid_cursor")
    assert "since" in body["message"]
    assert any("since" in fields for fields in body["errors"].values())


@pytest.mark.parametrize(
    "position",
    [
        pytest.param(b"99999999999999999999.1", id="txid-beyond-bigint"),
        pytest.param(b"1.99999999999999999999", id="seq-beyond-bigint"),
        pytest.param(b"9223372036854775808.1", id="txid-one-past-bigint"),
        pytest.param(b"1_0.1", id="underscore"),
        pytest.param(b" 1.1", id="space"),
        pytest.param("\u0661.1".encode(), id="arabic-indic-digit"),
    ],
)
def test_feed_refuses_since_beyond_bigint_or_not_in_ascii_digits(client, portal, position):
    put_ad(client, portal)
    response = client.get(f"/v1/feed?since={cursors.encode('f1.', position)}")
    assert_refused(response, field="since", location="query", error="invalid_cursor")


def test_feed_refuses_empty_since(client):
    assert_refused(client.get("/v1/feed?since="), field="since", location="query")


@pytest.mark.parametrize("limit", ["0", "1001", "abc", "1.5", "-1", "", "1e3"], ids=repr)
def test_feed_refuses_bad_limit(client, limit):
    assert_refused(client.get(f"/v1/feed?limit={limit}"), field="limit", location="query")


# --- sync sessions -------------------------------------------------------------------------


def open_session(client, portal) -> str:
    response = client.post("/v1/sync-sessions", headers=portal.headers)
    assert response.status_code == 201, response.json
    return response.json["id"]


def stage(client, portal, session_id: str, items):
    return client.post(
        f"/v1/sync-sessions/{session_id}/items", json={"items": items}, headers=portal.headers
    )


SESSION_OPERATIONS = [
    pytest.param("GET", "", None, id="read"),
    pytest.param("POST", "/items", {"items": [upsert("a-1")]}, id="stage"),
    pytest.param("POST", "/commit", None, id="commit"),
    pytest.param("DELETE", "", None, id="abort"),
]


@pytest.mark.parametrize(("method", "suffix", "payload"), SESSION_OPERATIONS)
@pytest.mark.parametrize(
    "session_id", [str(uuid.uuid4()), "not-a-uuid"], ids=["unknown", "not-uuid"]
)
def test_sync_session_unknown_id_is_404(client, portal, method, suffix, payload, session_id):
    response = client.open(
        f"/v1/sync-sessions/{session_id}{suffix}",
        method=method,
        json=payload,
        headers=portal.headers,
    )
    assert_refused(response, 404, error="not_found", field="session_id", location="path")
    assert_nothing_stored(client, portal)


@pytest.mark.parametrize(("method", "suffix", "payload"), SESSION_OPERATIONS)
def test_sync_session_of_another_portal_is_404(
    client, portal, other_portal, method, suffix, payload
):
    session_id = open_session(client, other_portal)
    response = client.open(
        f"/v1/sync-sessions/{session_id}{suffix}",
        method=method,
        json=payload,
        headers=portal.headers,
    )
    assert_refused(response, 404, error="not_found", field="session_id", location="path")
    summary = client.get(f"/v1/sync-sessions/{session_id}", headers=other_portal.headers).json
    assert (summary["status"], summary["staged"]) == ("open", 0)


@pytest.mark.parametrize("finish", ["commit", "abort"])
def test_staging_to_a_finished_session_is_refused_with_409(client, portal, finish):
    session_id = open_session(client, portal)
    assert stage(client, portal, session_id, [upsert("a-1")]).status_code == 200
    if finish == "commit":
        finished = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)
    else:
        finished = client.delete(f"/v1/sync-sessions/{session_id}", headers=portal.headers)
    assert finished.status_code in (200, 204), finished.json
    response = stage(client, portal, session_id, [upsert("a-2")])
    assert_refused(response, 409, error="sync_session_closed")
    assert "a-2" not in [ad["external_id"] for ad in own_ads(client, portal)]


def test_committing_an_aborted_session_is_refused_with_409(client, portal):
    session_id = open_session(client, portal)
    assert stage(client, portal, session_id, [upsert("a-1")]).status_code == 200
    client.delete(f"/v1/sync-sessions/{session_id}", headers=portal.headers)
    again = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)
    assert_refused(again, 409, error="sync_session_closed")


def test_aborting_a_committed_session_is_refused_with_409(client, portal):
    session_id = open_session(client, portal)
    assert stage(client, portal, session_id, [upsert("a-1")]).status_code == 200
    client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)
    response = client.delete(f"/v1/sync-sessions/{session_id}", headers=portal.headers)
    assert_refused(response, 409, error="sync_session_closed")
    assert [ad["external_id"] for ad in own_ads(client, portal)] == ["a-1"]


@pytest.mark.parametrize(
    ("item", "field"),
    [
        pytest.param(upsert("a-2", title="x" * 201), "ad.title", id="title-too-long"),
        pytest.param(upsert("a-2", location={"lat": 91, "lon": 0}), "ad.location.lat", id="lat"),
        pytest.param(
            upsert("a-2", accepts_contact="false"), "ad.accepts_contact", id="accepts-contact"
        ),
        pytest.param({"external_id": "a-2"}, "ad", id="missing-ad"),
        pytest.param({**upsert("a-2"), "op": "upsert"}, "op", id="op-not-allowed"),
        # Items without a valid external_id refuse the whole request: tests/api/test_sync.py.
    ],
)
def test_staging_rejects_bad_item_and_stages_the_others(client, portal, item, field):
    session_id = open_session(client, portal)
    response = stage(client, portal, session_id, [upsert("a-1"), item])
    rejected_result(response, 1, field)
    assert response.json["results"][0]["status"] == "staged"
    assert response.json["session"]["staged"] == 1


def test_staging_rejects_item_breaking_a_domain_rule(client, portal):
    session_id = open_session(client, portal)
    response = stage(client, portal, session_id, [upsert("a-1", currencies=["ZZZ"])])
    assert response.status_code == 200, response.json
    (result,) = response.json["results"]
    assert result["status"] == "rejected"
    assert "ZZZ" in json.dumps(result["errors"])


def test_staging_rejects_item_with_nul_character(client, portal):
    session_id = open_session(client, portal)
    response = stage(client, portal, session_id, [upsert("a-1", currencies=["EUR\u0000"])])
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["results"][0]["status"] == "rejected"


def test_commit_keeps_existing_ad_whose_staged_item_was_rejected(client, portal, existing_ad):
    session_id = open_session(client, portal)
    response = stage(client, portal, session_id, [upsert("a-1", "priced", title=""), upsert("a-2")])
    rejected_result(response, 0, "ad.title")
    commit = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)
    assert commit.status_code == 200, commit.json
    assert commit.json["deleted"] == 0
    assert own_ad(client, portal, "a-1") == existing_ad


@pytest.mark.parametrize(
    ("items", "field"),
    [
        pytest.param([], "items", id="empty"),
        pytest.param("a-1", "items", id="not-a-list"),
        pytest.param([upsert(f"a-{i}", "hidden") for i in range(1001)], "items", id="1001-items"),
    ],
)
def test_staging_refuses_bad_items_list(client, portal, items, field):
    session_id = open_session(client, portal)
    assert_refused(stage(client, portal, session_id, items), field=field)
    summary = client.get(f"/v1/sync-sessions/{session_id}", headers=portal.headers).json
    assert summary["staged"] == summary["rejected"] == 0


def test_search_text_refuses_more_than_sixteen_different_words(client):
    words = [f"w{n}" for n in range(17)]
    response = client.get("/v1/search", query_string={"q": " ".join(words)})
    body = assert_refused(response, field="q", location="query")
    assert "at most 16 different words (it has 17)" in body["errors"]["query"]["q"][0]


@pytest.mark.parametrize(
    "q",
    [
        " ".join(f"w{n}" for n in range(16)),
        " ".join(["d"] * 100),  # a repeat counts once
        " ".join(f"W{n} w{n}" for n in range(16)),  # so does a word in other case
    ],
    ids=["sixteen", "repeated", "cases"],
)
def test_search_text_takes_sixteen_different_words(client, q):
    response = client.get("/v1/search", query_string={"q": q})
    assert response.status_code == 200, response.json
