"""A portal proves its website is its own (services.websites): it publishes its token at
<website>/.well-known/commons-directory and the directory fetches it. Only then do its
ads have a global_id. The websites here are real servers on 127.0.0.1 (tests.peers), which
the test settings let the directory reach (webhook_allow_loopback)."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta

import psycopg
import pytest
from sqlalchemy import text

from directory import create_app, worker
from directory.db import unit_of_work
from directory.errors import Conflict
from directory.services import portals, slots, websites
from directory.webhooks import fetch
from tests.api.test_feed import read_all
from tests.factories import ad_payload
from tests.peers import Reply, Website
from tests.waits import wait_for_a_lock_wait

WELL_KNOWN = "/.well-known/commons-directory"
# How much longer than a timeout a test allows the refusal to take (a slow machine).
LEEWAY_S = 2.0


@pytest.fixture
def site() -> Iterator[Website]:
    with Website() as website:
        yield website


@pytest.fixture
def other_site() -> Iterator[Website]:
    with Website() as website:
        yield website


def claim(client, portal, website: str | None) -> dict:
    """Set the portal's website; returns its profile."""
    response = client.patch("/v1/portals/me", json={"website": website}, headers=portal.headers)
    assert response.status_code == 200, response.json
    return response.json


def check(client, portal):
    return client.post("/v1/portals/me/website/verify", headers=portal.headers)


def verify(client, portal):
    """A check, as if none had been made lately (the interval between checks has tests of
    its own)."""
    forget_last_check(client, portal)
    return check(client, portal)


def forget_last_check(client, portal) -> None:
    with unit_of_work(client.application.extensions["directory"].session_factory) as session:
        session.execute(
            text("UPDATE portals SET website_checked_at = NULL WHERE id = :id"), {"id": portal.id}
        )


def profile(client, portal) -> dict:
    return client.get("/v1/portals/me", headers=portal.headers).json


def token_of(client, portal) -> str:
    return profile(client, portal)["website_verification"]["token"]


def publish(site: Website, *lines: str, path: str = WELL_KNOWN) -> None:
    site.pages[path] = Reply(
        status=200, headers={"content-type": "text/plain"}, body="\n".join(lines).encode()
    )


def put(client, portal, external_id: str, *traits: str) -> str:
    response = client.put(
        f"/v1/ads/{external_id}", json=ad_payload(*traits), headers=portal.headers
    )
    assert response.status_code in (200, 201), response.json
    return response.json["id"]


def own_global_id(client, portal, external_id: str) -> str | None:
    return client.get(f"/v1/portals/me/ads/{external_id}", headers=portal.headers).json["global_id"]


def refused(response, code: str = "website_not_verified") -> str:
    """The message of a refused verification, checked for its status and code."""
    assert response.status_code == 409, response.json
    assert response.json["error"] == code, response.json
    return response.json["message"]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


# --- the profile ----------------------------------------------------------------------------


def test_the_profile_says_what_to_publish_and_where(client, portal, other_portal, site):
    assert profile(client, portal)["website_verification"] is None

    verification = claim(client, portal, site.url + "/")["website_verification"]

    assert verification == {
        "state": "unverified",
        "token": verification["token"],
        "url": f"{site.url}{WELL_KNOWN}",
        "verified_at": None,
        "verified_by": None,
        "failing_since": None,
        "last_failure": None,
    }
    assert len(verification["token"]) == 32
    assert (
        verification["token"]
        != claim(client, other_portal, site.url)["website_verification"]["token"]
    )
    assert claim(client, portal, None)["website_verification"] is None


def test_the_verification_url_is_below_the_normalised_website():
    assert (
        websites.verification_url("HTTPS://Sel.Example.ORG:443/Lyon/?lang=fr#top")
        == "https://sel.example.org/Lyon/.well-known/commons-directory"
    )
    assert (
        websites.verification_url("https://example.org/sélection/")
        == "https://example.org/s%C3%A9lection/.well-known/commons-directory"
    )
    assert websites.verification_url(None) is None


# --- verified ---------------------------------------------------------------------------------


