"""The `directory` command, run in-process against the test database: portal and key
administration takes effect on the API's very next request."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from alembic.script import ScriptDirectory
from click.testing import CliRunner, Result
from sqlalchemy import text

import directory
import directory.__main__ as main
import directory.db
import directory.settings
from directory import Wiring
from directory import build_wiring as real_build_wiring
from directory.__main__ import alembic_config, cli
from directory.db import libpq_url, unit_of_work
from directory.services.portals import looks_like_key
from tests.factories import ad_payload
from tests.peers import Reply, Trickling, Website

UNREACHABLE_DATABASE_URL = "postgresql+psycopg://directory@127.0.0.1:1/directory"


@pytest.fixture
def built_wirings(monkeypatch) -> list[Wiring]:
    """Every Wiring the CLI builds (each command builds its own)."""
    built: list[Wiring] = []

    def build(settings):
        built.append(real_build_wiring(settings))
        return built[-1]

    monkeypatch.setattr(directory, "build_wiring", build)
    return built


@pytest.fixture
def run(migrated, wiring, built_wirings):
    """Invoke the CLI with the test database; `wiring` empties that database afterwards.

    The commands leave their engine's pooled connection open (see
    test_command_closes_its_database_connections), which psycopg reports as a
    ResourceWarning whenever garbage collection gets to it; disposing of the engines here
    keeps that one bug from failing every other test at random."""
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
        environment = {
            "DIRECTORY_DATABASE_URL": migrated.database_url,
            "DIRECTORY_ENVIRONMENT": "test",
            **(env or {}),
        }
        try:
            return runner.invoke(cli, list(args), env=environment, input=input)
        finally:
            while built_wirings:
                built_wirings.pop().close()

    return invoke


@pytest.fixture
def run_ok(run):
    def invoke(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
        result = run(*args, env=env, input=input)
        assert result.exit_code == 0, (result.output, result.exception)
        return result

    return invoke


@pytest.fixture
def create_portal(run_ok):
    """`directory portals create`; returns the key it printed."""

    def create(slug: str = "cli-portal", name: str = "CLI Exchange") -> str:
        return _printed_key(run_ok("portals", "create", slug, "--name", name))

    return create


def _printed_key(result: Result) -> str:
    key = result.output.strip().splitlines()[-1]
    assert looks_like_key(key), result.output
    return key


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _key_ids_by_hint(output: str) -> dict[str, int]:
    """`portals keys` rows: ID, then the hint followed by an ellipsis."""
    rows = re.findall(r"^\s*(\d+)\s+(cdir_\S+)…", output, flags=re.MULTILINE)
    return {hint: int(key_id) for key_id, hint in rows}


def test_help_lists_the_commands(run_ok):
    output = run_ok("--help").output

    for command in ("serve", "migrate", "worker", "portals", "demo"):
        assert re.search(rf"^\s+{command}\s", output, flags=re.MULTILINE), command


def test_portals_create_prints_a_key_that_authenticates(create_portal, client):
    key = create_portal("cli-portal", "CLI Exchange")

    assert key.startswith("cdir_")
    response = client.get("/v1/portals/me", headers=_bearer(key))
    assert response.status_code == 200, response.json
    assert response.json["slug"] == "cli-portal"
    assert response.json["name"] == "CLI Exchange"


def test_portals_create_refuses_a_duplicate_slug(run, create_portal):
    create_portal("cli-portal")

    result = run("portals", "create", "cli-portal", "--name", "Again")

    assert result.exit_code != 0
    assert "a portal with slug 'cli-portal' exists already" in result.output
    assert "Traceback" not in result.output


def test_portals_create_leaves_the_website_unverified_unless_trusted(run_ok, client):
    unverified = run_ok("portals", "create", "a", "--name", "A", "--website", "https://a.example")
    trusted = run_ok(
        "portals", "create", "b", "--name", "B", "--website", "https://b.example", "--trust-website"
    )

    assert "website https://a.example unverified" in unverified.output
    assert "website https://b.example marked verified without a check" in trusted.output
    states = [
        client.get("/v1/portals/me", headers=_bearer(_printed_key(result))).json[
            "website_verification"
        ]["state"]
        for result in (unverified, trusted)
    ]
    assert states == ["unverified", "verified"]


def test_portals_create_refuses_to_trust_a_website_another_portal_has_verified(run, run_ok):
    run_ok(
        "portals", "create", "sel-lyon", "--name", "SEL", "--website", "https://sel.example",
        "--trust-website",
    )  # fmt: skip

    result = run(
        "portals", "create", "copy", "--name", "Copy", "--website", "HTTPS://SEL.example/",
        "--trust-website",
    )  # fmt: skip

    assert result.exit_code != 0
    assert result.output.startswith(
        "Error: another portal of this directory has verified this website"
    )
    assert [
        portal["slug"] for portal in json.loads(run_ok("portals", "list", "--json").output)
    ] == ["sel-lyon"]
    # Unverified, it may claim the website.
    run_ok("portals", "create", "copy", "--name", "Copy", "--website", "HTTPS://SEL.example/")


def test_portals_create_refuses_to_trust_no_website(run, run_ok):
    result = run("portals", "create", "a", "--name", "A", "--trust-website")

    assert result.exit_code == 2
    assert "--trust-website needs --website" in result.output
    assert json.loads(run_ok("portals", "list", "--json").output) == []


@pytest.fixture
def site():
    with Website() as website:
        yield website


def test_verify_website_finds_the_token_on_the_website(run_ok, create_portal, client, site):
    key = create_portal("cli-portal")
    client.patch("/v1/portals/me", json={"website": site.url}, headers=_bearer(key))
    verification = client.get("/v1/portals/me", headers=_bearer(key)).json["website_verification"]
    site.pages["/.well-known/commons-directory"] = Reply(
        status=200, body=verification["token"].encode()
    )

    result = run_ok(
        "portals", "verify-website", "cli-portal", env={"DIRECTORY_WEBHOOK_ALLOW_LOOPBACK": "1"}
    )

    assert f"looking for the token of cli-portal at {verification['url']}" in result.output
    assert f"website {site.url} of cli-portal verified" in result.output
    after = client.get("/v1/portals/me", headers=_bearer(key)).json["website_verification"]
    assert after["state"] == "verified"


def test_verify_website_says_why_it_failed(run, create_portal, client, site):
    key = create_portal("cli-portal")
    client.patch("/v1/portals/me", json={"website": site.url}, headers=_bearer(key))

    result = run(
        "portals", "verify-website", "cli-portal", env={"DIRECTORY_WEBHOOK_ALLOW_LOOPBACK": "1"}
    )

    assert result.exit_code == 1
    assert (
        f"Error: the website was not verified: {site.url}/.well-known/commons-directory "
        "answered HTTP 404"
    ) in result.output
    after = client.get("/v1/portals/me", headers=_bearer(key)).json["website_verification"]
    assert after["state"] == "unverified"


def test_verify_website_trust_marks_it_verified_without_a_fetch(
    run_ok, create_portal, client, site
):
    key = create_portal("cli-portal")
    client.patch("/v1/portals/me", json={"website": site.url}, headers=_bearer(key))

    result = run_ok("portals", "verify-website", "cli-portal", "--trust")

    assert result.output == (
        f"website {site.url} of cli-portal marked verified without a check (--trust)\n"
    )
    assert site.requests == []
    after = client.get("/v1/portals/me", headers=_bearer(key)).json["website_verification"]
    assert after["state"] == "verified"


def test_unverify_website_withdraws_a_verification(run_ok, create_portal, client, site):
    key = create_portal("cli-portal")
    client.patch("/v1/portals/me", json={"website": site.url}, headers=_bearer(key))
    run_ok("portals", "verify-website", "cli-portal", "--trust")

    result = run_ok("portals", "unverify-website", "cli-portal")

    assert result.output == (
        f"website {site.url} of cli-portal is unverified: its ads have no global_id\n"
    )
    after = client.get("/v1/portals/me", headers=_bearer(key)).json["website_verification"]
    assert after["state"] == "unverified"
    assert run_ok("portals", "unverify-website", "cli-portal").exit_code == 0  # again: harmless


def test_verify_website_of_a_portal_without_one_fails_clearly(run, create_portal):
    create_portal("cli-portal")

    for trust in ([], ["--trust"]):
        result = run("portals", "verify-website", "cli-portal", *trust)

        assert result.exit_code == 1
        assert result.output.startswith("Error: the portal has no website to verify")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(
            ["Bad Slug", "--name", "Bad"],
            "slug",
            id="invalid-slug",
        ),
        pytest.param(
            ["long-name", "--name", "n" * 201],
            "name",
            id="name-too-long",
        ),
        pytest.param(
            ["ok-slug", "--name", "Ok", "--currency", "NOPE"],
            "unknown currency code NOPE",
            id="unknown-currency",
        ),
        # What PATCH /v1/portals/me refuses is refused here too.
        pytest.param(
            ["escape", "--name", "Evil\x1b[2JName"],
            "name must be a single line without control characters",
            id="name-with-control-characters",
        ),
        pytest.param(
            ["long-contact", "--name", "Ok", "--contact", "c" * 321],
            "contact must be 1 to 320 characters",
            id="contact-too-long",
        ),
        pytest.param(
            ["long-web", "--name", "Ok", "--website", "https://a.org/" + "p" * 2048],
            "website must be at most 2048 characters",
            id="website-too-long",
        ),
        *(
            pytest.param(
                ["odd-web", "--name", "Ok", "--website", website],
                "website must be an http(s) URL",
                id=f"website-{name}",
            )
            for name, website in [
                ("javascript", "javascript:alert(1)"),
                ("data", "data:text/html,<script>alert(1)</script>"),
                ("not-a-url", "not a url"),
            ]
        ),
    ],
)
def test_portals_create_refuses_invalid_input_with_a_clear_message(run, run_ok, args, expected):
    result = run("portals", "create", *args)

    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code != 0
    assert result.output.startswith("Error: ")
    assert expected in result.output
    assert json.loads(run_ok("portals", "list", "--json").output) == []


def test_portals_list_shows_the_portal(run_ok, create_portal):
    create_portal("cli-portal", "CLI Exchange")

    output = run_ok("portals", "list").output

    (row,) = [line for line in output.splitlines() if line.startswith("cli-portal ")]
    assert row.split() == ["cli-portal", "active", "0", "100000", "1", "-", "CLI", "Exchange"]


def test_portals_list_shows_whether_websites_are_verified(run_ok):
    run_ok("portals", "create", "a", "--name", "A", "--website", "https://a.example")
    run_ok(
        "portals", "create", "b", "--name", "B", "--website", "https://b.example", "--trust-website"
    )

    output = run_ok("portals", "list").output
    listed = json.loads(run_ok("portals", "list", "--json").output)

    states = {line.split()[0]: line.split()[5] for line in output.splitlines()[1:]}
    assert states == {"a": "unverified", "b": "verified"}
    assert [
        (p["slug"], p["website"], p["website_state"], p["website_verified_by"]) for p in listed
    ] == [
        ("a", "https://a.example", "unverified", None),
        ("b", "https://b.example", "verified", "operator"),
    ]


def test_portals_list_shows_a_verified_website_whose_token_went_missing(run_ok, wiring):
    run_ok(
        "portals", "create", "b", "--name", "B", "--website", "https://b.example", "--trust-website"
    )
    with unit_of_work(wiring.session_factory) as session:
        session.execute(
            text(
                "UPDATE portals SET website_verified_by = 'fetch',"
                " website_recheck_failing_since = '2026-11-20T08:00:00Z' WHERE slug = 'b'"
            )
        )

    output = run_ok("portals", "list").output
    (listed,) = json.loads(run_ok("portals", "list", "--json").output)

    assert output.splitlines()[1].split()[5] == "failing"
    assert (listed["website_state"], listed["website_failing_since"]) == (
        "verified",
        "2026-11-20T08:00:00+00:00",
    )


def test_portals_relay_report_lists_the_most_blocked_first(run_ok, create_portal, client):
    """The report's table and JSON, from conversations and a block made through the API
    (tests/services/test_relay_report.py counts every case)."""
    pushy, calm, advertiser = (
        create_portal(slug, slug.title()) for slug in ("pushy", "calm", "ads")
    )
    ad = client.put(
        "/v1/ads/ad-1", json=ad_payload(member="m-ad"), headers=_bearer(advertiser)
    ).json["id"]
    for key, member in ((pushy, "p-1"), (pushy, "p-2"), (calm, "c-1")):
        response = client.post(
            f"/v1/ads/{ad}/contact",
            json={"member": member, "name": "N", "body": "Hello"},
            headers=_bearer(key),
        )
        assert response.status_code == 201, response.json
        if member == "p-1":
            blocked = client.post(
                f"/v1/conversations/{response.json['conversation']['id']}/block",
                json={"member": "m-ad"},
                headers=_bearer(advertiser),
            )
            assert blocked.status_code == 200

    table = run_ok("portals", "relay-report").output.splitlines()
    report = json.loads(run_ok("portals", "relay-report", "--days", "7", "--json").output)

    assert table[0].startswith("conversations opened with other communities since ")
    assert [line.split() for line in table[2:4]] == [
        ["pushy", "active", "2", "2", "100%", "1", "50%", "0", "Pushy"],
        ["calm", "active", "1", "1", "100%", "0", "0%", "0", "Calm"],
    ]
    assert [
        (p["slug"], p["opened"], p["blocked"], p["blocked_share"]) for p in report["portals"]
    ] == [("pushy", 2, 1, 0.5), ("calm", 1, 0, 0.0)]


def test_portals_relay_report_with_nothing_to_report_and_a_bad_window(run_ok, run):
    assert "(none: " in run_ok("portals", "relay-report").output
    for days in ("0", "-3", "many", "3651"):
        result = run("portals", "relay-report", "--days", days)
        assert result.exit_code == 2
        assert "Invalid value for '--days'" in result.output


def test_portals_list_json_shows_the_portal(run_ok, create_portal):
    create_portal("cli-portal", "CLI Exchange")

    listed = json.loads(run_ok("portals", "list", "--json").output)

    assert listed == [
        {
            "slug": "cli-portal",
            "name": "CLI Exchange",
            "status": "active",
            "ads": 0,
            "ads_limit": 100000,
            "max_ads": None,
            "keys": 1,
            "website": None,
            "website_state": None,
            "website_verified_by": None,
            "website_failing_since": None,
        }
    ]


def test_set_max_ads_sets_a_portals_own_limit_and_default_gives_back_the_directorys(
    run_ok, create_portal, client
):
    key = create_portal()

    assert run_ok("portals", "set-max-ads", "cli-portal", "5").output == (
        "portal cli-portal may store at most 5 ads; it stores 0\n"
    )
    (listed,) = json.loads(run_ok("portals", "list", "--json").output)
    assert (listed["max_ads"], listed["ads_limit"]) == (5, 5)
    output = run_ok("portals", "list").output.splitlines()
    assert output[1].split()[3] == "5*"
    assert output[-1].startswith("* set for the portal")
    assert client.get("/v1/portals/me", headers=_bearer(key)).json["ads"] == {
        "stored": 0,
        "limit": 5,
    }

    cleared = run_ok("portals", "set-max-ads", "cli-portal", "default").output
    assert "at most 100000 ads (the directory's, DIRECTORY_PORTAL_MAX_ADS)" in cleared
    (listed,) = json.loads(run_ok("portals", "list", "--json").output)
    assert (listed["max_ads"], listed["ads_limit"]) == (None, 100000)
    assert not run_ok("portals", "list").output.splitlines()[-1].startswith("*")


def test_set_max_ads_below_what_a_portal_stores_keeps_its_ads(run_ok, create_portal, client):
    headers = _bearer(create_portal())
    for external_id in ("a-1", "a-2", "a-3"):
        client.put(f"/v1/ads/{external_id}", json=ad_payload(), headers=headers)

    output = run_ok("portals", "set-max-ads", "cli-portal", "1").output

    assert "may store at most 1 ads; it stores 3" in output
    assert "2 more than that: they stay, and new ads are refused" in output
    assert client.put("/v1/ads/a-4", json=ad_payload(), headers=headers).status_code == 409
    assert client.delete("/v1/ads/a-3", headers=headers).status_code == 204


@pytest.mark.parametrize("limit", ["-5", "many", "2.5", "1e3", "", str(10**9 + 1)], ids=repr)
def test_set_max_ads_refuses_a_limit_that_is_no_whole_number(run, run_ok, create_portal, limit):
    create_portal()

    result = run("portals", "set-max-ads", "cli-portal", limit)

    assert result.exit_code == 2, result.output
    assert "Error: Invalid value for 'LIMIT'" in result.output
    assert "not a whole number from 0 to 1000000000, nor 'default'" in result.output
    (listed,) = json.loads(run_ok("portals", "list", "--json").output)
    assert listed["max_ads"] is None


def test_set_max_ads_of_an_unknown_portal_fails_clearly(run):
    result = run("portals", "set-max-ads", "no-such-portal", "5")

    assert result.exit_code == 1
    assert "no portal with slug 'no-such-portal'" in result.output


def test_rotate_key_issues_a_second_key_and_both_work(run_ok, create_portal, client):
    first = create_portal()

    second = _printed_key(run_ok("portals", "rotate-key", "cli-portal", "--label", "2026"))

    assert second != first
    for key in (first, second):
        response = client.get("/v1/portals/me", headers=_bearer(key))
        assert response.status_code == 200, response.json


@pytest.mark.parametrize(
    "label", ["x" * 101, "nul\x00byte", "two\nlines", "escape\x1b[2Jcode", " "], ids=repr
)
def test_rotate_key_refuses_a_label_a_key_listing_cannot_show_and_issues_no_key(
    run, run_ok, create_portal, label
):
    """A label over 100 characters or with a NUL byte failed with the database's
    traceback; one with a line break or an escape code was printed as it was by
    `portals keys`, breaking its table (or the terminal)."""
    create_portal()

    result = run("portals", "rotate-key", "cli-portal", "--label", label)

    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert "label must be 1 to 100 characters on a single line" in result.output
    assert len(_key_ids_by_hint(run_ok("portals", "keys", "cli-portal").output)) == 1


def test_portals_keys_lists_both_keys_by_hint(run_ok, create_portal):
    first = create_portal()
    second = _printed_key(run_ok("portals", "rotate-key", "cli-portal", "--label", "2026"))

    output = run_ok("portals", "keys", "cli-portal").output

    assert set(_key_ids_by_hint(output)) == {first[:12], second[:12]}
    assert first not in output
    assert second not in output


def test_revoked_key_is_refused_on_the_very_next_request(run_ok, create_portal, client):
    old = create_portal()
    new = _printed_key(run_ok("portals", "rotate-key", "cli-portal"))
    assert client.get("/v1/portals/me", headers=_bearer(old)).status_code == 200
    old_id = _key_ids_by_hint(run_ok("portals", "keys", "cli-portal").output)[old[:12]]

    run_ok("portals", "revoke-key", "cli-portal", str(old_id))

    refused = client.get("/v1/portals/me", headers=_bearer(old))
    assert refused.status_code == 401
    assert refused.json["error"] == "key_revoked"
    assert client.get("/v1/portals/me", headers=_bearer(new)).status_code == 200


def test_revoke_key_of_another_portal_is_refused(run, run_ok, create_portal, client):
    mine = create_portal("cli-portal")
    theirs = create_portal("other-portal")
    their_id = _key_ids_by_hint(run_ok("portals", "keys", "other-portal").output)[theirs[:12]]

    result = run("portals", "revoke-key", "cli-portal", str(their_id))

    assert result.exit_code != 0
    assert f"portal 'cli-portal' has no key {their_id}" in result.output
    assert client.get("/v1/portals/me", headers=_bearer(theirs)).status_code == 200
    assert client.get("/v1/portals/me", headers=_bearer(mine)).status_code == 200


def test_suspended_portal_is_refused_with_403(run_ok, create_portal, client):
    key = create_portal()
    assert client.get("/v1/portals/me", headers=_bearer(key)).status_code == 200

    run_ok("portals", "suspend", "cli-portal")

    response = client.get("/v1/portals/me", headers=_bearer(key))
    assert response.status_code == 403
    assert response.json["error"] == "portal_suspended"


def test_suspended_portals_public_ads_disappear(run_ok, create_portal, client):
    key = create_portal()
    created = client.put("/v1/ads/x", json=ad_payload(), headers=_bearer(key))
    assert created.status_code == 201, created.json
    ad_id = created.json["id"]
    assert client.get(f"/v1/ads/{ad_id}").status_code == 200

    run_ok("portals", "suspend", "cli-portal")

    assert client.get(f"/v1/ads/{ad_id}").status_code == 404


def test_activate_brings_back_the_key_and_the_public_ads(run_ok, create_portal, client):
    key = create_portal()
    ad_id = client.put("/v1/ads/x", json=ad_payload(), headers=_bearer(key)).json["id"]
    run_ok("portals", "suspend", "cli-portal")

    run_ok("portals", "activate", "cli-portal")

    assert client.get("/v1/portals/me", headers=_bearer(key)).status_code == 200
    ad = client.get(f"/v1/ads/{ad_id}")
    assert ad.status_code == 200
    assert ad.json["title"] == ad_payload()["title"]


def test_portals_close_asks_first_and_closes_a_suspended_portal_for_good(
    run, run_ok, create_portal, client
):
    key = create_portal()
    ad_id = client.put("/v1/ads/x", json=ad_payload(), headers=_bearer(key)).json["id"]

    active = run("portals", "close", "cli-portal", "--yes")
    assert active.exit_code == 1
    assert "is active: suspend it first" in active.output
    run_ok("portals", "suspend", "cli-portal")
    declined = run("portals", "close", "cli-portal", input="n\n")
    assert declined.exit_code == 1
    assert "Aborted" in declined.output

    closed = run_ok("portals", "close", "cli-portal", input="y\n")

    assert "portal cli-portal is closed: 1 ads deleted" in closed.output
    assert "1 keys revoked" in closed.output
    assert client.get("/v1/portals/me", headers=_bearer(key)).json["error"] == "key_revoked"
    assert client.get(f"/v1/ads/{ad_id}").status_code == 404
    listed = json.loads(run_ok("portals", "list", "--json").output)
    assert [(portal["slug"], portal["status"]) for portal in listed] == [("cli-portal", "closed")]
    again = run_ok("portals", "close", "cli-portal", "--yes")
    assert "closed already: nothing changed" in again.output
    refused = run("portals", "activate", "cli-portal")
    assert refused.exit_code == 1
    assert "is closed: it left the directory for good" in refused.output


def test_the_operator_erases_a_member_of_a_suspended_portal(run_ok, create_portal, client, wiring):
    """A suspended portal's keys are refused, member-erasures too: a member who asks
    their community to be forgotten meanwhile is erased by the directory's operator."""
    key = create_portal()
    member = {**ad_payload(), "member": "m-forget-me"}
    client.put("/v1/ads/gone", json=member, headers=_bearer(key))
    client.put("/v1/ads/kept", json=ad_payload(), headers=_bearer(key))
    run_ok("portals", "suspend", "cli-portal")
    refused = client.post(
        "/v1/portals/me/member-erasures", json={"member": "m-forget-me"}, headers=_bearer(key)
    )
    assert refused.status_code == 403

    erased = run_ok("portals", "erase-member", "cli-portal", "m-forget-me")

    assert "member m-forget-me of cli-portal erased: 1 ads deleted" in erased.output
    run_ok("portals", "activate", "cli-portal")
    own = client.get("/v1/portals/me/ads", headers=_bearer(key)).json["items"]
    assert [ad["external_id"] for ad in own] == ["kept"]
    with wiring.engine.connect() as connection:
        assert not connection.scalar(text("SELECT count(*) FROM ads WHERE member = 'm-forget-me'"))
    again = run_ok("portals", "erase-member", "cli-portal", "m-forget-me")
    assert "0 ads deleted" in again.output


