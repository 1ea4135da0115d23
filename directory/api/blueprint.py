"""Our Blueprint: strict parsing (unknown query parameters are refused, not dropped)
and one status, 400, for every request that fails validation."""

from __future__ import annotations

import contextlib
from urllib.parse import unquote_to_bytes

import flask_smorest
import marshmallow as ma
import orjson
from webargs import core
from webargs.flaskparser import FlaskParser, abort, is_json_request
from werkzeug.exceptions import RequestEntityTooLarge

from directory.api.duplicate_keys import (
    MAX_OBJECT_KEYS,
    DocumentTooDeep,
    ObjectTooLarge,
    repeated_key_path,
)
from directory.api.loading import FastLoader

# Charset parameters that name UTF-8, or ASCII, a subset of it.
UTF8_CHARSETS = {"utf-8", "utf8", "us-ascii", "ascii"}


class StrictParser(FlaskParser):
    DEFAULT_VALIDATION_STATUS = 400
    DEFAULT_UNKNOWN_BY_LOCATION = {**FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION, "query": ma.RAISE}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # By schema instance (each operation's, built once) and location.
        self._loaders: dict[tuple[ma.Schema, str], FastLoader | None] = {}
        # Bodies declared optional (`arguments(..., required=False)`), by schema instance.
        self.optional_bodies: set[ma.Schema] = set()

    def load_json(self, request, schema):
        # An optional body left out is loaded as {} (webargs' `missing`): every default.
        if schema in self.optional_bodies and not request.get_data(cache=True):
            return core.missing
        return super().load_json(request, schema)

    def load_querystring(self, request, schema):
        # A parameter given twice would silently lose all but its first value.
        repeated = [
            name
            for name, values in request.args.lists()
            if len(values) > 1 and not isinstance(schema.fields.get(name), ma.fields.List)
        ]
        if repeated:
            abort(
                400,
                message="A query parameter was given more than once.",
                messages={"query": {name: ["Must be given once."] for name in repeated}},
            )
        not_utf8 = _not_utf8(request.query_string)
        if not_utf8:
            abort(
                400,
                message="A query parameter is not UTF-8.",
                messages={
                    "query": {
                        name: ["Must be UTF-8, percent-encoded (é is %C3%A9)."] for name in not_utf8
                    }
                },
            )
        if self._loader(schema, "query") is not None:
            # A schema without lists takes one value each: a plain dict, rather than
            # webargs' proxy, which looked at every field of the schema on each request.
            return request.args.to_dict()
        return super().load_querystring(request, schema)

    def _process_location_data(self, location_data, schema, req, location, unknown, validators):
        # Query strings and JSON bodies through the schema's own fields in a plain loop
        # (a search's 20 parameters took 0.2 ms in Schema.load); anything the fast loader
        # does not accept outright goes to Schema.load, so every error is still
        # marshmallow's.
        loader = self._loader(schema, location)
        if (
            loader is None
            or validators
            or location_data is core.missing
            or self._unknown(unknown, location) not in (None, ma.RAISE)
        ):
            return super()._process_location_data(
                location_data, schema, req, location, unknown, validators
            )
        return loader.load(location_data)

    def _unknown(self, unknown, location: str):
        """What webargs does with unknown fields here: as given to `arguments`, else the
        parser's, else its location's default (webargs passes a placeholder for "not
        given", a private name, and resolves it inside the method this one overrides;
        test_loading checks that requests still take the fast path)."""
        if unknown != core._UNKNOWN_DEFAULT_PARAM:
            return unknown
        if self.unknown != core._UNKNOWN_DEFAULT_PARAM:
            return self.unknown
        return self.DEFAULT_UNKNOWN_BY_LOCATION.get(location)

    def _loader(self, schema: ma.Schema, location: str) -> FastLoader | None:
        key = (schema, location)
        if key not in self._loaders:
            loader = None
            # Only schemas that refuse unknown fields by themselves (the fallback is
            # Schema.load without webargs' `unknown`); in a query string, no lists (they
            # need MultiDicts).
            flat = not any(isinstance(field, ma.fields.List) for field in schema.fields.values())
            if (
                location in ("query", "json")
                and schema.unknown == ma.RAISE
                and (flat or location == "json")
            ):
                with contextlib.suppress(TypeError):  # hooks it cannot run: Schema.load
                    loader = FastLoader(schema)
            self._loaders[key] = loader
        return self._loaders[key]

    def _raw_load_json(self, request):
        # Only operations that declare a JSON body get here (not with an optional one left
        # out: load_json): an empty one is an error, never an empty object (a PATCH
        # without a body must not "succeed").
        _refuse_unreadable_body(request)
        body = request.get_data(cache=True)
        _refuse_truncated_body(request, body)
        if not body:
            abort(
                400,
                error="body_required",
                message="This operation needs a JSON body (Content-Type: application/json).",
                messages={"json": {"_schema": ["A JSON body is required."]}},
            )
        if not is_json_request(request):
            return core.missing  # refused with 415 before the view runs
        # orjson: a batch of 1,000 ads parses several times faster than with json.
        try:
            document = orjson.loads(body)
            repeated = repeated_key_path(body)
        except (orjson.JSONDecodeError, DocumentTooDeep) as error:
            # Handled here: webargs takes an error without a document (as orjson
            # raises for invalid UTF-8) for "no body" and would carry on with none.
            self._handle_invalid_json_error(error, request)
        except ObjectTooLarge as error:
            abort(
                400,
                error="too_many_keys",
                message=f"The body is refused: {error}, and none of the API's takes more "
                f"than {MAX_OBJECT_KEYS}.",
                messages={
                    "json": {"_schema": [f"An object has more than {MAX_OBJECT_KEYS} keys."]}
                },
            )
        if repeated is not None:
            _refuse_repeated_key(repeated)
        return document

    def _handle_invalid_json_error(self, error, req, *args, **kwargs):
        abort(
            400,
            exc=error,
            error="malformed_json",
            message=f"The body is not valid JSON: {error}",
            messages={"json": {"_schema": ["Not valid JSON."]}},
        )