def test_a_published_token_verifies_the_website_and_gives_the_ads_global_ids(client, portal, site):
    claim(client, portal, site.url)
    public = [put(client, portal, "ad-1"), put(client, portal, "ad-2")]
    put(client, portal, "ad-3", "portal_only")
    assert own_global_id(client, portal, "ad-1") is None  # unverified: no identity
    assert [hit["global_id"] for hit in client.get("/v1/search").json["hits"]] == [None, None]
    _, cursor = read_all(client)
    # Other directories' tokens beside ours, blank lines, spaces and CRLF line ends.
    token = token_of(client, portal)
    publish(site, "other-directory-token", "", f"  {token}  \r", "another-one")

    response = verify(client, portal)

    assert response.status_code == 200, response.json
    verification = response.json["website_verification"]
    assert verification["state"] == "verified"
    assert verification["verified_at"] is not None
    assert profile(client, portal)["website_verification"] == verification
    assert site.requests == [WELL_KNOWN]
    assert own_global_id(client, portal, "ad-1") == f"{site.url}#ad-1"
    hits = client.get("/v1/search").json["hits"]
    assert sorted(hit["global_id"] for hit in hits) == [f"{site.url}#ad-1", f"{site.url}#ad-2"]
    # Followers of the feed learn the new global ids: an entry per public ad.
    changes, _ = read_all(client, since=cursor)
    assert sorted((change["op"], change["ad_id"]) for change in changes) == sorted(
        ("upsert", ad_id) for ad_id in public
    )
    assert {change["ad"]["global_id"] for change in changes} == {
        f"{site.url}#ad-1",
        f"{site.url}#ad-2",
    }


def test_verifying_again_checks_again_and_keeps_the_global_ids(client, portal, site):
    claim(client, portal, site.url)
    put(client, portal, "ad-1")
    publish(site, token_of(client, portal))
    first = verify(client, portal).json["website_verification"]["verified_at"]
    _, cursor = read_all(client)

    again = verify(client, portal)

    assert again.status_code == 200, again.json
    later = again.json["website_verification"]["verified_at"]
    assert datetime.fromisoformat(later) > datetime.fromisoformat(first)
    assert site.requests == [WELL_KNOWN, WELL_KNOWN]
    assert read_all(client, since=cursor)[0] == []  # no global id changed


def test_a_website_is_checked_at_most_once_in_the_interval(client, portal, site):
    claim(client, portal, site.url)
    publish(site, token_of(client, portal))
    assert check(client, portal).status_code == 200

    again = check(client, portal)

    assert again.status_code == 429, again.json
    assert again.json["error"] == "website_checked_recently"
    assert 1 <= int(again.headers["Retry-After"]) <= websites.CHECK_INTERVAL.seconds
    assert site.requests == [WELL_KNOWN]  # the site was not asked again
    with unit_of_work(client.application.extensions["directory"].session_factory) as session:
        session.execute(
            text(
                "UPDATE portals SET website_checked_at = website_checked_at - :interval "
                "WHERE id = :id"
            ),
            {"interval": websites.CHECK_INTERVAL, "id": portal.id},
        )
    assert check(client, portal).status_code == 200  # the interval is over
    assert site.requests == [WELL_KNOWN, WELL_KNOWN]


def test_a_portal_whose_checks_last_the_whole_timeout_leaves_the_slot_free_as_long(
    client, portal, site
):
    """The directory checks few websites at once (one by default): a portal whose site
    kept each check waiting the fetch's whole timeout, checking again the moment it
    ended, held a slot for good, and every other portal's checks were refused as busy."""
    claim(client, portal, site.url)
    publish(site, token_of(client, portal))
    assert check(client, portal).status_code == 200
    # As if that check had begun the whole timeout ago, and ended only now.
    with unit_of_work(client.application.extensions["directory"].session_factory) as session:
        session.execute(
            text(
                "UPDATE portals SET website_checked_at = website_checked_at "
                "- make_interval(secs => :timeout_s) WHERE id = :id"
            ),
            {"timeout_s": fetch.TOTAL_TIMEOUT_S, "id": portal.id},
        )

    again = check(client, portal)

    assert again.status_code == 429, again.json
    assert again.json["error"] == "website_checked_recently"
    assert site.requests == [WELL_KNOWN]


