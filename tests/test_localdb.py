"""`directory localdb start`, the private cluster of `make run`: when the cluster cannot be
made, the command says why (PostgreSQL's own words, or the folder that blocks) and exits
non-zero, without a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from directory import localdb


def start_command(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "directory", "localdb", "start", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def private_folder():
    """A folder only root may enter (mode 0700), as `mktemp -d` or /root make them."""
    folder = Path(tempfile.mkdtemp(prefix="directory-test-private-"))
    try:
        yield folder
    finally:
        localdb.destroy(folder / "pg")  # were the cluster made after all
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="only run as root does the cluster belong to the postgres user, whom the "
    "folders above it can keep out",
)
def test_start_names_the_folder_the_postgres_user_cannot_enter(private_folder):
    assert private_folder.stat().st_mode & 0o777 == 0o700

    result = start_command(private_folder / "pg")

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"the postgres user cannot enter {private_folder}," in result.stderr
    assert f"chmod o+x {private_folder}" in result.stderr
    assert not (private_folder / "pg" / "data").exists()  # refused before initdb


def test_start_shows_why_initdb_failed():
    folder = Path(tempfile.mkdtemp(prefix="directory-test-pg-bad-"))
    try:
        # A data folder that is not a cluster and not empty: initdb refuses it.
        (folder / "data").mkdir()
        (folder / "data" / "notes.txt").write_text("not a cluster\n")

        result = start_command(folder)

        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        assert "initdb failed" in result.stderr
        assert "exists but is not empty" in result.stderr
    finally:
        localdb.destroy(folder)
