"""One database of test ads per module, searched through every configured engine.

A module defines a module-scoped `dataset` fixture that writes its ads through
`search_world` (the API of an app on the PostgreSQL engine). The `searcher` fixture,
parametrised over the engines, then answers the module's tests: the same test
functions run against PostgreSQL always and against Meilisearch when
DIRECTORY_TEST_MEILISEARCH_URL points at a live server (its index is rebuilt from the
module's database once the dataset is written).

The data live in a database of their own, so the per-test TRUNCATE of the shared test
database (tests/conftest.py) leaves them alone and a few hundred ads are written once
per module rather than once per test."""

from __future__ import annotations

import math
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cache

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

from directory import create_app
from directory.__main__ import alembic_config
from directory.db import unit_of_work
from directory.geo import EARTH_RADIUS_M, Point
from directory.models import PortalStatus
from directory.services import portals
from tests import factories
from tests.spec_check import SpecCheckingClient

MEILISEARCH_URL_VARIABLE = "DIRECTORY_TEST_MEILISEARCH_URL"
MEILISEARCH_KEY_VARIABLE = "DIRECTORY_TEST_MEILISEARCH_KEY"
MEILISEARCH_PROBE_TIMEOUT_S = 2
ENGINES = ("postgres", "meilisearch")
# A bound on paging, so an engine whose cursor never ends fails instead of looping.
MAX_PAGES = 500


def destination(origin: Point, bearing_deg: float, distance_km: float) -> Point:
    """The point at this great-circle distance and initial bearing from origin, on the
    sphere PostGIS measures on (longitude wrapped into -180..180)."""
    angle = distance_km * 1000 / EARTH_RADIUS_M
    lat1, lon1, bearing = map(math.radians, (origin.lat, origin.lon, bearing_deg))
    lat2 = math.asin(
        math.sin(lat1) * math.cos(angle) + math.cos(lat1) * math.sin(angle) * math.cos(bearing)
    )
    lon2 = lon1 + math.atan2(
        math.sin(bearing) * math.sin(angle) * math.cos(lat1),
        math.cos(angle) - math.sin(lat1) * math.sin(lat2),
    )
    lon = (math.degrees(lon2) + 180.0) % 360.0 - 180.0
    return Point(max(-90.0, min(90.0, math.degrees(lat2))), lon)


@cache
def meilisearch_or_skip_reason() -> tuple[str, str] | str:
    """(url, key) of a live Meilisearch, or why the Meilisearch runs are skipped."""
    hint = f"set {MEILISEARCH_URL_VARIABLE} to run the Meilisearch contract tests"
    url = os.environ.get(MEILISEARCH_URL_VARIABLE, "").rstrip("/")
    if not url:
        return f"Meilisearch not reachable at (unset): {hint}"
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=MEILISEARCH_PROBE_TIMEOUT_S) as reply:
            if reply.status != 200:
                return f"Meilisearch not reachable at {url} (health {reply.status}): {hint}"
    except (urllib.error.URLError, OSError) as error:
        return f"Meilisearch not reachable at {url} ({error}): {hint}"
    return url, os.environ.get(MEILISEARCH_KEY_VARIABLE, "")