def slow_token(client, portal, site: Website, *, delay_s: float = 1.0) -> None:
    """The portal's token, at its site, answered after `delay_s`."""
    claim(client, portal, site.url)
    site.pages[WELL_KNOWN] = Reply(
        status=200,
        headers={"content-type": "text/plain"},
        body=token_of(client, portal).encode(),
        delay_s=delay_s,
    )


def while_fetching(app, portal, site: Website, then):
    """`then()`'s result, called while the portal's check is fetching from its site;
    and the check's answer."""
    answers = {}
    first = threading.Thread(target=lambda: answers.update(first=check(app.test_client(), portal)))
    first.start()
    deadline = time.monotonic() + 5
    while not site.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert site.requests, "the first check never fetched"
    result = then()
    first.join()
    return result, answers["first"]


def test_a_check_while_another_runs_is_refused_without_a_fetch(app, client, portal, site):
    # The site answers after a second: the first check is still fetching when the second
    # comes.
    slow_token(client, portal, site)

    second, first = while_fetching(app, portal, site, lambda: check(client, portal))

    assert second.status_code == 429, second.json
    assert first.status_code == 200, first.json
    assert site.requests == [WELL_KNOWN]


def test_one_website_is_checked_at_a_time_and_the_others_told_when_to_retry(
    app, client, portal, other_portal, site, other_site
):
    # A check holds an API process until the site answers (up to 10 s): a few portals
    # with slow sites must not take every process.
    slow_token(client, portal, site)
    claim(client, other_portal, other_site.url)
    publish(other_site, token_of(client, other_portal))

    busy, first = while_fetching(app, portal, site, lambda: check(client, other_portal))

    assert busy.status_code == 429, busy.json
    assert busy.json["error"] == "website_checks_busy"
    assert busy.headers["Retry-After"] == str(slots.BUSY_RETRY_AFTER_S)
    assert other_site.requests == []
    assert first.status_code == 200, first.json
    # Its turn was not taken: it may check as soon as the slot is free.
    assert check(client, other_portal).status_code == 200
    assert other_site.requests == [WELL_KNOWN]


@pytest.fixture
def two_slots_app(migrated):
    app = create_app(replace(migrated, website_checks_at_once=2))
    yield app
    app.extensions["directory"].close()


def test_as_many_websites_as_the_setting_says_are_checked_at_once(
    two_slots_app, portal, other_portal, site, other_site
):
    client = two_slots_app.test_client()
    slow_token(client, portal, site)
    claim(client, other_portal, other_site.url)
    publish(other_site, token_of(client, other_portal))

    second, first = while_fetching(two_slots_app, portal, site, lambda: check(client, other_portal))

    assert (first.status_code, second.status_code) == (200, 200)


def test_a_slot_held_by_a_process_that_died_is_free_again(
    cluster, client, portal, other_portal, site, other_site
):
    claim(client, portal, site.url)
    publish(site, token_of(client, portal))
    with psycopg.connect(cluster.admin_url()) as dead:
        dead.execute("SELECT pg_advisory_lock(%s, 0)", (websites.WEBSITE_CHECK_LOCK_NAMESPACE,))
        assert check(client, portal).json["error"] == "website_checks_busy"
    # Its connection gone, the server let the slot go.
    assert check(client, portal).status_code == 200


def test_an_operator_withdraws_a_verification_and_another_portal_may_verify(
    client, portal, other_portal, site, session
):
    claim(client, portal, site.url)
    put(client, portal, "ad-1")
    publish(site, token_of(client, portal))
    assert verify(client, portal).status_code == 200
    _, cursor = read_all(client)

    websites.withdraw_verification(session, portal_id=portal.id)
    session.commit()

    assert profile(client, portal)["website_verification"]["state"] == "unverified"
    assert own_global_id(client, portal, "ad-1") is None
    entries, _ = read_all(client, since=cursor)
    assert [(e["op"], e["ad"]["global_id"]) for e in entries] == [("upsert", None)]
    claim(client, other_portal, site.url)
    publish(site, token_of(client, other_portal))
    assert verify(client, other_portal).status_code == 200


