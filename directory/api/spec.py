"""What the spec says of answers: every field of an answer is always there.

Marshmallow schemas mark `required` for what a request must send; the schemas that only
ever describe answers would otherwise have every property optional, and the clients
generated from the spec (openapi-typescript, msgspec models) would make callers check
each field of every answer for absence. So the properties of schemas used only in
answers are all required, but for those whose field metadata carries
OPTIONAL_ANSWER_FIELD (present only when asked for). A field without a value is there as
null (allow_none), never left out; the tests check every answer against the spec. Such
schemas are marked ANSWER_ONLY, for the Python client's generator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from apispec import APISpec

# Field metadata (an OpenAPI extension, so it also shows in the spec) of an answer field
# that may be absent.
OPTIONAL_ANSWER_FIELD = "x-present-when-asked"
# Marks the schemas that only answers use: the Python client's generator reads it.
ANSWER_ONLY = "x-answer-only"
REF_PREFIX = "#/components/schemas/"
METHODS = {"get", "put", "post", "patch", "delete"}


def require_answer_fields(spec: APISpec) -> None:
    schemas = spec.components.schemas
    for name in sorted(_answer_only_schemas(spec.to_dict())):
        schemas[name][ANSWER_ONLY] = True
        properties = schemas[name].get("properties", {})
        required = [
            field for field, definition in properties.items()
            if not definition.get(OPTIONAL_ANSWER_FIELD)
        ]  # fmt: skip
        if required:
            schemas[name]["required"] = required


def _answer_only_schemas(document: dict) -> set[str]:
    """Names of the component schemas that only answers use, in an OpenAPI document."""
    asked, answered = set(), set()
    for item in document["paths"].values():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            asked |= _reachable(
                [operation.get("parameters"), operation.get("requestBody")], document
            )
            answered |= _reachable([operation.get("responses")], document)
    answered |= _reachable([document["components"].get("responses")], document)
    return answered - asked


def _reachable(roots: list[Any], document: dict) -> set[str]:
    """Names of the component schemas that `roots` refer to, directly or through others."""
    found: set[str] = set()
    pending = [ref for root in roots for ref in _refs(root)]
    while pending:
        ref = pending.pop()
        if ref.startswith("#/components/responses/"):
            pending += _refs(document["components"]["responses"][ref.rsplit("/", 1)[1]])
            continue
        if not ref.startswith(REF_PREFIX):
            continue
        name = ref[len(REF_PREFIX) :]
        if name not in found:
            found.add(name)
            pending += _refs(document["components"]["schemas"][name])
    return found


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)
