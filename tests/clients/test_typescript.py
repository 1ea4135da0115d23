"""The TypeScript client (clients/typescript), tested by Node's test runner against the
directory served over real HTTP on 127.0.0.1, with ads seeded through the API.

This module installs the package's locked dependencies (npm ci) when they are missing or
older than package-lock.json, builds it with tsc, seeds the data, and runs `npm test`
with where the directory is and what was seeded; the assertions are in the node tests
(clients/typescript/test/)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from tests.factories import ad_payload
from tests.live import LiveDirectory, live_directory

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "typescript"
NPM_TIMEOUT_S = 240

BRUSSELS = {"lat": 50.8503, "lon": 4.3517}
KM_PER_DEGREE_OF_LATITUDE = 111.2
# Public ads north of the point, 0.15, 0.45, 0.75 ... km away: 0.15 km from any whole or
# half kilometre, far more than distances are rounded (0.1 km), so a radius of 1 or 2 km
# has no ad on its edge. Enough of them for several pages.
NEARBY_ADS = 23
FIRST_KM, SPACING_KM = 0.15, 0.3
FAR_KM = 60.0
# Low enough that the node test reaches it in a few searches.
RATE_LIMIT = "3 per hour"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are needed to test the TypeScript client (clients/typescript)",
)


def run_npm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["npm", "--silent", *args],
        cwd=PACKAGE,
        env=env,
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT_S,
    )


def assert_succeeded(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited with {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )


@pytest.fixture(scope="module")
def installed() -> Path:
    """The package's dependencies, exactly as locked."""
    # npm ci writes node_modules/.package-lock.json: older than the lock means stale.
    installed_lock = PACKAGE / "node_modules" / ".package-lock.json"
    lock = PACKAGE / "package-lock.json"
    if not installed_lock.exists() or installed_lock.stat().st_mtime < lock.stat().st_mtime:
        assert_succeeded(run_npm("ci", "--no-audit", "--no-fund"))
    return PACKAGE


@pytest.fixture(scope="module")
def built(installed) -> Path:
    assert_succeeded(run_npm("run", "build"))
    return installed


@pytest.fixture
def rate_limited(migrated) -> Iterator[LiveDirectory]:
    """A second app on the same database whose anonymous searches run out quickly."""
    with live_directory(replace(migrated, search_rate_limit_anonymous=RATE_LIMIT)) as server:
        yield server


def north_of(point: dict, km: float) -> dict:
    # Six decimals (about 0.1 m), as the directory stores them: the tests compare exactly.
    return {"lat": round(point["lat"] + km / KM_PER_DEGREE_OF_LATITUDE, 6), "lon": point["lon"]}


def put_ad(http: httpx.Client, external_id: str, payload: dict) -> str:
    response = http.put(f"/v1/ads/{external_id}", json=payload)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def seed(base_url: str, portal) -> dict:
    """Ads around Brussels, through the API; what the node tests need to know about them."""
    public = []
    with httpx.Client(base_url=base_url, headers=portal.headers) as http:
        # Published in a scrambled order, so that nearest first is not the order of creation.
        for rank in sorted(range(NEARBY_ADS), key=lambda rank: (rank * 7) % NEARBY_ADS):
            km = FIRST_KM + rank * SPACING_KM
            location = north_of(BRUSSELS, km)
            traits = ("want",) if rank % 3 == 0 else ()
            ad_id = put_ad(
                http, f"near-{rank}", ad_payload(*traits, title=f"Nearby {rank}", location=location)
            )
            kind = "want" if traits else "offer"
            public.append({"id": ad_id, "distance_km": km, "kind": kind, **location})
        portal_only = put_ad(
            http,
            "members-only",
            ad_payload("portal_only", title="For members", location=north_of(BRUSSELS, 0.3)),
        )
        hidden = put_ad(http, "hidden", ad_payload("hidden", title="Somewhere in town"))
        far = put_ad(http, "far", ad_payload(title="Far away", location=north_of(BRUSSELS, FAR_KM)))
    public.sort(key=lambda ad: ad["distance_km"])
    return {
        "point": BRUSSELS,
        "public": public,
        "portal_only_id": portal_only,
        "hidden_id": hidden,
        "far": {"id": far, "distance_km": FAR_KM},
        "pages_of_5": math.ceil(NEARBY_ADS / 5),
    }


def test_node_suite_passes_against_the_live_directory(
    built, live, rate_limited, make_portal, tmp_path
):
    portal = make_portal()
    seed_file = tmp_path / "seed.json"
    seed_file.write_text(json.dumps(seed(live.url, portal), indent=2))

    result = run_npm(
        "test",
        env={
            **os.environ,
            "DIRECTORY_URL": live.url,
            "DIRECTORY_PORTAL_KEY": portal.key,
            "DIRECTORY_RATE_LIMITED_URL": rate_limited.url,
            "DIRECTORY_SEED_FILE": str(seed_file),
        },
    )

    assert_succeeded(result)


def test_committed_types_match_openapi_yaml(installed):
    # openapi-typescript --check generates from openapi.yaml and compares, writing nothing.
    result = run_npm("run", "check-schema")

    assert result.returncode == 0, (
        "clients/typescript/src/schema.ts is stale: run `npm run generate` in "
        f"clients/typescript\n{result.stdout}{result.stderr}"
    )
