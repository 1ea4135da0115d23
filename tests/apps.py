"""Apps of their own on the test database, for tests that need settings other than the
session's app has (a limit lowered so that a test reaches it, say)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask

from directory import create_app
from directory.settings import Settings
from tests.spec_check import SpecCheckingClient


@contextmanager
def app_with(settings: Settings, **changes) -> Iterator[Flask]:
    """An app on `settings` with `changes`, whose test clients check each answer against
    openapi.yaml; its connections are closed afterwards."""
    app = create_app(dataclasses.replace(settings, **changes))
    app.test_client_class = SpecCheckingClient
    try:
        yield app
    finally:
        app.extensions["directory"].close()
