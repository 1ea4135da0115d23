"""What the tests of outbound HTTP share: certificates for https peers, and a peer whose
answer never gets past its head."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from tests.peers import Trickling


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


def _dripped_headers() -> Iterable[bytes]:
    """A status line and a header, a byte at a time, the header's value without end."""
    head = b"HTTP/1.1 200 OK\r\nX-Padding: "
    return itertools.chain((bytes([byte]) for byte in head), itertools.repeat(b"a"))


@pytest.fixture(
    params=[
        (_dripped_headers, 0.05),
        # Informational answers, which http.client skips in a loop of its own.
        (lambda: itertools.repeat(b"HTTP/1.1 100 Continue\r\n\r\n"), 0.001),
    ],
    ids=["dripped-headers", "endless-100-continue"],
)
def endless_head(request) -> Iterator[Trickling]:
    """A server whose answer's status line and headers never end, each read being quick."""
    pieces, pause_s = request.param
    with Trickling(b"", pieces, pause_s=pause_s) as peer:
        yield peer