# --- not verified -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "said"),
    [
        pytest.param([], "is empty", id="empty"),
        pytest.param(["someone-elses-token"], "holds 1 other line(s)", id="another-token"),
        pytest.param(["token: {token}"], "holds 1 other line(s)", id="token-within-a-line"),
        pytest.param(["{token}x"], "holds 1 other line(s)", id="token-with-more"),
    ],
)
def test_a_file_without_the_token_is_refused_and_changes_nothing(client, portal, site, lines, said):
    claim(client, portal, site.url)
    put(client, portal, "ad-1")
    token = token_of(client, portal)
    publish(site, *(line.format(token=token) for line in lines))
    _, cursor = read_all(client)

    message = refused(verify(client, portal))

    assert f"{site.url}{WELL_KNOWN} {said} but not this portal's token" in message
    assert f"publish {token} on a line of its own at {site.url}{WELL_KNOWN}" in message
    assert profile(client, portal)["website_verification"]["state"] == "unverified"
    assert own_global_id(client, portal, "ad-1") is None
    assert read_all(client, since=cursor)[0] == []


def test_a_site_answering_every_path_with_a_page_is_told_to_publish_plain_text(
    client, portal, site
):
    claim(client, portal, site.url)
    site.pages[WELL_KNOWN] = Reply(
        status=200, headers={"content-type": "text/html; charset=utf-8"}, body=b"<html>Hi"
    )

    message = refused(verify(client, portal))

    assert "It was answered as text/html" in message
    assert "published as plain text" in message


@pytest.mark.parametrize("status", [404, 403, 500, 503])
def test_an_http_error_of_the_website_is_refused_naming_the_status(client, portal, site, status):
    claim(client, portal, site.url)
    site.pages[WELL_KNOWN] = Reply(status=status, body=b"nope")

    message = refused(verify(client, portal))

    assert message == (
        f"the website was not verified: {site.url}{WELL_KNOWN} answered HTTP {status}"
    )


def test_a_website_that_refuses_connections_is_refused_saying_so(client, portal, closed_port):
    claim(client, portal, f"http://127.0.0.1:{closed_port}")

    message = refused(verify(client, portal))

    assert f"cannot connect to 127.0.0.1 port {closed_port}" in message
    assert "Connection refused" in message


def test_a_website_that_does_not_answer_is_given_up_after_the_read_timeout(client, portal, site):
    claim(client, portal, site.url)
    site.pages[WELL_KNOWN] = Reply(status=200, delay_s=60, body=token_of(client, portal).encode())

    started = time.monotonic()
    message = refused(verify(client, portal))
    waited_s = time.monotonic() - started

    assert f"no answer from 127.0.0.1 port {site.port} within the read timeout" in message
    assert fetch.READ_TIMEOUT_S - 0.5 <= waited_s < fetch.READ_TIMEOUT_S + LEEWAY_S


def test_a_website_that_trickles_its_answer_is_given_up_after_the_total_timeout(
    client, portal, site
):
    # Each pause is shorter than the read timeout: only the bound on the whole exchange
    # stops it.
    claim(client, portal, site.url)
    site.pages[WELL_KNOWN] = Reply(
        status=200,
        body=token_of(client, portal).encode(),
        body_piece_bytes=1,
        pause_between_pieces_s=fetch.READ_TIMEOUT_S - 1,
    )

    started = time.monotonic()
    message = refused(verify(client, portal))
    waited_s = time.monotonic() - started

    assert f"answer not complete within {fetch.TOTAL_TIMEOUT_S} s" in message
    assert waited_s < fetch.TOTAL_TIMEOUT_S + LEEWAY_S


def test_a_file_longer_than_the_limit_is_refused(client, portal, site):
    claim(client, portal, site.url)
    token = token_of(client, portal)
    publish(site, token, "x" * fetch.MAX_BODY_BYTES)

    message = refused(verify(client, portal))

    assert f"answer longer than {fetch.MAX_BODY_BYTES} bytes" in message


def test_verifying_without_a_website_is_refused(client, portal):
    message = refused(verify(client, portal), code="no_website")

    assert message.startswith("the portal has no website to verify; set one first")


