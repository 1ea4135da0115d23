"""What the API's layers cost on the relay's hot route: messages accepted per second by
the directory, by bench/bare_relay.py (the same statements and rules on Flask + psycopg
alone: no flask-smorest, marshmallow, SQLAlchemy or request hooks) and by the floor
(bench/minimal_relay.py: one insert and a NOTIFY), in turns.

    .venv/bin/python bench/relay_layers.py [--turns 6] [--turn 5] [--clients 8]

Every message goes into an existing conversation (bare_relay.py has no other route). The
directory and bare_relay.py write the same tables and share one `directory worker`, which
delivers both to the same receivers; each has --clients clients of its own, in
conversations of their own. Each turn starts once the last one's messages have all
arrived, and the order of the three changes from turn to turn. About 2 minutes. Prints
figures; asserts nothing."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import database, gunicorn_app
from bench.relay import (
    DEFAULT_WORKERS,
    WARM_UP_S,
    Side,
    cpu_per_message,
    directory_relay,
    floor_relay,
)
from directory.db import libpq_url


def same_shape(a, b) -> bool:
    """True when two JSON values have the same keys at every level."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_shape(a[key], b[key]) for key in a)
    return type(a) is type(b) or a is None or b is None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=6, help="turns of each (default 6)")
    parser.add_argument("--turn", type=float, default=5, help="seconds of a turn (default 5)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="directory-bench-layers-") as folder,
        database() as url,
        directory_relay(
            url, clients=2 * args.clients, worker_log=Path(folder) / "worker.log"
        ) as relay,
        gunicorn_app(
            "bench.bare_relay:app",
            workers=DEFAULT_WORKERS,
            env={"BENCH_DATABASE_URL": libpq_url(url)},
        ) as bare_server,
        floor_relay(url, clients=args.clients) as floor,
    ):
        ours = Side(relay.writers(args.clients, contacts=False), relay.receivers, relay.meter)
        bare = Side(
            relay.writers(
                args.clients, base_url=bare_server.base_url, first=args.clients, contacts=False
            ),
            relay.receivers,
            lambda: relay.meter(api=bare_server),
        )
        # The same request to each: both answers must have the same shape.
        path, key, payload = ours.writers[0].next_message()
        answers = [side.writers[0].api.call("POST", path, key, payload) for side in (ours, bare)]
        if not all(status == 201 for status, _ in answers) or not same_shape(
            answers[0][1], answers[1][1]
        ):
            raise SystemExit(f"bare_relay.py does not answer as the directory does: {answers}")
        sides = {"directory": ours, "bare route": bare, "floor": floor}
        for side in sides.values():
            side.warm_up(WARM_UP_S)
        order = list(sides)
        for turn in range(args.turns):
            for name in order[turn % 3 :] + order[: turn % 3]:
                sides[name].take_turn(args.turn)
        ours.close()
        bare.close()

    print(f"{args.turns} turns of {args.turn:g} s each, {args.clients} clients, "
          "every message into an existing conversation")  # fmt: skip
    for name, side in sides.items():
        accepted = len(side.tally.accepted)
        errors = f"; refused/failed {dict(side.tally.errors)}" if side.tally.errors else ""
        print(f"  {name + ':':12s} {side.accepted_per_s:5,.0f} messages accepted/s (turns "
              f"{min(side.per_turn):,.0f}-{max(side.per_turn):,.0f}); CPU per message: "
              f"{cpu_per_message(side.cpu, accepted)}, bench clients + receivers "
              f"{side.cpu['bench clients + receivers'] / accepted * 1000:.1f} ms{errors}")  # fmt: skip
    for label, mine, theirs in (
        ("bare route / directory", bare, ours),
        ("directory / floor", ours, floor),
        ("bare route / floor", bare, floor),
    ):
        ratios = [a / b for a, b in zip(mine.per_turn, theirs.per_turn, strict=True)]
        print(f"  {label + ':':23s} {mine.accepted_per_s / theirs.accepted_per_s:.2f} over "
              f"all turns; turn by turn {min(ratios):.2f}-{max(ratios):.2f} "
              f"(median {statistics.median(ratios):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
