"""Every answer the tests get from the app must be what openapi.yaml says: typed clients
are generated from that file, so an answer it does not describe breaks them."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from flask.testing import FlaskClient
from openapi_core import Config, OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIResponse
from openapi_core.datatypes import RequestParameters
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from werkzeug.datastructures import Headers, ImmutableMultiDict

SPEC_FILE = Path(__file__).resolve().parents[1] / "openapi.yaml"


@functools.cache
def spec() -> OpenAPI:
    config = Config(extra_media_type_deserializers={"application/geo+json": json.loads})
    return OpenAPI.from_file_path(str(SPEC_FILE), config=config)


class _AnsweredRequest:
    """What openapi-core needs of a request to find its operation (the body was read by
    the app already, and only the answer is checked)."""

    def __init__(self, request) -> None:
        self.host_url = "http://localhost"
        self.path = request.path
        self.method = request.method.lower()
        self.body = None
        self.content_type = request.content_type or ""
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(request.args),
            header=Headers(dict(request.headers)),
            cookie=ImmutableMultiDict(),
        )


class SpecCheckingClient(FlaskClient):
    def open(self, *args, **kwargs):
        response = super().open(*args, **kwargs)
        try:
            spec().validate_response(
                _AnsweredRequest(response.request), WerkzeugOpenAPIResponse(response)
            )
        except (PathNotFound, OperationNotFound):
            pass  # a test asking for what does not exist, answered 404 or 405
        except Exception as error:  # openapi-core raises several unrelated classes
            raise AssertionError(
                f"{response.request.method} {response.request.path} answered "
                f"{response.status_code} outside openapi.yaml: {error!r} "
                f"{error.__cause__!r}\n{response.get_data(as_text=True)[:2000]}"
            ) from error
        return response
