"""What the limit on a portal's stored ads costs a write: a PUT that creates an ad counts
the portal's ads (services/ads.py lock_and_count_ads), a PUT that changes one does not.
Both are timed, in-process, on portals of growing size; the difference is the count.

    .venv/bin/python bench/ad_limit.py [--sizes 1000,10000,100000] [--writes 200]

The ads go in through the API's batches, then the table is vacuumed and analysed, as
autovacuum leaves a table at rest. About two minutes at the default sizes. Prints
figures; asserts nothing."""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text

from bench.common import ad, database
from directory import create_app
from directory.db import unit_of_work
from directory.services.ads import count_ads
from directory.services.portals import create_portal
from directory.settings import Settings

BATCH = 1000


def timed(call, times: int) -> tuple[float, float]:
    """p50 and p95 of `call(n)` for n in range(times), in milliseconds."""
    took = []
    for number in range(times):
        started = time.perf_counter()
        call(number)
        took.append((time.perf_counter() - started) * 1000)
    took.sort()
    return statistics.median(took), took[int(len(took) * 0.95)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--writes", type=int, default=200)
    options = parser.parse_args()
    sizes = [int(size) for size in options.sizes.split(",")]
    rng = random.Random(7)
    with database() as url:
        settings = Settings(environment="test", database_url=url, portal_max_ads=10**9)
        app = create_app(settings)
        wiring = app.extensions["directory"]
        client = app.test_client()
        print(
            f"{'ads stored':>10}  {'PUT creating':>18}  {'PUT changing':>18}  {'count alone':>12}"
        )
        for size in sizes:
            with unit_of_work(wiring.session_factory) as session:
                portal, key = create_portal(session, slug=f"portal-{size}", name="Bench")
            headers = {"Authorization": f"Bearer {key.key}"}
            for start in range(0, size, BATCH):
                items = [
                    {"external_id": f"ad-{index}", "ad": ad(rng, index)}
                    for index in range(start, min(start + BATCH, size))
                ]
                answer = client.post("/v1/ads/batch", json={"items": items}, headers=headers)
                assert answer.status_code == 200, answer.json
            with wiring.engine.connect().execution_options(
                isolation_level="AUTOCOMMIT"
            ) as connection:
                connection.execute(text("VACUUM ANALYZE ads"))
            body = ad(rng, 0)

            def create(number: int, headers=headers, body=body) -> None:
                answer = client.put(f"/v1/ads/new-{number}", json=body, headers=headers)
                assert answer.status_code == 201, answer.json

            def change(number: int, headers=headers, body=body) -> None:
                changed = body | {"title": f"Changed {number}"}
                answer = client.put(f"/v1/ads/ad-{number}", json=changed, headers=headers)
                assert answer.status_code == 200, answer.json

            def count(_number: int, portal_id=portal.id) -> None:
                with unit_of_work(wiring.session_factory) as session:
                    count_ads(session, portal_id=portal_id)

            timed(create, 10)  # warm-up, not counted (ads new-0 … new-9 are made again)
            creating = timed(lambda n: create(n + 10), options.writes)
            changing = timed(change, options.writes)
            counting = timed(count, options.writes)
            print(
                f"{size:>10,}  {creating[0]:6.2f} ms (p95 {creating[1]:5.2f})"
                f"  {changing[0]:6.2f} ms (p95 {changing[1]:5.2f})  {counting[0]:9.2f} ms"
            )
        wiring.close()


if __name__ == "__main__":
    main()
