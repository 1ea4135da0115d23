"""Writes src/directory_client/models.py, the client's types, from the directory's
openapi.yaml with datamodel-code-generator (msgspec Structs). `make openapi` runs it;
tests/clients/test_python_client.py fails when the file is stale.

The generator's version and options are pinned: the same spec always gives the same
file. Answer fields are required in the spec (directory/api/spec.py), so the types say
exactly which fields may be null."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

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
]  # fmt: skip
HEADER = (
    "# Generated from openapi.yaml by clients/python/generate_models.py: do not edit.\n"
    "# ruff: noqa\n"
)


def render_models() -> str:
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "models.py"
        generator = Path(sys.executable).with_name("datamodel-codegen")
        subprocess.run(
            [generator, "--input", SPEC_FILE, "--output", output, *OPTIONS],
            check=True,
            capture_output=True,
        )
        return HEADER + output.read_text()


if __name__ == "__main__":
    MODELS_FILE.write_text(render_models())
    print(f"wrote {MODELS_FILE}")