# --- where the directory connects -----------------------------------------------------------


@pytest.mark.parametrize(
    ("website", "reason"),
    [
        ("http://10.0.0.1", "website points to 10.0.0.1, a private address"),
        ("http://169.254.169.254", "a link-local address (where cloud metadata"),
        ("https://[fd00::1]:8443/sel", "website points to fd00::1, a private address"),
    ],
)
def test_a_website_at_an_address_that_is_not_public_is_refused_without_a_request(
    client, portal, website, reason
):
    # Claiming it is allowed (a website is a name); fetching from it is not.
    claim(client, portal, website)

    message = refused(verify(client, portal))

    assert message.startswith("the website was not verified: refused to fetch ")
    assert reason in message


def test_a_loopback_website_is_refused_unless_loopback_is_allowed(session, portal, site):
    portals.update_profile(session, portal_id=portal.id, changes={"website": site.url})
    challenge = websites.verification_challenge(session, portal_id=portal.id)
    publish(site, challenge.token)

    with pytest.raises(Conflict, match=r"points to 127\.0\.0\.1, a loopback address"):
        websites.look_for_token(challenge, allow_loopback=False)
    assert site.requests == []
    websites.look_for_token(challenge, allow_loopback=True)


def test_a_redirect_within_the_website_is_followed(client, portal, site):
    claim(client, portal, site.url)
    site.pages[WELL_KNOWN] = Reply(status=301, headers={"location": "/verification"})
    site.pages["/verification"] = Reply(status=302, headers={"location": f"{site.url}/v2"})
    site.pages["/v2"] = Reply(status=307, headers={"location": "/files/token.txt#top"})
    publish(site, token_of(client, portal), path="/files/token.txt")

    response = verify(client, portal)

    assert response.status_code == 200, response.json
    assert site.requests == [WELL_KNOWN, "/verification", "/v2", "/files/token.txt"]


def test_more_than_three_redirects_are_refused(client, portal, site):
    claim(client, portal, site.url)
    hops = [WELL_KNOWN, "/1", "/2", "/3", "/4"]
    for here, there in itertools.pairwise(hops):
        site.pages[here] = Reply(status=302, headers={"location": there})
    publish(site, token_of(client, portal), path="/4")

    message = refused(verify(client, portal))

    assert f"{site.url}/3 redirects again after 3 redirects" in message
    assert site.requests == hops[:4]


@pytest.mark.parametrize(
    "elsewhere",
    [
        pytest.param("http://localhost:{port}/token", id="another-host-name"),
        pytest.param("http://127.0.0.1:{other_port}/token", id="another-port"),
        pytest.param("http://10.0.0.1/token", id="a-private-address"),
    ],
)
def test_a_redirect_out_of_the_website_is_refused(client, portal, site, elsewhere):
    with Website() as other:
        target = elsewhere.format(port=site.port, other_port=other.port)
        claim(client, portal, site.url)
        site.pages[WELL_KNOWN] = Reply(status=301, headers={"location": target})
        publish(site, token_of(client, portal), path="/token")
        publish(other, token_of(client, portal), path="/token")

        message = refused(verify(client, portal))

        assert f"redirects to {target}, which is not followed" in message
        assert "within 127.0.0.1 only" in message
        assert site.requests == [WELL_KNOWN]
        assert other.requests == []


# --- a change of website --------------------------------------------------------------------


def verified(client, portal, site: Website) -> dict:
    claim(client, portal, site.url)
    publish(site, token_of(client, portal))
    response = verify(client, portal)
    assert response.status_code == 200, response.json
    return response.json["website_verification"]


def test_a_new_website_is_unverified_with_a_new_token_and_the_ads_lose_their_global_ids(
    client, portal, site
):
    ad_id = put(client, portal, "ad-1")
    before = verified(client, portal, site)
    _, cursor = read_all(client)

    with Website() as new_site:
        after = claim(client, portal, new_site.url)["website_verification"]

    assert (after["state"], after["verified_at"]) == ("unverified", None)
    assert after["token"] != before["token"]
    assert own_global_id(client, portal, "ad-1") is None
    changes, _ = read_all(client, since=cursor)
    assert [(c["op"], c["ad_id"], c["ad"]["global_id"]) for c in changes] == [
        ("upsert", ad_id, None)
    ]


