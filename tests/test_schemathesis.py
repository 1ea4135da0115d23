"""Property-based testing of the live app against openapi.yaml with schemathesis:
no generated request may get a 5xx or a response that breaks the spec."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from tests.factories import ad_payload

ROOT = Path(__file__).resolve().parents[1]
MAX_EXAMPLES = int(os.environ.get("DIRECTORY_SCHEMATHESIS_EXAMPLES", "40"))


@pytest.fixture
def live_server(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


@pytest.mark.timeout(900)
def test_schemathesis_finds_no_server_error_nor_spec_violation(
    live_server, client, portal, tmp_path
):
    # Some data, so reads by id and feed pages have something to return.
    for index in range(3):
        client.put(f"/v1/ads/seed-{index}", json=ad_payload(), headers=portal.headers)
    executable = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    result = subprocess.run(
        [
            executable,
            "--config-file",
            str(ROOT / "tests" / "schemathesis.toml"),
            "run",
            str(ROOT / "openapi.yaml"),
            "--url",
            live_server,
            "--header",
            f"Authorization: Bearer {portal.key}",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--phases",
            "examples,coverage,fuzzing",
            "--seed",
            "20261125",
            "--workers",
            "2",
            "--no-color",
            "--generation-database",
            "none",
            "--request-timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=850,
    )
    report = result.stdout[-20000:] + result.stderr[-5000:]
    assert result.returncode == 0, report
