"""Field types and validators shared by the schemas."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import orjson
from marshmallow import Schema, ValidationError, fields, utils, validate

from directory.services.ads import EXTERNAL_ID, EXTERNAL_ID_RULE
from directory.text import CONTROL_CHARS, LINE_BREAKS, SINGLE_LINE_REFUSED, is_blank
from directory.webhooks.urls import link_problem

# Any case: BCP 47 tags are case-insensitive ("EN" is "en"), so every comparison lowers them.
BCP47 = re.compile(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*$")
HANDLE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# The patterns searched for contact details hold one character before the "@" where
# "one or more" would read the same: searched in a long value without an "@", "[^@\s]+@"
# tries every start and runs to the end from each, quadratic in the length (a 50,000
# character member handle took 10 s to refuse, anonymously). A match is still one.
EMAIL_LIKE = re.compile(r"[^@\s]@[^@\s]")
PHONE_SEPARATORS = re.compile(r"[\s().-]")
PHONE_CHARACTERS = re.compile(r"\+?[\d\s().-]+")
PHONE_RUN = re.compile(r"\+?\(?\d[\d\s().-]{5,}\d")
LEDGER_ACCOUNT = re.compile(r"^[A-Za-z0-9._:@/-]{1,128}$")
# An address with a domain name: "anna@example.org", not a ledger's "anna@lyon".
EMAIL_ADDRESS = re.compile(r"[^@\s/]@[^@\s/]+\.[A-Za-z]{2,}")
# The same, spaced out as a name might hold it: "anna @ example.org", not "Anna @ Lyon".
SPACED_EMAIL_ADDRESS = re.compile(r"[^@\s]\s*@\s*[^@\s]+\.[^\W\d_]{2,}")
# [0-9], not \d: int() also reads other scripts' digits ("١٢" is 12).
ASCII_INTEGER = re.compile(r"-?[0-9]+")
# A decimal number as a query string writes it: ASCII digits, a point, an exponent.
ASCII_DECIMAL = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


class FullMatch(validate.Regexp):
    """validate.Regexp that must match the whole value: `$` alone also matches just
    before a trailing newline, which would let "id\\n" through. The pattern still
    goes into the spec as written."""

    def __call__(self, value):
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


# A portal's own id for a write it may send again (a message, a secret rotation).
IDEMPOTENCY_KEY = FullMatch(
    r"^[A-Za-z0-9._:-]{1,128}$", error="Must be 1 to 128 letters, digits, '.', '_', ':' or '-'."
)


class Str(fields.String):
    """A string that PostgreSQL can store: no NUL or other control characters."""

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if CONTROL_CHARS.search(text):
            raise ValidationError("Must not contain control characters.")
        return text


class Url(fields.Url):
    """A URL without control characters (NUL included) and with a port that can exist,
    both of which fields.Url lets through ("https://example.org:99999/")."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and (CONTROL_CHARS.search(value) or LINE_BREAKS.search(value)):
            raise ValidationError("Must not contain control characters.")
        url = super()._deserialize(value, attr, data, **kwargs)
        try:
            port = urlsplit(url).port
        except ValueError:
            port = 0
        if port == 0:
            raise ValidationError("Must have a port from 1 to 65535, if any.")
        return url


def published_link(url: str) -> None:
    """A link published for others' devices to load (webhooks.urls.link_problem)."""
    if (problem := link_problem(url)) is not None:
        raise ValidationError(f"Must be a link others may load: it {problem}.")


CURRENCY_CODE = re.compile(
    r"^(?:[A-Z]{3,6}|[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?:[A-Z][A-Z0-9]{1,11})$"
)


def currency_code_field(**kwargs) -> fields.String:
    return fields.String(
        validate=FullMatch(
            CURRENCY_CODE,
            error="Must be a currency code: EUR, HOUR, GIFT, BARTER or portal-slug:CODE.",
        ),
        **kwargs,
    )


def validate_tag(tag: str) -> None:
    """A tag a search can ask for as it is: `tags=` separates tags with commas and trims
    the spaces around each."""
    if "," in tag:
        raise ValidationError("Must not contain a comma (a search's tags= separates tags by them).")
    if tag != tag.strip():
        raise ValidationError("Must not begin or end with a space.")