def test_the_same_website_spelt_otherwise_keeps_its_verification(client, portal, site):
    put(client, portal, "ad-1")
    before = verified(client, portal, site)
    _, cursor = read_all(client)

    after = claim(client, portal, site.url.upper() + "/")["website_verification"]

    assert after == before
    assert own_global_id(client, portal, "ad-1") == f"{site.url}#ad-1"
    assert read_all(client, since=cursor)[0] == []


def test_a_failed_check_leaves_a_verified_website_verified(client, portal, site):
    # A site down for a moment must not take the ads' global ids away.
    before = verified(client, portal, site)
    site.pages.clear()

    refused(verify(client, portal))

    assert profile(client, portal)["website_verification"] == before


def test_a_website_changed_during_the_check_is_not_verified(session, portal, site):
    portals.update_profile(session, portal_id=portal.id, changes={"website": site.url})
    challenge = websites.verification_challenge(session, portal_id=portal.id)
    publish(site, challenge.token)
    websites.look_for_token(challenge, allow_loopback=True)
    portals.update_profile(
        session, portal_id=portal.id, changes={"website": "https://elsewhere.example"}
    )

    with pytest.raises(Conflict, match="changed while it was being checked"):
        websites.record_verification(session, challenge=challenge)


# --- one verified portal per website ----------------------------------------------------------


def test_portals_may_claim_one_website_but_one_only_verifies_it(client, portal, other_portal, site):
    # A squatter claiming first does not keep the owner out: both claims are allowed...
    claim(client, other_portal, site.url)
    claim(client, portal, f"HTTP://127.0.0.1:{site.port}/")
    put(client, other_portal, "ad-1")
    # ...and the owner, who can publish its token there, verifies it.
    publish(site, token_of(client, portal))
    assert verify(client, portal).status_code == 200
    refused(verify(client, other_portal))  # its token is not there
    # Even with its token there too, the other portal cannot verify it now.
    publish(site, token_of(client, portal), token_of(client, other_portal))

    message = refused(verify(client, other_portal), code="website_taken")

    assert message.startswith(
        f"another portal of this directory has verified this website ({site.url})"
    )
    assert own_global_id(client, other_portal, "ad-1") is None
    # Once the first portal has moved, the website is free to verify.
    claim(client, portal, "https://sel-lyon.example.net")
    assert verify(client, other_portal).status_code == 200
    assert own_global_id(client, other_portal, "ad-1") == f"{site.url}#ad-1"


def test_two_portals_racing_to_verify_one_website_one_gets_it_the_other_a_clear_409(
    app, wiring, client, portal, other_portal, site
):
    claim(client, portal, site.url)
    claim(client, other_portal, site.url)
    publish(site, token_of(client, portal), token_of(client, other_portal))
    holding, release = threading.Event(), threading.Event()
    answers = {}

    def first():  # verified, by an operator, in a transaction held open
        with unit_of_work(wiring.session_factory) as session:
            websites.trust_website(session, portal_id=portal.id)
            holding.set()
            release.wait(10)

    def second():
        answers["second"] = verify(app.test_client(), other_portal)

    winner = threading.Thread(target=first)
    winner.start()
    assert holding.wait(10)
    loser = threading.Thread(target=second)
    loser.start()
    wait_for_a_lock_wait(wiring, what="the second")
    release.set()
    winner.join(20)
    loser.join(20)
    refused(answers["second"], code="website_taken")
    assert profile(client, portal)["website_verification"]["state"] == "verified"
    assert profile(client, other_portal)["website_verification"]["state"] == "unverified"


# --- re-checks by the worker ------------------------------------------------------------------


def recheck(wiring) -> None:
    """One round of the worker's job that looks at verified websites again."""
    worker.website_recheck(wiring)


