"""What search structures would cost ingestion: the time PostgreSQL takes to insert
1,000 ads as `insert_rows` sends them, as the schema is now and with each structure a
full-text search would add (each in a transaction that is rolled back).

    .venv/bin/python bench/index_cost.py [--rounds 7]

Prints figures; asserts nothing."""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
import psycopg

from bench.common import ad, database
from directory.db import libpq_url
from directory.geo import Point, Privacy, publishable_point

CANDIDATES = [
    (
        "generated tsvector (unaccented title and body)",
        [
            "CREATE FUNCTION bench_unaccent(text) RETURNS text LANGUAGE sql IMMUTABLE "
            "PARALLEL SAFE STRICT AS $$ SELECT public.unaccent('public.unaccent'::regdictionary, $1) $$",
            "ALTER TABLE ads ADD COLUMN bench_document tsvector GENERATED ALWAYS AS ("
            "setweight(to_tsvector('simple'::regconfig, bench_unaccent(title)), 'A') || "
            "setweight(to_tsvector('simple'::regconfig, bench_unaccent(body)), 'B')) STORED",
        ],
    ),
    ("its GIN index", ["CREATE INDEX bench_document_gin ON ads USING gin (bench_document)"]),
    (
        "trigram GIN index on title",
        ["CREATE INDEX bench_trgm ON ads USING gin (title gin_trgm_ops)"],
    ),
]


def rows(rng: random.Random, portal_id: int) -> list[dict]:
    expires = (datetime.now(UTC) + timedelta(days=90)).isoformat()
    result = []
    for index in range(1000):
        body = ad(rng, index)
        location = body.get("location")
        point = publishable_point(
            Point(location["lat"], location["lon"]) if location else None,
            Privacy(body["privacy"]),
        )
        result.append(
            {
                "id": str(uuid.uuid4()), "portal_id": portal_id,
                "external_id": f"bench-{uuid.uuid4().hex}", "kind": body["kind"],
                "title": body["title"], "body": body["body"], "category": body["category"],
                "tags": body["tags"], "location": point and point.as_wkt(),
                "privacy": body["privacy"], "visibility": "public",
                "currencies": body["currencies"], "language": body["language"],
                "images": [], "expires_at": expires, "member": body["member"],
                "content_hash": "0" * 32,
            }
        )  # fmt: skip
    return result


def best_insert_ms(conn, rng, portal_id, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        batch = rows(rng, portal_id)
        columns = ", ".join(batch[0])
        document = orjson.dumps(batch).decode()
        conn.execute("SAVEPOINT round")
        started = time.perf_counter()
        conn.execute(
            f"INSERT INTO ads ({columns}) SELECT {columns} "
            "FROM json_populate_recordset(NULL::ads, %s::json)",
            (document,),
        )
        best = min(best, time.perf_counter() - started)
        conn.execute("ROLLBACK TO SAVEPOINT round")
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(11)
    with database() as url, psycopg.connect(libpq_url(url)) as conn:
        portal_id = conn.execute(
            "INSERT INTO portals (slug, name) VALUES ('bench', 'Bench') RETURNING id"
        ).fetchone()[0]
        conn.commit()
        baseline = best_insert_ms(conn, rng, portal_id, args.rounds)
        print(f"{'schema as it is':50} {baseline:6.1f} ms per 1,000 ads")
        for label, statements in CANDIDATES:
            for statement in statements:
                conn.execute(statement)
            cost = best_insert_ms(conn, rng, portal_id, args.rounds)
            print(f"{'+ ' + label:50} {cost:6.1f} ms  ({cost / baseline - 1:+.0%})")
        conn.rollback()


if __name__ == "__main__":
    main()
