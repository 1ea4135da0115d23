"""The Credit Commons reference node (a real outside ledger, PHP cc-node, API 0.2) as a
test peer on 127.0.0.1, and its OpenAPI file as a check on what client and node say.

The node and its scripts live outside the repository, in ../shared/peers/credit-commons
(or where DIRECTORY_CREDIT_COMMONS_PEER says); tests that need it are skipped, saying
why, when it is absent."""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

PEER_ENV_VAR = "DIRECTORY_CREDIT_COMMONS_PEER"
DEFAULT_PEER_DIR = Path(__file__).resolve().parents[2] / "shared/peers/credit-commons"
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30


@dataclass(frozen=True)
class Account:
    name: str
    key: str
    min: int = -100
    max: int = 100


@dataclass(frozen=True)
class CreditCommonsNode:
    url: str
    node_name: str
    accounts: dict[str, Account]
    folder: Path

    def key(self, account: str) -> str:
        return self.accounts[account].key


def peer_dir() -> Path:
    return Path(os.environ.get(PEER_ENV_VAR) or DEFAULT_PEER_DIR)


def require_peer() -> Path:
    """The peer's folder, or skip the test saying why it cannot run."""
    folder = peer_dir()
    if not (folder / "start").is_file() or not (folder / "stop").is_file():
        pytest.skip(
            f"the Credit Commons reference node is not available: no start/stop scripts in "
            f"{folder} (set {PEER_ENV_VAR} to the folder holding them)"
        )
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_node(
    folder: Path, *, accounts: list[Account], node_name: str = "testnode"
) -> Iterator[CreditCommonsNode]:
    """Start the node in the empty `folder` on a free port; stop it at the end."""
    peer = require_peer()
    spec = ",".join(f"{a.name}:{a.key}:{a.min}:{a.max}" for a in accounts)
    port = free_port()
    started = subprocess.run(
        [
            peer / "start",
            "--dir",
            folder,
            "--port",
            str(port),
            "--accounts",
            spec,
            "--node-name",
            node_name,
        ],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    if started.returncode != 0 or not started.stdout.startswith("ready "):
        raise RuntimeError(
            f"the Credit Commons node did not start (exit {started.returncode}):\n{started.stderr}"
        )
    try:
        yield CreditCommonsNode(
            url=started.stdout.split()[1],
            node_name=node_name,
            accounts={a.name: a for a in accounts},
            folder=folder,
        )
    finally:
        subprocess.run(
            [peer / "stop", "--dir", folder],
            capture_output=True,
            timeout=STOP_TIMEOUT_S,
            check=False,
        )


# The node's OpenAPI file, corrected where it is known to be wrong about the node.


def node_spec() -> OpenAPI:
    spec = yaml.safe_load((require_peer() / "openapi.yml").read_text())
    return OpenAPI.from_dict(corrected_spec(spec))


def corrected_spec(original: dict[str, Any]) -> dict[str, Any]:
    """The spec as the node really behaves. Each change names the discrepancy."""
    # 0. Some status codes and example keys are unquoted, so YAML reads them as integers;
    #    OpenAPI wants strings.
    spec = _string_keys(copy.deepcopy(original))
    paths = spec["paths"]
    schemas = spec["components"]["schemas"]
    violation = {"$ref": "#/components/responses/CCViolation"}

    # 1. The spec says GET /transaction/{uuid}/{format}; the node serves
    #    /transaction/{format}/{uuid} (a path parameter cannot be optional either).
    get_one = paths.pop("/transaction/{uuid}/{format}")["get"]
    for parameter in get_one["parameters"]:
        if parameter.get("in") == "path":
            parameter["required"] = True
    paths["/transaction/{format}/{uuid}"] = {"get": get_one}

    # 2. Filtering: the spec says GET /transaction answering {entry id: uuid}; the node
    #    serves GET /transaction/{format} answering a list of transactions, and takes
    #    `involving` as an account name, not an integer.
    filtering = paths["/transaction"].pop("get")
    for parameter in filtering["parameters"]:
        if parameter["name"] == "involving":
            parameter["schema"] = {"type": "string"}
    filtering["parameters"].append(
        {
            "name": "format",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "enum": ["full", "entry"]},
        }
    )
    filtering["responses"]["200"]["content"]["application/json"]["schema"] = {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Transaction"},
    }
    paths["/transaction/{format}"] = {"get": filtering}

    # 3. GET /workflows answers {node name: [Workflow]} (the spec's `properties:
    #    additionalProperties:` checks nothing), `creation.by` is a list of relations, not
    #    a string, `active` is "1"/"0", not a boolean, and `states` maps each state to its
    #    transitions (PHP writes an empty one as []). A wrong key is a 400 it doesn't list.
    workflows = paths["/workflows"]["get"]
    workflows["responses"]["200"]["content"]["application/json"]["schema"] = {
        "type": "object",
        "additionalProperties": {
            "type": "array",
            "items": {"$ref": "#/components/schemas/Workflow"},
        },
    }
    workflows["responses"]["400"] = violation
    workflow = schemas["Workflow"]
    workflow["required"] = ["id", "active", "creation", "states"]
    workflow["properties"]["id"] = {"type": "string"}
    workflow["properties"]["active"] = {"type": "string", "enum": ["0", "1"]}
    workflow["properties"]["states"] = {"type": "object"}
    workflow["properties"]["creation"]["properties"]["by"] = {
        "type": "array",
        "items": {"type": "string"},
    }
    workflow["properties"]["creation"]["required"] = ["by", "state"]

    # 4. Not about the node, but invalid OpenAPI that the loader refuses: a string
    #    parameter defaulting to the boolean false, a content without a schema.
    for parameter in paths["/accounts/filter/{fragment}"]["get"]["parameters"]:
        if parameter["name"] == "tree":
            parameter["schema"]["default"] = "false"
    trunkwards = paths["/trunkwards"]["get"]["responses"]["200"]["content"]["application/json"]
    paths["/trunkwards"]["get"]["responses"]["200"]["content"]["application/json"] = {
        "schema": {"type": trunkwards["type"], "items": trunkwards["items"]}
    }
    return spec


