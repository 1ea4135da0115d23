"""openapi.yaml is generated from the code; it must never drift from it."""

from __future__ import annotations

from pathlib import Path

import yaml
from openapi_spec_validator import validate

from directory.openapi import render_spec

SPEC_FILE = Path(__file__).resolve().parents[1] / "openapi.yaml"


def test_openapi_yaml_is_up_to_date():
    assert SPEC_FILE.read_text() == render_spec(), (
        "openapi.yaml is stale: run `make openapi` (directory openapi) and commit it"
    )


def operations():
    spec = yaml.safe_load(SPEC_FILE.read_text())
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in {"get", "put", "post", "patch", "delete"}:
                yield path, method, operation


def test_every_operation_has_a_stable_id_and_a_summary():
    ids = [operation.get("operationId") for _, _, operation in operations()]
    assert all(ids), "an operation has no operationId"
    assert len(ids) == len(set(ids))
    assert all(operation.get("summary") for _, _, operation in operations())


def test_every_operation_documents_the_error_envelope():
    for path, method, operation in operations():
        assert "default" in operation["responses"], f"{method} {path}"


def test_every_write_needs_a_portal_key():
    for path, method, operation in operations():
        if method != "get" and path not in {"/healthz", "/readyz"}:
            assert operation.get("security") == [{"PortalKey": []}], f"{method} {path}"


def test_the_spec_is_valid_openapi():
    """Generators (openapi-typescript, openapi-python-client) refuse an invalid spec:
    a response without its required description, say."""
    validate(yaml.safe_load(SPEC_FILE.read_text()))


def test_the_spec_is_served_at_openapi_json(client):
    response = client.get("/openapi.json")

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.json == yaml.safe_load(SPEC_FILE.read_text())


def test_the_served_spec_ignores_query_parameters(client):
    # Exempt from the refusal of unknown parameters: a cache-buster (?v=2) asks for the
    # same document.
    response = client.get("/openapi.json", query_string={"x": "1"})

    assert response.status_code == 200
    assert response.json == client.get("/openapi.json").json


def test_only_the_spec_is_served_no_documentation_ui(app):
    docs = [rule.rule for rule in app.url_map.iter_rules() if rule.endpoint.startswith("api-docs.")]

    assert docs == ["/openapi.json"]
