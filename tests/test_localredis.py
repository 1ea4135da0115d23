"""`directory localredis`, the private Redis of `make run` (the rate limits' counters):
it stops its own server only, and says why it cannot start one, without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from directory import localredis


def command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "directory", "localredis", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def folder():
    folder = Path(tempfile.mkdtemp(prefix="directory-test-redis-"))
    try:
        yield folder
    finally:
        localredis.destroy(folder)


def test_stop_leaves_alone_a_process_that_took_the_pid_of_a_server_gone(folder):
    # redis.pid outlives a server killed or a machine rebooted, and its number is then
    # any process's: `localredis stop` (and `make clean`) killed it.
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (folder / "redis.pid").write_text(f"{bystander.pid}\n")
        (folder / "port").write_text("1")

        result = command("stop", str(folder))

        assert bystander.poll() is None, "the bystander was killed"
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert not (folder / "redis.pid").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_stop_stops_the_server_it_started(folder):
    server = localredis.start(folder)
    pid = int((folder / "redis.pid").read_text())

    result = command("stop", str(folder))

    assert result.returncode == 0, result.stderr
    assert not Path(f"/proc/{pid}").exists()
    assert not localredis._answers(server.port)


def test_start_without_redis_server_says_so_without_a_traceback(folder):
    result = command("start", str(folder), env={"PATH": "/nonexistent"})

    assert result.returncode == 1
    assert result.stderr == ("Error: redis-server is not installed (Debian package redis-server)\n")


def test_start_in_a_folder_that_cannot_be_made_says_so_without_a_traceback(folder):
    (folder / "file").write_text("")

    result = command("start", str(folder / "file" / "redis"))

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"Error: cannot use {folder / 'file' / 'redis'}: ")