def test_erase_member_refuses_what_is_no_member_handle(run, create_portal):
    create_portal()

    result = run("portals", "erase-member", "cli-portal", "m-forget-me ")

    assert result.exit_code == 2
    assert "is not a member handle" in result.output


def test_portal_command_on_an_unknown_slug_fails_clearly(run):
    result = run("portals", "suspend", "no-such-portal")

    assert result.exit_code != 0
    assert "no portal with slug 'no-such-portal'" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["portals", "list"],
        ["portals", "create", "new-portal", "--name", "New"],
        ["portals", "suspend", "some-portal"],
        ["portals", "keys", "some-portal"],
        ["migrate"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_a_database_that_cannot_be_reached_stops_the_command_clearly(run, args):
    result = run(*args, env={"DIRECTORY_DATABASE_URL": UNREACHABLE_DATABASE_URL})

    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code != 0
    assert result.output.startswith("Error: database error: connection failed"), result.output


@pytest.mark.parametrize(
    "args",
    [["portals", "list"], ["portals", "keys", "some-portal"]],
    ids=lambda args: " ".join(args[:2]),
)
def test_a_database_not_migrated_stops_the_command_clearly(run, args, empty_database_url):
    result = run(*args, env={"DIRECTORY_DATABASE_URL": empty_database_url})

    assert isinstance(result.exception, SystemExit), result.exception
    assert result.output.startswith("Error: the database's tables are not this release's (")
    assert "run `directory migrate` first" in result.output


def test_serve_runs_gunicorn_without_a_control_socket(run, monkeypatch):
    from gunicorn.config import Config

    started = []
    monkeypatch.setattr(main.os, "execvp", lambda *command: started.append(command))

    result = run("serve", "--bind", "127.0.0.1:8001", "--workers", "2")

    assert result.exit_code == 0, (result.output, result.exception)
    ((_, argv),) = started
    assert argv[1:3] == ["-m", "gunicorn"]
    # By default gunicorn listens on ~/.gunicorn/gunicorn.ctl, one path for all of them.
    assert "--no-control-socket" in argv
    options = Config().parser().parse_args(argv[3:])  # this gunicorn knows every option
    assert options.control_socket_disable is True


@pytest.mark.parametrize(
    ("args", "parameter"),
    [
        (["portals", "revoke-key", "cli-portal", str(2**70)], "KEY_ID"),  # beyond bigint
        (["demo", "--ads", "-1"], "--ads"),
        (["serve", "--workers", "0"], "--workers"),
        (["serve", "--workers", "-1"], "--workers"),
    ],
    ids=["key-id-beyond-bigint", "negative-ads", "no-workers", "negative-workers"],
)
def test_out_of_range_numbers_are_refused_as_usage_errors(run, monkeypatch, args, parameter):
    started = []
    monkeypatch.setattr(main.os, "execvp", lambda *command: started.append(command))

    result = run(*args)

    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2
    assert f"Error: Invalid value for '{parameter}'" in result.output
    assert not started


def test_bad_settings_stop_the_command_naming_the_variable(run):
    result = run("portals", "list", env={"DIRECTORY_ENVIRONMENT": "nope"})

    assert result.exit_code != 0
    assert "DIRECTORY_ENVIRONMENT" in result.output
    assert "Traceback" not in result.output


def test_a_misspelt_setting_is_warned_of_once_suggesting_the_setting(run, caplog, monkeypatch):
    monkeypatch.setattr(directory.settings, "_warned_of", set())  # as in a new process
    with caplog.at_level(logging.WARNING, logger="directory.settings"):
        result = run("portals", "list", env={"DIRECTORY_WEBHOOK_ALLOW_LOOPBAK": "1"})

    assert result.exit_code == 0, result.output
    assert [record.getMessage() for record in caplog.records] == [
        "DIRECTORY_WEBHOOK_ALLOW_LOOPBAK is not a setting of this release, and is ignored "
        "(did you mean DIRECTORY_WEBHOOK_ALLOW_LOOPBACK?)"
    ]


def test_the_warning_reaches_the_operator_before_logging_is_set_up(migrated):
    """As `directory serve` and every command read their settings first: on stderr."""
    environment = {
        **os.environ,
        "DIRECTORY_DATABASE_URL": migrated.database_url,
        "DIRECTORY_WEBHOOK_ALLOW_LOOPBAK": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "directory", "portals", "list"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "DIRECTORY_WEBHOOK_ALLOW_LOOPBAK is not a setting of this release, and is ignored "
        "(did you mean DIRECTORY_WEBHOOK_ALLOW_LOOPBACK?)\n"
    )


@pytest.fixture
def restore_signal_handlers():
    # The worker installs SIGTERM/SIGINT handlers for a graceful stop; put pytest's back.
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_worker_once_runs_one_round_and_exits(run_ok, restore_signal_handlers, caplog):
    caplog.set_level(logging.INFO, logger="directory.worker")

    run_ok("worker", "--once")

    messages = [r.getMessage() for r in caplog.records if r.name == "directory.worker"]
    assert messages == ["worker started", "worker stopped"]


def test_worker_once_exits_non_zero_when_its_round_fails(run, restore_signal_handlers):
    result = run(
        "worker",
        "--once",
        env={"DIRECTORY_DATABASE_URL": UNREACHABLE_DATABASE_URL},
    )

    assert result.exit_code != 0


def test_production_without_a_search_key_refuses_to_start(run, restore_signal_handlers):
    result = run(
        "worker",
        "--once",
        env={"DIRECTORY_ENVIRONMENT": "production", "DIRECTORY_SEARCH_ENGINE": "meilisearch"},
    )

    assert result.exit_code != 0
    assert "DIRECTORY_MEILISEARCH_KEY" in result.output


def test_demo_refuses_a_keys_file_it_cannot_write_before_creating_anything(run, run_ok, tmp_path):
    keys_file = tmp_path / "no-such-folder" / "keys.json"

    result = run("demo", "--ads", "0", "--keys-file", str(keys_file))

    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code != 0
    assert result.output.startswith(f"Error: --keys-file {keys_file} cannot be written")
    assert json.loads(run_ok("portals", "list", "--json").output) == []


def test_demo_refuses_a_production_directory(run, run_ok, redis_url):
    # It made its fictional portals there, their websites verified on trust and their
    # slugs (sel-lyon, brixton-lets...) taken from the real communities, and published
    # thousands of made-up ads to every search and mirror.
    result = run(
        "demo",
        env={"DIRECTORY_ENVIRONMENT": "production", "DIRECTORY_RATE_LIMIT_STORAGE_URL": redis_url},
    )

    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert result.output == (
        "Error: demo loads fictional portals and ads, for development and tests: not into "
        "a production directory (DIRECTORY_ENVIRONMENT=production)\n"
    )
    assert json.loads(run_ok("portals", "list", "--json").output) == []


def test_demo_writes_the_keys_readable_by_their_owner_alone(run_ok, tmp_path, client):
    keys_file = tmp_path / "keys.json"

    run_ok("demo", "--ads", "0", "--keys-file", str(keys_file))

    assert keys_file.stat().st_mode & 0o777 == 0o600
    for slug, key in json.loads(keys_file.read_text()).items():
        assert client.get("/v1/portals/me", headers=_bearer(key)).json["slug"] == slug


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a full disk)")
def test_demo_prints_the_keys_when_writing_them_fails(run, client):
    # /dev/full takes the file's opening and refuses the writing: a disk that filled up.
    result = run("demo", "--ads", "0", "--keys-file", "/dev/full")

    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code != 0
    assert "Error: could not write the keys" in result.output
    printed = json.loads(result.output[result.output.index("{") : result.output.index("}") + 1])
    assert printed
    for slug, key in printed.items():
        response = client.get("/v1/portals/me", headers=_bearer(key))
        assert response.json["slug"] == slug


