"""A private Redis in a folder, for `make run` and the tests: the shared store that
keeps rate limits right across every gunicorn worker process.

Like localdb, it listens on a free loopback port only, and is safe to start again:
a running server in the folder is reused."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from directory.localdb import free_port

START_TIMEOUT_S = 10


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


def start(folder: Path) -> LocalRedis:
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    port_file = folder / "port"
    if port_file.exists():
        port = int(port_file.read_text())
        if _answers(port):
            return LocalRedis(folder, port)
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed (Debian package redis-server)")
    port = free_port()
    subprocess.run(
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
        check=True,
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start; see {folder / 'redis.log'}")
        time.sleep(0.05)
    port_file.write_text(str(port))
    return LocalRedis(folder, port)


def stop(folder: Path) -> None:
    pid_file = folder.resolve() / "redis.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    subprocess.run(["kill", str(pid)], check=False, capture_output=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def destroy(folder: Path) -> None:
    stop(folder)
    shutil.rmtree(folder, ignore_errors=True)