def age(wiring, portal, *, checked_days_ago: float, failing_for_days: float | None = None):
    """As if the website was last checked `checked_days_ago`, and (if given) its token
    had been missing for `failing_for_days`."""
    with unit_of_work(wiring.session_factory) as session:
        session.execute(
            text(
                "UPDATE portals SET"
                " website_checked_at = now() - CAST(:checked AS float) * interval '1 day',"
                " website_recheck_failing_since = coalesce("
                "   now() - CAST(:failing AS float) * interval '1 day',"
                "   website_recheck_failing_since)"
                " WHERE id = :id"
            ),
            {"checked": checked_days_ago, "failing": failing_for_days, "id": portal.id},
        )


def verified_by_a_fetch(client, portal, site) -> None:
    """The portal's website verified the usual way, and an ad of it: "bike"."""
    claim(client, portal, site.url)
    publish(site, token_of(client, portal))
    assert verify(client, portal).status_code == 200
    put(client, portal, "bike")
    assert own_global_id(client, portal, "bike") == f"{site.url}#bike"


def test_a_verified_website_is_looked_at_again_when_its_turn_comes(client, wiring, portal, site):
    verified_by_a_fetch(client, portal, site)
    assert profile(client, portal)["website_verification"]["verified_by"] == "fetch"
    age(wiring, portal, checked_days_ago=6)

    recheck(wiring)
    assert site.requests == [WELL_KNOWN]  # the verification's own, nothing since

    age(wiring, portal, checked_days_ago=7.1)
    recheck(wiring)
    assert site.requests == [WELL_KNOWN, WELL_KNOWN]
    verification = profile(client, portal)["website_verification"]
    assert (verification["state"], verification["failing_since"]) == ("verified", None)
    recheck(wiring)  # checked just now: not again
    assert len(site.requests) == 2


def test_a_missing_token_is_told_then_after_two_weeks_the_verification_is_withdrawn(
    client, wiring, portal, site, other_portal, other_site
):
    verified_by_a_fetch(client, portal, site)
    del site.pages[WELL_KNOWN]
    age(wiring, portal, checked_days_ago=8)

    recheck(wiring)

    verification = profile(client, portal)["website_verification"]
    assert verification["state"] == "verified"
    assert verification["failing_since"] is not None
    assert "HTTP 404" in verification["last_failure"]
    assert own_global_id(client, portal, "bike") == f"{site.url}#bike"  # not yet

    # Looked at daily while the token is missing; withdrawn once two weeks have passed.
    age(wiring, portal, checked_days_ago=1.1, failing_for_days=13)
    recheck(wiring)
    assert profile(client, portal)["website_verification"]["state"] == "verified"
    age(wiring, portal, checked_days_ago=1.1, failing_for_days=14)
    # The directory reaches the web meanwhile: another portal's token was found just now.
    verified_by_a_fetch(client, other_portal, other_site)
    _, cursor = read_all(client)
    recheck(wiring)

    assert len(site.requests) == 4
    verification = profile(client, portal)["website_verification"]
    assert (verification["state"], verification["verified_by"]) == ("unverified", None)
    assert "HTTP 404" in verification["last_failure"]  # why, for the portal to see
    assert verification["failing_since"] is not None
    assert own_global_id(client, portal, "bike") is None
    changes, _ = read_all(client, since=cursor)  # followers drop the global id
    assert [change["ad"]["global_id"] for change in changes] == [None]
    # Withdrawn, the website is not looked at again by the worker.
    age(wiring, portal, checked_days_ago=30)
    recheck(wiring)
    assert len(site.requests) == 4


def test_a_website_is_kept_while_the_directory_is_not_seen_to_reach_the_web(
    client, wiring, portal, site, other_portal, other_site, caplog
):
    # Cut off from the network for two weeks, the directory would find no token at all:
    # it must not take that for every website's failure.
    verified_by_a_fetch(client, portal, site)
    verified_by_a_fetch(client, other_portal, other_site)
    token_seen(wiring, other_portal, days_ago=2)  # and not since
    del site.pages[WELL_KNOWN]
    age(wiring, portal, checked_days_ago=1.1, failing_for_days=15)

    recheck(wiring)

    verification = profile(client, portal)["website_verification"]
    assert (verification["state"], verification["verified_by"]) == ("verified", "fetch")
    assert "HTTP 404" in verification["last_failure"]
    assert own_global_id(client, portal, "bike") == f"{site.url}#bike"
    assert "may be the one cut off" in caplog.text

    # The other website's turn comes and its token is found: the directory reaches the
    # web, and the next daily look withdraws the verification whose token is still gone.
    age(wiring, other_portal, checked_days_ago=8)
    recheck(wiring)
    assert other_site.requests[-1] == WELL_KNOWN
    age(wiring, portal, checked_days_ago=1.1)
    recheck(wiring)
    verification = profile(client, portal)["website_verification"]
    assert (verification["state"], verification["verified_by"]) == ("unverified", None)
    assert own_global_id(client, portal, "bike") is None