def test_migrate_at_head_is_idempotent(run_ok, wiring, migrated):
    head = ScriptDirectory.from_config(alembic_config(migrated.database_url)).get_current_head()

    result = run_ok("migrate")

    assert "database at head" in result.output
    with wiring.engine.connect() as connection:
        versions = connection.scalars(text("SELECT version_num FROM alembic_version")).all()
    assert versions == [head]


def test_migrate_and_worker_stop_on_a_feed_this_cluster_cannot_continue(
    run, run_ok, session, make_portal
):
    # As after a dump restored into a new cluster: the feed holds transaction ids beyond
    # the cluster's own, so every new change would sort before the readers' cursors.
    run_ok("migrate")  # a feed whose ids are the cluster's own is fine
    portal = make_portal()
    ahead = session.scalar(text("SELECT pg_current_xact_id()::text::bigint")) + 2**33
    session.execute(
        text(
            "INSERT INTO ad_changes (txid, ad_id, portal_id, op) VALUES (:txid, :ad, :portal, 'upsert')"
        ),
        {"txid": ahead, "ad": uuid.uuid4(), "portal": portal.id},
    )
    session.commit()

    for command in ("migrate", "worker"):
        result = run(command, "--once") if command == "worker" else run(command)
        assert result.exit_code != 0, result.output
        assert f"the change feed holds transaction ids up to {ahead}" in result.output
        assert f"pg_resetwal --epoch={(ahead >> 32) + 1}" in result.output