@dataclass
class SearchWorld:
    """A database of its own, written through the API of an app on the PostgreSQL engine."""

    database_url: str
    app: Flask
    client: FlaskClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = self.app.test_client()

    @property
    def wiring(self):
        return self.app.extensions["directory"]

    def make_portal(self, slug: str, **kwargs) -> factories.PortalWithKey:
        with unit_of_work(self.wiring.session_factory) as session:
            return factories.create_portal(session, slug=slug, **kwargs)

    def set_status(self, portal: factories.PortalWithKey, status: PortalStatus) -> None:
        with unit_of_work(self.wiring.session_factory) as session:
            portals.set_status(session, portal_slug=portal.slug, status=status)

    def register_ledger(self, portal: factories.PortalWithKey) -> None:
        ledger = {"protocol": "credit-commons", "url": "http://127.0.0.1:9/", "node": portal.slug}
        response = self.client.patch(
            "/v1/portals/me", json={"ledger": ledger}, headers=portal.headers
        )
        assert response.status_code == 200, response.json

    def batch(self, portal: factories.PortalWithKey, items: list[dict]) -> list[dict]:
        """Apply a batch; every item must succeed. Returns the per-item results."""
        response = self.client.post("/v1/ads/batch", json={"items": items}, headers=portal.headers)
        assert response.status_code == 200, response.json
        results = response.json["results"]
        rejected = [result for result in results if result["status"] == "rejected"]
        assert not rejected, rejected[:3]
        return results

    def own_ads(self, portal: factories.PortalWithKey) -> list[dict]:
        """All of a portal's ads as it sees them (expired and portal-only included)."""
        items, cursor = [], None
        while True:
            query = {"limit": 1000} | ({"cursor": cursor} if cursor else {})
            response = self.client.get(
                "/v1/portals/me/ads", query_string=query, headers=portal.headers
            )
            assert response.status_code == 200, response.json
            items += response.json["items"]
            cursor = response.json["next_cursor"]
            if cursor is None:
                return items


@dataclass
class Searcher:
    """GET /v1/search on one engine's app."""

    engine: str
    client: FlaskClient

    def get(self, params: dict, *, headers: dict | None = None):
        return self.client.get("/v1/search", query_string=params, headers=headers or {})

    def search(self, params: dict, *, headers: dict | None = None) -> dict:
        response = self.get(params, headers=headers)
        assert response.status_code == 200, (params, response.json)
        return response.json

    def search_all(
        self, params: dict, *, headers: dict | None = None, limits: list[int] | None = None
    ) -> tuple[list[dict], list[dict]]:
        """Every hit of a search, following next_cursor to the end (limits, if given, are
        used page after page, cyclically). Returns the hits and the pages' bodies."""
        hits: list[dict] = []
        bodies: list[dict] = []
        cursor = None
        for page in range(MAX_PAGES):
            query = dict(params)
            if limits:
                query["limit"] = limits[page % len(limits)]
            if cursor is not None:
                query["cursor"] = cursor
            body = self.search(query, headers=headers)
            bodies.append(body)
            hits += body["hits"]
            cursor = body["next_cursor"]
            if cursor is None:
                return hits, bodies
            assert body["hits"], f"an empty page with a next_cursor: {params}"
        raise AssertionError(f"more than {MAX_PAGES} pages: {params}")


@pytest.fixture(scope="module")
def search_world(cluster, settings) -> Iterator[SearchWorld]:
    from alembic import command

    name = f"search_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster.admin_url("postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = cluster.admin_url(name).replace("postgresql://", "postgresql+psycopg://")
    app = None
    try:
        command.upgrade(alembic_config(url), "head")
        # The session's settings (test environment, no rate limits) on this database.
        app = create_app(replace(settings, database_url=url))
        app.test_client_class = SpecCheckingClient
        yield SearchWorld(url, app)
    finally:
        if app is not None:
            app.extensions["directory"].close()
        with psycopg.connect(cluster.admin_url("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=ENGINES)
def searcher(request, settings, search_world, dataset) -> Iterator[Searcher]:
    """The module's dataset, searched through one engine (a module using this fixture
    defines `dataset`, which writes its ads before any engine indexes them)."""
    if request.param == "postgres":
        yield Searcher("postgres", search_world.client)
        return
    found = meilisearch_or_skip_reason()
    if isinstance(found, str):
        pytest.skip(found)
    url, key = found
    # An index of its own: never the "ads" index of whatever server the tests point at.
    index = f"directory_test_{uuid.uuid4().hex[:12]}"
    app = create_app(
        replace(
            settings,
            database_url=search_world.database_url,
            search_engine="meilisearch",
            meilisearch_url=url,
            meilisearch_key=key,
            meilisearch_index=index,
        )
    )
    app.test_client_class = SpecCheckingClient
    wiring = app.extensions["directory"]
    try:
        from directory.search import indexing

        indexing.rebuild(wiring)
        yield Searcher("meilisearch", app.test_client())
    finally:
        wiring.search.client.delete_index(index)
        wiring.close()