def _refuse_unreadable_body(request) -> None:
    """JSON is UTF-8 (RFC 8259): a body declared in another charset, or compressed,
    would be read as something else than was sent, or not at all. 415, naming why."""
    charset = request.mimetype_params.get("charset")
    if charset is not None and charset.lower() not in UTF8_CHARSETS:
        _refuse_media(
            "Content-Type",
            f"JSON bodies are UTF-8: charset {charset} is not supported.",
            "Must be application/json, in UTF-8.",
        )
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        _refuse_media(
            "Content-Encoding",
            f"Content-Encoding {encoding} is not supported: send the body uncompressed.",
            "Must be absent (an uncompressed body).",
        )


def _not_utf8(query_string: bytes) -> list[str]:
    """The query parameters whose names or values are not UTF-8 once percent-decoded.
    werkzeug keeps such an escape as it was written: a Latin-1 client's "caf%E9" would
    be read as the seven characters "caf%E9"."""
    if b"%" not in query_string and query_string.isascii():
        return []
    names = []
    for pair in query_string.split(b"&"):
        try:
            unquote_to_bytes(pair.replace(b"+", b" ")).decode()
        except UnicodeDecodeError:
            name = pair.partition(b"=")[0].replace(b"+", b" ")
            names.append(unquote_to_bytes(name).decode(errors="replace"))
    return names


def _refuse_repeated_key(path: tuple[str | int, ...]) -> None:
    """A key given twice in one object: which value was meant is not ours to guess."""
    where = ".".join(str(part) for part in path)
    problem: object = ["Given more than once in the same object."]
    for part in reversed(path):
        problem = {part: problem}
    abort(
        400,
        error="repeated_key",
        message=f"The body gives the key {where!r} more than once in the same object: "
        "send it once, with the value you mean.",
        messages={"json": problem},
    )


def _refuse_media(header: str, message: str, problem: str) -> None:
    abort(
        415,
        error="unsupported_media_type",
        message=message,
        messages={"headers": {header: [problem]}},
    )


def _refuse_truncated_body(request, body: bytes) -> None:
    """A body sent without Content-Length (chunked) is read up to the size limit, and
    werkzeug stops there without a word: what lies beyond would be cut off, and the
    rest parsed as if it were the whole (413, as with a Content-Length over the limit)."""
    limit = request.max_content_length
    if (
        request.content_length is None
        and limit is not None
        and len(body) >= limit
        and request.environ["wsgi.input"].read(1)  # past what werkzeug let through
    ):
        raise RequestEntityTooLarge()


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = StrictParser()

    def arguments(self, schema, *, required=True, **kwargs):
        # webargs builds a schema given as a class anew for every request (copying each
        # of its fields); an instance is built once. Loading keeps no state in it.
        schema = schema() if isinstance(schema, type) else schema
        if not required:
            self.ARGUMENTS_PARSER.optional_bodies.add(schema)
        return super().arguments(schema, required=required, **kwargs)
