"""docker-compose.yml, the production-like deployment: what serves is started again after
a crash or a reboot, and a stop lets the API and the worker finish what is in flight."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from directory import worker
from directory.__main__ import GRACEFUL_TIMEOUT_S
from directory.webhooks import delivery, fetch

ROOT = Path(__file__).resolve().parents[1]
SERVICES = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
# What runs once, to completion, before the API and the worker start.
ONE_OFF = {"migrate"}


def _seconds(duration: str) -> float:
    """A compose duration ("30s", "1m30s") in seconds."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts is not None and duration, duration
    return int(parts[1] or 0) * 60 + int(parts[2] or 0)


def test_what_serves_is_started_again_after_a_crash_or_a_reboot():
    # Without a restart policy, a worker that exited (the database away when it started)
    # or a host rebooted left the directory down until someone ran `docker compose up`.
    assert {
        name: service.get("restart") for name, service in SERVICES.items() if name not in ONE_OFF
    } == {name: "unless-stopped" for name in SERVICES if name not in ONE_OFF}
    assert all("restart" not in SERVICES[name] for name in ONE_OFF)


def test_a_stop_gives_the_api_time_to_finish_its_requests():
    # Docker kills a container 10 s after SIGTERM unless told otherwise: gunicorn, told
    # to finish its requests within GRACEFUL_TIMEOUT_S, had its requests cut halfway.
    assert _seconds(SERVICES["api"]["stop_grace_period"]) > GRACEFUL_TIMEOUT_S


def test_a_stop_gives_the_worker_time_to_finish_its_round_and_webhooks():
    # On SIGTERM the worker ends the job it runs (a website's fetch, a purge's budget)
    # and records the webhooks in flight; killed before, they are sent again.
    longest_job_s = max(fetch.TOTAL_TIMEOUT_S, worker.PURGE_TIME_BUDGET_S)
    needed_s = longest_job_s + delivery.TOTAL_TIMEOUT_S
    assert _seconds(SERVICES["worker"]["stop_grace_period"]) > needed_s
