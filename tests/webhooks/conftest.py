"""What the tests of outbound HTTP share: certificates for https peers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, Path]:
    """Self-signed certificates (with their keys) for two host names."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    folder = tmp_path_factory.mktemp("certificates")
    made = {}
    for name in ("localhost", "other.example"):
        key, certificate = folder / f"{name}.key", folder / f"{name}.crt"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-nodes", "-days", "2", "-subj", f"/CN={name}"),
                *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
                *("-addext", f"subjectAltName=DNS:{name}", "-keyout", key, "-out", certificate),
            ],
            check=True,
            capture_output=True,
        )
        made[name] = folder / f"{name}.pem"
        made[name].write_bytes(key.read_bytes() + certificate.read_bytes())
    return made
