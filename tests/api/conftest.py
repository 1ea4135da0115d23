"""Fixtures shared by the API tests."""

from __future__ import annotations

import pytest


# The relay's two portals: an advertiser's, and the one whose member writes to it.
@pytest.fixture
def advertiser(make_portal):
    return make_portal(slug="sel-lyon", name="SEL de Lyon")


@pytest.fixture
def writer_portal(make_portal):
    return make_portal(slug="lets-bristol", name="Bristol LETS")
