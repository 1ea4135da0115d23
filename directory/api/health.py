"""Liveness and readiness probes."""

from __future__ import annotations

from flask.views import MethodView
from marshmallow import Schema, fields

from directory.api.blueprint import Blueprint
from directory.api.db import transaction
from directory.services import health

blp = Blueprint("health", __name__, description="Liveness and readiness")


class LivenessSchema(Schema):
    status = fields.String(metadata={"description": "ok"})


class ReadinessSchema(Schema):
    status = fields.String(metadata={"description": "ok, or what is wrong"})
    database = fields.String(metadata={"description": "ok, or the error reaching it"})
    migration = fields.String(
        allow_none=True, metadata={"description": "The database's schema revision"}
    )
    expected_migration = fields.String(
        allow_none=True, metadata={"description": "The revision this release needs"}
    )


@blp.route("/healthz")
class Liveness(MethodView):
    @blp.response(200, LivenessSchema)
    @blp.doc(operationId="healthz")
    def get(self):
        """The process is up (it checks nothing else)"""
        return {"status": "ok"}


@blp.route("/readyz")
class Readiness(MethodView):
    @blp.response(200, ReadinessSchema)
    @blp.alt_response(503, schema=ReadinessSchema, description="Not ready: database or schema")
    @blp.doc(operationId="readyz")
    def get(self):
        """Ready to serve: the database answers and its schema is at the latest migration"""
        try:
            with transaction() as session:
                state = health.readiness(session)
        except Exception as error:
            unreachable = {
                "status": "database unreachable",
                "database": type(error).__name__,
                "migration": None,
                "expected_migration": None,
            }
            return unreachable, 503
        return state, (200 if state["status"] == "ok" else 503)