def unique_values(values) -> None:
    folded = [value.casefold() if isinstance(value, str) else value for value in values]
    if len(set(folded)) != len(folded):
        raise ValidationError("Must not repeat a value.")


class Text(fields.String):
    """A string with no control characters; single-line unless `multiline=True`, and
    never blank when required."""

    def __init__(self, *args, multiline: bool = False, allow_blank: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.allow_blank = allow_blank
        # One pass over the text finds any character it may not hold (this runs for
        # every title, body and tag of a batch); which rule it broke is sorted out after.
        self.refused = CONTROL_CHARS if multiline else SINGLE_LINE_REFUSED

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise self.make_error("invalid")
        if self.refused.search(value):
            if CONTROL_CHARS.search(value):
                raise ValidationError("Must not contain control characters.")
            raise ValidationError("Must be a single line (no line breaks or tabs).")
        if not self.allow_blank and is_blank(value):
            raise ValidationError("Must not be blank (nor only characters that show as nothing).")
        return value


def validate_member_handle(value: str) -> None:
    """A member is an opaque handle. The directory never holds contact details, so
    anything that looks like an email address or a phone number is refused."""
    if EMAIL_LIKE.search(value):
        raise ValidationError("Must be the portal's opaque member handle, not an email address.")
    # Cheap first test: most handles hold a letter, and then cannot be phone numbers.
    if PHONE_CHARACTERS.fullmatch(value):
        digits = re.sub(r"\D", "", value)
        if 7 <= len(digits) <= 15 and (
            value.startswith(("+", "0")) or PHONE_SEPARATORS.search(value)
        ):
            raise ValidationError("Must be the portal's opaque member handle, not a phone number.")
    if not HANDLE.fullmatch(value):
        raise ValidationError(
            "Must be 1 to 64 letters, digits, '.', '_', ':' or '-' (an opaque handle)."
        )


def validate_display_name(value: str) -> None:
    """The name a member shows the other party: their choice, but never a way to reach
    them outside the relay (the directory holds no contact details)."""
    # Checked as it reads, not as it is encoded: a full-width at sign (U+FF20) is "@",
    # full-width digits are digits, and an invisible character (a zero-width space) must
    # not split a number. The name itself is kept as written.
    seen = "".join(
        char for char in unicodedata.normalize("NFKC", value) if unicodedata.category(char) != "Cf"
    )
    if EMAIL_LIKE.search(seen) or SPACED_EMAIL_ADDRESS.search(seen):
        raise ValidationError("Must be a name, not an email address.")
    for run in PHONE_RUN.findall(seen):
        if sum(char.isdigit() for char in run) >= 7:
            raise ValidationError("Must be a name, without a phone number.")


def validate_ledger_account(value: str) -> None:
    """The advertiser's account is published with the ad, for payers: one named by its
    holder's email address would publish the address (the directory holds none)."""
    if EMAIL_ADDRESS.search(value):
        raise ValidationError(
            "Must be the ledger's account name, not an email address: the account is "
            "published with the ad."
        )


EXTERNAL_ID_ERROR = f"Must be {EXTERNAL_ID_RULE}."


def external_id_field(**kwargs) -> fields.String:
    return fields.String(
        validate=FullMatch(EXTERNAL_ID, error=EXTERNAL_ID_ERROR),
        metadata={"description": "The portal's own id for the ad", "example": "ad-1842"},
        **kwargs,
    )


def validate_length_first(field: fields.List, value) -> None:
    """A list's length, before its items are loaded: loading a million tags one by one,
    only to refuse them as more than 20, took 3 s of CPU (300,000 items of an oversized
    batch, 2.5 s). marshmallow runs a field's validators after loading its value."""
    if utils.is_sequence_but_not_string(value):
        for validator in field.validators:
            if isinstance(validator, validate.Length):
                validator(value)


class BoundedList(fields.List):
    """A list whose length is checked before its items (validate_length_first)."""

    def _deserialize(self, value, attr, data, **kwargs):
        validate_length_first(self, value)
        return super()._deserialize(value, attr, data, **kwargs)


class PerItemList(fields.List):
    """A list documented as a list of its inner schema, but loaded item by item: an item
    that fails validation becomes an `ItemErrors` in its place instead of failing the
    whole list, so a batch can report per item."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not utils.is_sequence_but_not_string(value):
            raise self.make_error("invalid")
        validate_length_first(self, value)
        loaded = []
        for index, item in enumerate(value):
            try:
                loaded.append(self.inner.deserialize(item, **kwargs))
            except ValidationError as error:
                loaded.append(ItemErrors(index, item, error.messages))
        return loaded


@dataclass
class ItemErrors:
    """A batch item that failed validation: its place, what was sent, and why."""

    index: int
    raw: Any
    messages: Any

    def __post_init__(self):
        if not isinstance(self.messages, dict):
            self.messages = {"_schema": self.messages}

    @property
    def external_id(self) -> str | None:
        value = self.raw.get("external_id") if isinstance(self.raw, dict) else None
        return value if isinstance(value, str) and EXTERNAL_ID.fullmatch(value) else None


class CursorPageSchema(Schema):
    next_cursor = fields.String(
        allow_none=True,
        metadata={"description": "Pass as `cursor` for the next page; null on the last page"},
    )


class DecimalString(fields.String):
    """A decimal number written as a string ("12.50"), so that amounts never pass
    through binary floating point; documented with its pattern."""

    def __init__(self, *, digits: int, places: int, **kwargs):
        # [0-9], not \d: Python's \d matches any script's digits, which Decimal() takes.
        self.pattern = re.compile(rf"^[0-9]{{1,{digits}}}(\.[0-9]{{1,{places}}})?$")
        self.problem = (
            f'Must be a decimal number as a string, such as "12.50", with at most {digits} '
            f"digits before the point and {places} after it."
        )
        super().__init__(**kwargs)
        self.metadata.setdefault("pattern", self.pattern.pattern)

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if not self.pattern.fullmatch(text):
            raise ValidationError(self.problem)
        return Decimal(text)

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else str(value)


class WholeNumber(fields.Integer):
    """An integer read exactly as sent: a JSON integer or, unless `strict`, a string of
    ASCII digits with an optional "-" (all a query string holds). fields.Integer goes
    through int(), which truncates 5.5 to 5 and reads "+5", "1_000", " 7 " and "١٢".
    A float is refused even when whole: 5.0000000000000001 parses to the same float as
    5.0, so a whole float does not prove that a whole number was sent."""

    def _validated(self, value):
        # _validated, not _deserialize, holds the check: FastLoader calls _deserialize,
        # which goes through it too. type(), not isinstance(): a bool is an int.
        if type(value) is int or (
            not self.strict and type(value) is str and ASCII_INTEGER.fullmatch(value)
        ):
            return super()._validated(value)
        raise self.make_error("invalid", input=value)


class QueryNumber(fields.Float):
    """A decimal number from a query string, read exactly as sent: fields.Float goes
    through float(), which also reads "1_0" (as 10), "+45", " 45", "٤٥" and "nan"."""

    def _validated(self, value):
        # _validated, not _deserialize, as in WholeNumber: FastLoader goes through it too.
        if type(value) is str and ASCII_DECIMAL.fullmatch(value):
            return super()._validated(value)
        raise self.make_error("invalid", input=value)


class StrictBoolean(fields.Boolean):
    """A JSON boolean: true or false, not 0, 1, "yes" or "true" (0 == False in Python,
    so marshmallow's truthy/falsy sets cannot tell them apart)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


def json_response(payload, status: int = 200, *, mimetype: str = "application/json"):
    """A JSON response of plain data (str, numbers, UUIDs, datetimes, lists, dicts)."""
    from flask import Response

    try:
        body = orjson.dumps(payload)
    except orjson.JSONEncodeError:
        # Non-string keys: marshmallow reports list items by index ({"tags": {1: [...]}}),
        # as in a batch's item errors. Only then: the option costs a quarter more on
        # every dict (8 µs on a page of 20 search hits).
        body = orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
    return Response(body, status=status, mimetype=mimetype)