def test_command_closes_its_database_connections(migrated, wiring, built_wirings):
    environment = {"DIRECTORY_DATABASE_URL": migrated.database_url}
    try:
        result = CliRunner().invoke(cli, ["portals", "list"], env=environment)
        assert result.exit_code == 0, result.output
        (built,) = built_wirings
        assert built.engine.pool.checkedin() == 0
    finally:
        for leftover in built_wirings:
            leftover.close()


def _revision_in(database_url: str) -> str | None:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as connection:
        if connection.execute("SELECT to_regclass('alembic_version')").fetchone()[0] is None:
            return None
        return connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def test_two_migrates_at_once_both_succeed(empty_database_url):
    # Two deployments starting together: one migrated, the other failed with a traceback
    # (UniqueViolation on pg_type, as both created the same tables).
    environment = {
        **os.environ,
        "DIRECTORY_DATABASE_URL": empty_database_url,
        "DIRECTORY_ENVIRONMENT": "test",
    }
    migrates = [
        subprocess.Popen(
            [sys.executable, "-m", "directory", "migrate"],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [migrate.communicate(timeout=300) for migrate in migrates]

    assert [migrate.returncode for migrate in migrates] == [0, 0], outputs
    head = ScriptDirectory.from_config(alembic_config(empty_database_url)).get_current_head()
    assert all(f"database at head ({head})" in stdout for stdout, _ in outputs), outputs
    assert _revision_in(empty_database_url) == head


def test_migrate_waits_while_another_migrate_runs(run, empty_database_url):
    result: list[Result] = []
    with psycopg.connect(libpq_url(empty_database_url), autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%(namespace)s, %(key)s)", main.MIGRATE_LOCK)
        waiting = threading.Thread(
            target=lambda: result.append(
                run("migrate", env={"DIRECTORY_DATABASE_URL": empty_database_url})
            )
        )
        waiting.start()
        try:
            deadline = time.monotonic() + 30
            while not other.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event = 'advisory'"
            ).fetchone()[0]:
                assert time.monotonic() < deadline, "migrate never waited for the other"
                time.sleep(0.01)
            assert _revision_in(empty_database_url) is None  # nothing done meanwhile
        finally:
            other.execute("SELECT pg_advisory_unlock(%(namespace)s, %(key)s)", main.MIGRATE_LOCK)
            waiting.join(timeout=300)

    ((done,),) = [result]
    assert done.exit_code == 0, (done.output, done.exception)
    assert "another `directory migrate` is running: waiting for it" in done.output
    assert "database at head" in done.output


def test_migrate_leaves_a_database_a_later_release_migrated_as_it_is(run, empty_database_url):
    env = {"DIRECTORY_DATABASE_URL": empty_database_url}
    assert run("migrate", env=env).exit_code == 0
    with psycopg.connect(libpq_url(empty_database_url), autocommit=True) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'ffff_later'")

    result = run("migrate", env=env)

    # The release before serves on a later schema (/readyz says it is ready); its
    # `migrate` (run before the API starts) showed alembic's traceback and failed.
    assert result.exit_code == 0, (result.output, result.exception)
    assert "database at ffff_later, a later release's migration" in result.output
    assert _revision_in(empty_database_url) == "ffff_later"
    refused = run("migrate", "--revision", "0001", env=env)
    assert isinstance(refused.exception, SystemExit), refused.exception
    assert refused.exit_code == 1
    assert "Error: the database is at ffff_later, a later release's migration" in refused.output


def test_migrate_to_an_earlier_revision_says_it_changed_nothing(run, migrated):
    head = ScriptDirectory.from_config(alembic_config(migrated.database_url)).get_current_head()

    result = run("migrate", "--revision", "0001")

    # It said "database at 0001", with the database still at the head.
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert f"Error: the database is at {head}, past 0001: `migrate` only upgrades" in (
        result.output
    )
    assert _revision_in(migrated.database_url) == head


def test_migrate_to_an_unknown_revision_fails_clearly(run):
    result = run("migrate", "--revision", "nonsense")

    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot migrate to 'nonsense': Can't locate")


@pytest.mark.timeout(60)  # libpq waits for ever by default: the commands never ended
@pytest.mark.parametrize("args", [["portals", "list"], ["migrate"]], ids=" ".join)
def test_a_database_that_says_nothing_stops_the_command_clearly(run, monkeypatch, args):
    monkeypatch.setattr(directory.db, "CONNECT_TIMEOUT_S", 1)
    with Trickling(b"", lambda: itertools.repeat(b""), pause_s=0.1) as silent:
        url = f"postgresql+psycopg://directory@127.0.0.1:{silent.port}/directory"
        result = run(*args, env={"DIRECTORY_DATABASE_URL": url})

    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert result.output.startswith("Error: database error: connection timeout expired")


def test_worker_refuses_a_database_a_migration_behind_this_release(
    run, empty_database_url, restore_signal_handlers
):
    scripts = ScriptDirectory.from_config(alembic_config(empty_database_url))
    head = scripts.get_current_head()
    previous = scripts.get_revision(head).down_revision
    env = {"DIRECTORY_DATABASE_URL": empty_database_url}
    assert run("migrate", "--revision", previous, env=env).exit_code == 0

    result = run("worker", "--once", env=env)

    # It started, and its jobs met the missing columns one statement at a time.
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert result.output.startswith(
        f"Error: the database is at migration {previous}, and this release needs {head}: "
        "run `directory migrate` first"
    )


def test_worker_runs_on_a_database_a_later_release_migrated(
    run_ok, empty_database_url, restore_signal_handlers
):
    env = {"DIRECTORY_DATABASE_URL": empty_database_url}
    run_ok("migrate", env=env)
    with psycopg.connect(libpq_url(empty_database_url), autocommit=True) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'ffff_later'")

    run_ok("worker", "--once", env=env)


def test_a_terminal_that_cannot_show_a_name_still_gets_the_key_and_the_whole_list(migrated, wiring):
    # On a Latin-1 terminal a Greek website stopped `portals create` with a traceback
    # after the portal was made and before its key, shown only then, was printed; and a
    # Greek name stopped `portals list` at the table's head.
    environment = {
        **os.environ,
        "DIRECTORY_DATABASE_URL": migrated.database_url,
        "PYTHONIOENCODING": "latin-1",
    }

    def command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "directory", *args],
            env=environment,
            capture_output=True,
            timeout=60,
        )

    created = command(
        "portals", "create", "athina", "--name", "Ανταλλαγή Αθήνας",
        "--website", "https://ανταλλαγή.example",
    )  # fmt: skip
    listed = command("portals", "list")
    keys = command("portals", "keys", "athina")

    assert created.returncode == 0, created.stderr.decode("latin-1")
    assert looks_like_key(created.stdout.decode("latin-1").splitlines()[-1])
    assert "website https://\\u03b1\\u03bd" in created.stdout.decode("latin-1")
    assert listed.returncode == 0, listed.stderr.decode("latin-1")
    assert listed.stdout.decode("latin-1").splitlines()[-1].startswith("athina ")
    assert keys.returncode == 0, keys.stderr.decode("latin-1")
    assert re.search(r"cdir_\S+\\u2026", keys.stdout.decode("latin-1"))
