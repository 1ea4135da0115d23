"""Writes src/directory_client/models.py, the client's types, from the directory's
openapi.yaml with datamodel-code-generator (msgspec Structs). `make openapi` runs it;
tests/clients/test_python_client.py fails when the file is stale.

The generator's version and options are pinned: the same spec always gives the same
file. Answer fields are required in the spec (directory/api/spec.py), so the types say
exactly which fields may be null; those that may be null also default to None here, so
that an answer without one (from a directory of an earlier release, in a federation or
during a rolling deploy) still reads. A release adds answer fields as nullable ones."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SPEC_FILE = HERE.parents[1] / "openapi.yaml"
MODELS_FILE = HERE / "src" / "directory_client" / "models.py"
OPTIONS = [
    "--input-file-type", "openapi",
    "--output-model-type", "msgspec.Struct",
    "--preset", "standard-py311-20261027",
    "--disable-timestamp",
    "--keyword-only",
    "--output-datetime-class", "datetime",
    "--enum-field-as-literal", "all",
    "--use-msgspec-nullable-enum-alias",
    "--collapse-root-models",
    "--formatters", "builtin",
    "--use-default",  # the defaults tolerant_spec gives (no request field is both)
]  # fmt: skip
# Marks the schemas that only answers use (directory/api/spec.py).
ANSWER_ONLY = "x-answer-only"
HEADER = (
    "# Generated from openapi.yaml by clients/python/generate_models.py: do not edit.\n"
    "# ruff: noqa\n"
)


def render_models() -> str:
    with tempfile.TemporaryDirectory() as folder:
        spec = Path(folder) / "openapi.yaml"
        spec.write_text(yaml.safe_dump(tolerant_spec(SPEC_FILE), sort_keys=False))
        output = Path(folder) / "models.py"
        generator = Path(sys.executable).with_name("datamodel-codegen")
        subprocess.run(
            [generator, "--input", spec, "--output", output, *OPTIONS],
            check=True,
            capture_output=True,
        )
        return HEADER + output.read_text()


def tolerant_spec(path: Path) -> dict:
    """The spec with the nullable fields of answers (schemas marked ANSWER_ONLY)
    defaulting to null: still required, they get None as default (--use-default)."""
    document = yaml.safe_load(path.read_text())
    for schema in document["components"]["schemas"].values():
        if not schema.get(ANSWER_ONLY):
            continue
        properties = schema.get("properties", {})
        for definition in properties.values():
            if _nullable(definition):
                definition["default"] = None
    return document


def _nullable(definition: dict[str, Any]) -> bool:
    kind = definition.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    if None in definition.get("enum", []):
        return True
    return any(_nullable(option) for option in definition.get("anyOf", []))


if __name__ == "__main__":
    MODELS_FILE.write_text(render_models())
    print(f"wrote {MODELS_FILE}")
