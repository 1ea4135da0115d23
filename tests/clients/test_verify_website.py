"""DirectoryClient.verify_website against the app served on 127.0.0.1, with the portal's
website a real server there too."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from directory_client.client import DirectoryClient
from directory_client.errors import Conflict
from directory_client.transport import RetryPolicy

from tests.live import LiveDirectory
from tests.peers import Reply, Website

NO_WAIT = RetryPolicy(attempts=3, backoff_s=0, max_backoff_s=0)


@pytest.fixture
def directory(app, portal) -> Iterator[DirectoryClient]:
    with LiveDirectory(app) as server, DirectoryClient(server.url, key=portal.key) as client:
        yield client


def test_verify_website_verifies_a_published_token(directory):
    with Website() as site:
        verification = directory.update_own_portal({"website": site.url}).website_verification
        site.pages["/.well-known/commons-directory"] = Reply(
            status=200, body=verification.token.encode()
        )

        verified = directory.verify_website()

    assert verified.website_verification.state == "verified"
    assert verified.website_verification.verified_at is not None


def test_verify_website_raises_a_conflict_saying_why(directory):
    with Website() as site:
        directory.update_own_portal({"website": site.url})

        with pytest.raises(Conflict) as refused:
            directory.verify_website()

    assert refused.value.code == "website_not_verified"
    assert "answered HTTP 404" in str(refused.value)


def test_verify_website_waits_for_the_directorys_answer_past_the_clients_timeout(app, portal):
    """The directory gives a slow website up to 10 s: a client that gave up sooner would
    never learn what the check found, and would ask again (refused: checked recently)."""
    with (
        LiveDirectory(app) as server,
        DirectoryClient(server.url, key=portal.key, timeout_s=0.5, retry=NO_WAIT) as directory,
        Website() as site,
    ):
        verification = directory.update_own_portal({"website": site.url}).website_verification
        site.pages["/.well-known/commons-directory"] = Reply(
            status=200, body=verification.token.encode(), delay_s=1.5
        )

        verified = directory.verify_website()

    assert verified.website_verification.state == "verified"
    assert site.requests == ["/.well-known/commons-directory"]
