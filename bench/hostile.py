"""What hostile requests cost the API to refuse, against a normal request's cost: each
case of tests/api/test_abuse.py (which asserts the answers, never the timings), sent
in-process through the Flask test client to a throwaway database, with the time it took
before its fix for comparison.

    .venv/bin/python bench/hostile.py [--repeat 3]

Prints the best of --repeat for each case. About a minute. Asserts nothing."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import database
from directory import create_app
from directory.api import LARGE_BODY_BYTES
from directory.db import unit_of_work
from directory.services.portals import create_portal
from directory.settings import Settings

LONG_TEXT = "a" * 50_000
MANY = 1_000_000


def _ad(**changes) -> dict:
    ad = {
        "kind": "offer",
        "title": "Bike repairs",
        "body": "Punctures, brakes, gears.",
        "category": "home.repairs",
        "member": "m-1",
        "privacy": "approximate",
        "location": {"lat": 45.764, "lon": 4.8357},
        "currencies": ["HOUR"],
    }
    return ad | changes


# (what, method, path, JSON body or raw bytes, with the portal's key, cost before its fix)
CASES = [
    ("a normal ad (for comparison)", "PUT", "/v1/ads/n-1", _ad(), True, None),
    ("member of 50,000 characters", "PUT", "/v1/ads/a-1", _ad(member=LONG_TEXT), False,
     "about 15 s"),
    ("contact name of 50,000 characters", "POST", f"/v1/ads/{uuid.uuid4()}/contact",
     {"member": "m-1", "name": LONG_TEXT, "body": "Hello"}, False, "about 15 s"),
    ("a million tags", "PUT", "/v1/ads/a-1", _ad(tags=["x"] * MANY), True, "2-6.5 s"),
    ("half a million images", "PUT", "/v1/ads/a-1", _ad(images=["https://a.b/c"] * (MANY // 2)),
     True, "9.2 s, 30 MB answered"),
    ("a million inbox ids", "POST", "/v1/inbox/ack", {"ids": ["msg_1"] * MANY}, True, "2-9 s"),
    ("an object of a million keys", "PUT", "/v1/ads/a-1", {f"k{n}": 0 for n in range(MANY)},
     True, "4.8 s, 29 MB answered"),
    ("16 MiB without a key", "PUT", "/v1/ads/a-1", b"[" * (16 * 1024 * 1024 - 1), False,
     "read whole first"),
    (f"{LARGE_BODY_BYTES + 1:,} bytes without a key", "POST", "/v1/ads/batch",
     b"[" * (LARGE_BODY_BYTES + 1), False, "read whole first"),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    with database() as url:
        settings = Settings(environment="test", database_url=url)
        app = create_app(settings)
        wiring = app.extensions["directory"]
        with unit_of_work(wiring.session_factory) as session:
            _, key = create_portal(session, slug="bench", name="Bench")
        client = app.test_client()
        print(f"{'request':<40} {'answer':>6} {'best of ' + str(options.repeat):>12}  before")
        for what, method, path, body, keyed, before in CASES:
            headers = {"Authorization": f"Bearer {key.key}"} if keyed else {}
            sent = {"data": body, "content_type": "application/json"}
            if not isinstance(body, bytes):
                sent = {"json": body}
            best = float("inf")
            for _ in range(options.repeat):
                started = time.perf_counter()
                response = client.open(path, method=method, headers=headers, **sent)
                best = min(best, time.perf_counter() - started)
            print(f"{what:<40} {response.status_code:>6} {best * 1000:>9.1f} ms  {before or ''}")
        wiring.close()


if __name__ == "__main__":
    main()