def token_seen(wiring, portal, *, days_ago: float) -> None:
    with unit_of_work(wiring.session_factory) as session:
        session.execute(
            text(
                "UPDATE portals SET website_token_seen_at"
                " = now() - CAST(:days AS float) * interval '1 day' WHERE id = :id"
            ),
            {"days": days_ago, "id": portal.id},
        )


def test_a_token_found_again_ends_the_failure(client, wiring, portal, site):
    verified_by_a_fetch(client, portal, site)
    token = token_of(client, portal)
    site.pages[WELL_KNOWN] = Reply(status=503)
    age(wiring, portal, checked_days_ago=8)
    recheck(wiring)
    assert profile(client, portal)["website_verification"]["failing_since"] is not None

    publish(site, token)
    age(wiring, portal, checked_days_ago=1.1)
    recheck(wiring)

    verification = profile(client, portal)["website_verification"]
    assert verification["state"] == "verified"
    assert (verification["failing_since"], verification["last_failure"]) == (None, None)


def test_a_verification_by_the_portal_ends_the_failure_too(client, wiring, portal, site):
    verified_by_a_fetch(client, portal, site)
    token = token_of(client, portal)
    del site.pages[WELL_KNOWN]
    age(wiring, portal, checked_days_ago=8)
    recheck(wiring)
    publish(site, token)

    assert verify(client, portal).status_code == 200

    verification = profile(client, portal)["website_verification"]
    assert (verification["failing_since"], verification["last_failure"]) == (None, None)


def test_websites_the_operator_vouched_for_are_never_looked_at_again(
    client, wiring, session, portal, site
):
    claim(client, portal, site.url)
    websites.trust_website(session, portal_id=portal.id)
    session.commit()
    age(wiring, portal, checked_days_ago=365)

    recheck(wiring)

    assert site.requests == []
    verification = profile(client, portal)["website_verification"]
    assert (verification["state"], verification["verified_by"]) == ("verified", "operator")


def test_a_website_changed_during_a_recheck_is_left_as_it_is(wiring, client, portal, site):
    verified_by_a_fetch(client, portal, site)
    age(wiring, portal, checked_days_ago=8)
    with unit_of_work(wiring.session_factory) as session:
        challenge = websites.claim_recheck(session, interval=timedelta(days=7))
    assert challenge is not None and challenge.portal_id == portal.id
    claim(client, portal, "https://elsewhere.example")

    with unit_of_work(wiring.session_factory) as session:
        result = websites.record_recheck(
            session, challenge=challenge, failure="gone", grace=timedelta(0)
        )

    assert result is websites.RecheckResult.CHANGED
    verification = profile(client, portal)["website_verification"]
    assert (verification["state"], verification["last_failure"]) == ("unverified", None)


def test_two_workers_at_once_look_at_different_websites(
    client, wiring, portal, other_portal, site, other_site
):
    verified_by_a_fetch(client, portal, site)
    verified_by_a_fetch(client, other_portal, other_site)
    for each in (portal, other_portal):
        age(wiring, each, checked_days_ago=8)
    with (
        unit_of_work(wiring.session_factory) as first,
        unit_of_work(wiring.session_factory) as second,
    ):
        claims = [
            websites.claim_recheck(session, interval=timedelta(days=7))
            for session in (first, second, second)
        ]
    assert claims[2] is None
    assert {claims[0].portal_id, claims[1].portal_id} == {portal.id, other_portal.id}
