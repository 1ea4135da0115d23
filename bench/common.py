"""Shared by the benchmarks: a throwaway database, a gunicorn server, realistic ads.
Everything runs on this machine; all traffic goes to 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg

from directory import localdb
from directory.db import libpq_url
from directory.localdb import free_port

ROOT = Path(__file__).resolve().parents[1]

TOWNS = [
    ("Lyon", 45.764, 4.8357, "fr"),
    ("Freiburg", 47.999, 7.842, "de"),
    ("London", 51.4613, -0.1156, "en"),
    ("Barcelona", 41.3874, 2.1686, "es"),
    ("Buenos Aires", -34.6037, -58.3816, "es"),
    ("Cape Town", -33.9249, 18.4241, "en"),
    ("Portland", 45.5152, -122.6784, "en"),
    ("Melbourne", -37.8136, 144.9631, "en"),
    ("Tokyo", 35.6762, 139.6503, "ja"),
    ("Nairobi", -1.2921, 36.8219, "sw"),
]
CATEGORIES = [
    "food.produce", "food.baked", "household.furniture", "garden.plants", "care.childcare",
    "education.languages", "home.repairs", "tech.it-support", "transport.rides", "space.rooms",
]  # fmt: skip
PRIVACY = ["approximate"] * 6 + ["exact"] * 2 + ["area", "hidden"]


def ad(rng: random.Random, index: int) -> dict:
    town, lat, lon, language = rng.choice(TOWNS)
    privacy = rng.choice(PRIVACY)
    category = rng.choice(CATEGORIES)
    body = {
        "kind": rng.choice(["offer", "offer", "want"]),
        "title": f"{category.split('.')[1].replace('-', ' ').title()} in {town} #{index}",
        "body": "Available most weekends; happy to trade for hours or local currency. " * 3,
        "category": category,
        "tags": rng.sample(["weekend", "organic", "kids", "tools", "bike", "help"], 2),
        "privacy": privacy,
        "currencies": rng.choice([["EUR", "HOUR"], ["HOUR"], ["GIFT"], ["EUR"]]),
        "language": language,
        "member": f"m-{rng.randrange(1, 50_000)}",
    }
    if privacy != "hidden":
        body["location"] = {"lat": lat + rng.gauss(0, 0.05), "lon": lon + rng.gauss(0, 0.05)}
    return body


# Sized as a production server would be for a database of a few GB on this machine
# (24 GiB): the defaults (128 MB of shared buffers) are for a laptop.
SERVER_SETTINGS = {"shared_buffers": "2GB", "effective_cache_size": "8GB", "work_mem": "16MB"}


@contextlib.contextmanager
def database():
    """A throwaway PostgreSQL + PostGIS cluster, migrated; yields its URL."""
    folder = Path(tempfile.mkdtemp(prefix="directory-bench-pg-"))
    cluster = localdb.start(folder, server_settings=SERVER_SETTINGS)
    try:
        subprocess.run(
            [sys.executable, "-m", "directory", "migrate"],
            check=True,
            env={**os.environ, "DIRECTORY_DATABASE_URL": cluster.url},
            stdout=subprocess.DEVNULL,
        )
        yield cluster.url
    finally:
        localdb.destroy(folder)


@contextlib.contextmanager
def gunicorn(database_url: str, *, workers: int = 2, env: dict[str, str] | None = None):
    """The API under gunicorn on a free loopback port, counting rate limits in a private
    Redis as in production; yields the process, its base URL in .base_url and its Redis
    server's process id in .redis_pid. `env` adds or overrides DIRECTORY_* settings."""
    from directory import localredis

    redis_folder = Path(tempfile.mkdtemp(prefix="directory-bench-redis-"))
    redis_url = localredis.start(redis_folder).url
    try:
        with gunicorn_app(
            "directory.wsgi:app",
            workers=workers,
            env={
                "DIRECTORY_DATABASE_URL": database_url,
                "DIRECTORY_LOG_LEVEL": "WARNING",
                "DIRECTORY_RATE_LIMIT_STORAGE_URL": redis_url,
                # A benchmark is one client asking as fast as it can: not what limits are for.
                "DIRECTORY_SEARCH_RATE_LIMIT_ANONYMOUS": "1000000 per second",
                "DIRECTORY_SEARCH_RATE_LIMIT_PORTAL": "1000000 per second",
                **(env or {}),
            },
        ) as process:
            # Read once gunicorn serves: redis-server writes it just after it listens.
            process.redis_pid = int((redis_folder / "redis.pid").read_text())
            yield process
    finally:
        localredis.destroy(redis_folder)


@contextlib.contextmanager
def gunicorn_app(app: str, *, workers: int, env: dict[str, str]):
    """`app` ("module:variable", answering GET /healthz) under gunicorn on a free loopback
    port, with `env` added to this process's environment; yields the process, its base
    URL in .base_url."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "--workers", str(workers),
            "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
            "--no-control-socket",  # as `directory serve`: one shared path, unused
            app,
        ],
        env={**os.environ, **env},
        cwd=ROOT,
    )  # fmt: skip
    try:
        process.base_url = wait_until_serving(process, port, name=app)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_until_serving(process: subprocess.Popen, port: int, *, name: str) -> str:
    """The server's base URL once its /healthz answers (within 30 s)."""
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1).read()
            return base
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{name} did not start") from None
            time.sleep(0.1)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def machine_busy_s() -> float:
    """CPU seconds all processes of the machine have used so far."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def postmaster_pid(database_url: str) -> int:
    """The benchmark cluster's server process (its backends are its children)."""
    with psycopg.connect(libpq_url(database_url)) as connection:
        data = connection.execute("SHOW data_directory").fetchone()[0]
    return int((Path(data) / "postmaster.pid").read_text().split()[0])


class CpuMeter:
    """CPU seconds each part of the set-up uses from now until stop(), per process (a
    process that ends meanwhile is not counted). What the machine did besides shows as
    "other": another program running during the benchmark would skew its figures."""

    def __init__(self, parts: dict[str, Callable[[], list[int]]]) -> None:
        self.parts = parts
        self.started = {name: self._read(list_pids()) for name, list_pids in parts.items()}
        self.machine = machine_busy_s()

    def stop(self) -> dict[str, float]:
        used = {}
        for name, list_pids in self.parts.items():
            before = self.started[name]
            used[name] = sum(
                seconds - before.get(pid, 0.0) for pid, seconds in self._read(list_pids()).items()
            )
        used["other"] = max(0.0, machine_busy_s() - self.machine - sum(used.values()))
        return used

    @staticmethod
    def _read(pids: list[int]) -> dict[int, float]:
        seconds = {}
        for pid in pids:
            with contextlib.suppress(OSError):  # ended meanwhile
                seconds[pid] = process_cpu_s(pid)
        return seconds
