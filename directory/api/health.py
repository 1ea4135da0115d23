"""Liveness and readiness probes."""

from __future__ import annotations

from flask.views import MethodView
from marshmallow import Schema, fields

from directory.api.blueprint import Blueprint
from directory.api.db import transaction
from directory.services import health

blp = Blueprint("health", __name__, description="Liveness and readiness")


class HealthSchema(Schema):
    status = fields.String(metadata={"description": "ok, or what is wrong"})
    database = fields.String()
    migration = fields.String(allow_none=True)
    expected_migration = fields.String(allow_none=True)


@blp.route("/healthz")
class Liveness(MethodView):
    @blp.response(200, HealthSchema)
    @blp.doc(operationId="healthz")
    def get(self):
        """The process is up (it checks nothing else)"""
        return {"status": "ok"}


@blp.route("/readyz")
class Readiness(MethodView):
    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=HealthSchema, description="Not ready: database or schema")
    @blp.doc(operationId="readyz")
    def get(self):
        """Ready to serve: the database answers and its schema is at the latest migration"""
        try:
            with transaction() as session:
                state = health.readiness(session)
        except Exception as error:
            return {"status": "database unreachable", "database": type(error).__name__}, 503
        return state, (200 if state["status"] == "ok" else 503)
