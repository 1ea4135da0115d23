"""The OpenAPI spec, rendered from the app's routes and schemas."""

from __future__ import annotations

import json
from decimal import Decimal

import yaml

from directory.settings import Settings

# The spec never depends on the database, but the app wants a URL to build its engine
# (which connects lazily, so this one is never dialled).
SPEC_DATABASE_URL = "postgresql+psycopg://spec@127.0.0.1:1/spec"


def render_spec() -> str:
    from directory import create_app

    app = create_app(Settings(database_url=SPEC_DATABASE_URL))
    spec = app.extensions["flask-smorest"]["apis"][""]["ext_obj"].spec.to_dict()
    # Validators' bounds may be Decimals; JSON Schema wants plain numbers.
    spec = json.loads(json.dumps(spec, default=_plain_number))
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100)


def _plain_number(value):
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"cannot put {type(value).__name__} in the spec")
