"""Our Blueprint: strict parsing (unknown query parameters are refused, not dropped)
and one status, 400, for every request that fails validation."""

from __future__ import annotations

import flask_smorest
import marshmallow as ma
import orjson
from webargs import core
from webargs.flaskparser import FlaskParser, abort, is_json_request


class StrictParser(FlaskParser):
    DEFAULT_VALIDATION_STATUS = 400
    DEFAULT_UNKNOWN_BY_LOCATION = {**FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION, "query": ma.RAISE}

    def _raw_load_json(self, request):
        # orjson: a batch of 1,000 ads parses several times faster than with json.
        if not is_json_request(request):
            return core.missing
        return orjson.loads(request.get_data(cache=True))

    def _handle_invalid_json_error(self, error, req, *args, **kwargs):
        abort(
            400,
            exc=error,
            error="malformed_json",
            message=f"The body is not valid JSON: {error}",
            messages={"json": {"_schema": ["Not valid JSON."]}},
        )


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = StrictParser()