def _string_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _string_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_string_keys(v) for v in value]
    return value


# Recording what the client and the node say, to check it against the spec.


@dataclass
class Exchange:
    request: httpx.Request
    response: httpx.Response


@dataclass
class RecordingTransport(httpx.BaseTransport):
    """An httpx transport that records every request with its answer."""

    inner: httpx.BaseTransport = field(default_factory=httpx.HTTPTransport)
    exchanges: list[Exchange] = field(default_factory=list)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        response.read()
        self.exchanges.append(Exchange(request, response))
        return response

    def close(self) -> None:
        self.inner.close()


class OpenAPIRequest:
    """An httpx request as openapi-core's Request protocol wants it."""

    def __init__(self, request: httpx.Request) -> None:
        url = urlsplit(str(request.url))
        self.host_url = f"{url.scheme}://{url.netloc}"
        self.path = url.path
        self.method = request.method.lower()
        self.body = request.content or None
        self.content_type = request.headers.get("content-type", "")
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(
                [(k, v) for k, values in parse_qs(url.query).items() for v in values]
            ),
            header=Headers(dict(request.headers)),
            cookie=ImmutableMultiDict(),
        )


class OpenAPIResponse:
    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.headers = Headers(dict(response.headers))
        self.content_type = response.headers.get("content-type", "")
        # The node appends PHP warnings as HTML after some JSON error bodies (a bug of
        # the node the client works around); the JSON before them is what is checked.
        data = response.content
        cut = data.find(b"<br />\n<b>Warning</b>")
        self.data = data[:cut] if cut > 0 else data


def spec_violations(spec: OpenAPI, exchanges: list[Exchange]) -> list[str]:
    """What in these exchanges the (corrected) spec does not allow, one line each."""
    found = []
    for exchange in exchanges:
        request = OpenAPIRequest(exchange.request)
        where = f"{exchange.request.method} {exchange.request.url}"
        try:
            spec.validate_request(request)
        except Exception as error:  # openapi-core raises several unrelated classes
            found.append(f"request {where}: {error!r} {getattr(error, '__cause__', '')!r}")
        try:
            spec.validate_response(request, OpenAPIResponse(exchange.response))
        except Exception as error:
            found.append(
                f"response {exchange.response.status_code} to {where}: {error!r} "
                f"{getattr(error, '__cause__', '')!r}"
            )
    return found
