"""Prometheus metrics: GET /metrics, for the operator's scraper and its bearer token."""

from __future__ import annotations

import hmac

from flask import Response
from flask.views import MethodView
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from directory.api.auth import bearer_token
from directory.api.blueprint import Blueprint
from directory.api.db import transaction, wiring
from directory.api.errors import ErrorSchema
from directory.errors import NotFound, Unauthenticated
from directory.services.metrics import Metric, MetricType, operational_metrics

blp = Blueprint("metrics", __name__, description="Metrics for the operator")

# The text format every Prometheus reads (the library's latest, 1.0.0, is newer than many).
TEXT_FORMAT = CONTENT_TYPE_PLAIN_0_0_4
FAMILIES = {MetricType.GAUGE: GaugeMetricFamily, MetricType.COUNTER: CounterMetricFamily}


@blp.route("/metrics")
class Metrics(MethodView):
    @blp.doc(
        operationId="metrics",
        security=[{"MetricsToken": []}],
        responses={
            "200": {
                "description": f"The metrics, in Prometheus' text format ({TEXT_FORMAT})",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            "401": {
                "description": "No token, or not the metrics token",
                "content": {"application/json": {"schema": ErrorSchema}},
            },
            "404": {
                "description": "Metrics are off (DIRECTORY_METRICS_TOKEN is not set)",
                "content": {"application/json": {"schema": ErrorSchema}},
            },
        },
    )
    def get(self):
        """The directory's operational metrics, for Prometheus

        Read from the database at each scrape, so every API process answers the same:
        the relay's deliveries waiting and failed, how long the oldest due one has waited
        for a worker, portals, disabled webhooks, failing websites, open resyncs, table
        sizes and inserts. They tell the relay's traffic, so they are for the operator
        only: `Authorization: Bearer` with DIRECTORY_METRICS_TOKEN (off while it is unset)."""
        require_metrics_token(wiring().settings.metrics_token)
        with transaction() as session:
            metrics = operational_metrics(session)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(metrics))
        return Response(generate_latest(registry), mimetype=None, content_type=TEXT_FORMAT)


def require_metrics_token(expected: str) -> None:
    if not expected:
        # As if there were no such page: nothing to learn about a directory without one.
        raise NotFound("metrics are off: the operator sets DIRECTORY_METRICS_TOKEN to turn them on")
    given = bearer_token()
    header = {"field": "Authorization", "details": {"location": "headers"}}
    if given is None:
        raise Unauthenticated(
            "metrics need the metrics token: Authorization: Bearer <token>", **header
        )
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthenticated("this is not the metrics token", **header)


class _Snapshot(Collector):
    def __init__(self, metrics: list[Metric]):
        self.metrics = metrics

    def collect(self):
        for metric in self.metrics:
            labels = sorted(metric.samples[0][0]) if metric.samples else []
            family = FAMILIES[metric.type](metric.name, metric.help, labels=labels)
            for sample_labels, value in metric.samples:
                family.add_metric([sample_labels[name] for name in labels], value)
            yield family
