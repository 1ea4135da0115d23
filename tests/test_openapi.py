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
