"""A private PostgreSQL + PostGIS cluster in a folder, for `make run` and the tests.

It runs on a free loopback port with its socket inside the folder, so it never touches
a system cluster. PostgreSQL refuses to run as root, so as root the cluster belongs to
the `postgres` system user that Debian's package creates, which must be able to enter
every folder above the cluster's."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path(os.environ.get("DIRECTORY_PG_BIN", "/usr/lib/postgresql/15/bin"))
DATABASE = "directory"
USER = "directory"
START_TIMEOUT_S = 30
OWNER = "postgres"  # the cluster's owner when started as root


class LocalDbError(RuntimeError):
    """The cluster could not be created, started or stopped; the message says why, in
    PostgreSQL's own words where it gave some."""


@dataclass(frozen=True)
class LocalCluster:
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def admin_url(self, database: str = DATABASE) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"


def free_port() -> int:
    """A TCP port nothing listens on now, on the loopback interface."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_as_owner(args: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    """Run a program as the cluster's owner, its output captured; when `check`, a failure
    raises LocalDbError with what the program said (captured, it would otherwise be lost)."""
    # pg_ctl and initdb refuse to run as root.
    command = ["runuser", "-u", OWNER, "--", *args] if os.geteuid() == 0 else args
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        said = result.stderr.strip() or result.stdout.strip() or "no message"
        raise LocalDbError(
            f"{Path(args[0]).name} failed (exit status {result.returncode}):\n{said}"
        )
    return result


def _give_to_owner(path: Path) -> None:
    if os.geteuid() == 0:
        owner = pwd.getpwnam(OWNER)
        for current in [path, *path.rglob("*")]:
            os.chown(current, owner.pw_uid, owner.pw_gid)


def _check_owner_can_enter(folder: Path) -> None:
    """As root, refuse before initdb when the owner cannot reach `folder`: a clone under
    /root or in a `mktemp -d` folder (mode 0700) is out of its reach, and initdb would fail
    with a message about the data folder rather than the one that blocks. `folder` itself
    is given to the owner; the folders above it must let it in."""
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam(OWNER)
    except KeyError:
        raise LocalDbError(
            f"run as root, the cluster belongs to the {OWNER} user, and there is none: "
            "install postgresql-15 (scripts/system-deps.sh does)"
        ) from None
    if _run_as_owner(["test", "-x", str(folder.parent)], check=False).returncode == 0:
        return
    # `test -x` also fails when a folder higher up blocks: the first one refused is it.
    blocking = next(
        (
            parent
            for parent in reversed(folder.parents)
            if _run_as_owner(["test", "-x", str(parent)], check=False).returncode != 0
        ),
        folder.parent,
    )
    raise LocalDbError(
        f"the {OWNER} user cannot enter {blocking}, so it cannot reach the cluster in "
        f"{folder}: run as root, PostgreSQL runs as {OWNER}, which must be able to enter "
        f"every folder above the cluster's. Clone the project where it can (not under /root "
        f"nor in a private temporary folder), or let it in: chmod o+x {blocking} (and any "
        "folder below it that blocks too)"
    )


def _is_running(data: Path) -> bool:
    if not (data / "postmaster.pid").exists():
        return False
    status = _run_as_owner([str(PG_BIN / "pg_ctl"), "status", "-D", str(data)], check=False)
    return status.returncode == 0


def start(
    folder: Path,
    *,
    port: int | None = None,
    fsync: bool = True,
    server_settings: dict[str, str] | None = None,
) -> LocalCluster:
    """Start (creating it first if needed) the cluster in `folder`; safe to call again:
    a running cluster is only found. `server_settings` are PostgreSQL settings for this
    start (shared_buffers=2GB...). Raises LocalDbError saying why when it cannot."""
    folder = folder.resolve()
    data = folder / "data"
    port_file = folder / "port"
    if _is_running(data):
        return LocalCluster(folder, int(port_file.read_text()))
    folder.mkdir(parents=True, exist_ok=True)
    _check_owner_can_enter(folder)
    if not (data / "PG_VERSION").exists():
        data.mkdir(exist_ok=True)
        _give_to_owner(folder)
        _run_as_owner(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ]
        )
    port = port or free_port()
    port_file.write_text(str(port))
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c max_connections=200"
    if not fsync:
        # Throwaway test clusters: durability is not what is being tested.
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    for name, value in (server_settings or {}).items():
        options += f" -c {name}={value}"
    _give_to_owner(folder)
    log = folder / "postgres.log"
    try:
        _run_as_owner(
            [
                str(PG_BIN / "pg_ctl"),
                "start",
                "-D",
                str(data),
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "-l",
                str(log),
                "-o",
                options,
            ]
        )
    except LocalDbError as error:
        raise LocalDbError(f"{error}\nthe server's log: {log}") from None
    cluster = LocalCluster(folder, port)
    _create_database(cluster)
    return cluster


def _create_database(cluster: LocalCluster) -> None:
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with psycopg.connect(cluster.admin_url("postgres"), autocommit=True) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
                ).fetchone()
                if not exists:
                    conn.execute(f"CREATE DATABASE {DATABASE}")
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def stop(folder: Path) -> None:
    data = folder.resolve() / "data"
    if _is_running(data):
        _run_as_owner([str(PG_BIN / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w"])


def destroy(folder: Path) -> None:
    stop(folder)
    shutil.rmtree(folder, ignore_errors=True)
