"""A private Redis in a folder, for `make run` and the tests: the shared store that
keeps rate limits right across every gunicorn worker process.

Like localdb, it listens on a free loopback port only, and is safe to start again:
a running server in the folder is reused."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from directory.localdb import free_port

START_TIMEOUT_S = 10


class LocalRedisError(RuntimeError):
    """The server cannot be started; the message says why."""


@dataclass(frozen=True)
class LocalRedis:
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _recorded_port(folder: Path) -> int | None:
    try:
        return int((folder / "port").read_text())
    except (OSError, ValueError):
        return None


def start(folder: Path) -> LocalRedis:
    """Start a server in `folder` (or find it running). Raises LocalRedisError saying why
    when it cannot."""
    folder = folder.resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LocalRedisError(f"cannot use {folder}: {error.strerror or error}") from None
    port = _recorded_port(folder)
    if port is not None and _answers(port):
        return LocalRedis(folder, port)
    server = shutil.which("redis-server")
    if server is None:
        raise LocalRedisError("redis-server is not installed (Debian package redis-server)")
    port = free_port()
    started = subprocess.run(
        [
            server,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(folder),
            "--daemonize", "yes",
            "--pidfile", str(folder / "redis.pid"),
            "--logfile", str(folder / "redis.log"),
            # Counters of rate limits only: nothing worth writing to disk.
            "--save", "",
            "--appendonly", "no",
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if started.returncode != 0:
        said = (started.stdout + started.stderr).strip()
        raise LocalRedisError(
            f"redis-server did not start ({said or f'exit status {started.returncode}'}); "
            f"see {folder / 'redis.log'}"
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(port):
        if time.monotonic() > deadline:
            raise LocalRedisError(f"redis-server did not start; see {folder / 'redis.log'}")
        time.sleep(0.05)
    (folder / "port").write_text(str(port))
    return LocalRedis(folder, port)


def _server_pid(folder: Path) -> int | None:
    """The pid in redis.pid if it is still this folder's server: a redis-server listening
    on the port recorded. The file outlives a server killed, or a machine rebooted, and
    its number may since be any process's."""
    port = _recorded_port(folder)
    try:
        pid = int((folder / "redis.pid").read_text())
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except (OSError, ValueError):
        return None
    if port is None or name != "redis-server" or not title.endswith(f"127.0.0.1:{port}"):
        return None
    return pid


def stop(folder: Path) -> None:
    folder = folder.resolve()
    pid = _server_pid(folder)
    if pid is None:
        (folder / "redis.pid").unlink(missing_ok=True)  # a server gone: nothing to stop
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + START_TIMEOUT_S
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def destroy(folder: Path) -> None:
    stop(folder)
    shutil.rmtree(folder, ignore_errors=True)
