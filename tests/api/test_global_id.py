"""The global identity of an ad: its portal's normalised website, '#', its external id.

It is what lets a client searching several directories recognise one ad published in
each (tests/clients/test_federation.py); here, how it is formed and that every public
view of an ad carries it."""

from __future__ import annotations

import threading

import pytest

from directory.db import unit_of_work
from directory.errors import Conflict
from directory.services import portals
from directory.services.ads import global_id_prefix
from tests.api.test_feed import read_all
from tests.factories import ad_payload
from tests.waits import wait_for_a_lock_wait


def set_website(client, portal, website):
    response = client.patch("/v1/portals/me", json={"website": website}, headers=portal.headers)
    assert response.status_code == 200, response.json


def put(client, portal, external_id, payload=None):
    response = client.put(
        f"/v1/ads/{external_id}", json=payload or ad_payload(), headers=portal.headers
    )
    assert response.status_code in (200, 201), response.json
    return response.json


@pytest.mark.parametrize(
    ("website", "expected"),
    [
        ("https://sel-lyon.example.org", "https://sel-lyon.example.org#ad-1"),
        ("https://SEL-Lyon.Example.ORG/", "https://sel-lyon.example.org#ad-1"),
        ("HTTPS://sel-lyon.example.org:443/", "https://sel-lyon.example.org#ad-1"),
        ("http://sel-lyon.example.org:80", "http://sel-lyon.example.org#ad-1"),
        ("https://sel-lyon.example.org:8443", "https://sel-lyon.example.org:8443#ad-1"),
        ("https://example.org/Sel/Lyon/?lang=fr#top", "https://example.org/Sel/Lyon#ad-1"),
    ],
)
def test_global_id_is_the_normalised_website_then_the_external_id(
    client, portal, website, expected
):
    set_website(client, portal, website)
    ad = put(client, portal, "ad-1")
    assert client.get(f"/v1/ads/{ad['id']}").json["global_id"] == expected


def test_every_public_view_of_an_ad_carries_its_global_id(client, portal):
    set_website(client, portal, "https://sel-lyon.example.org/")
    ad = put(client, portal, "annonce-1234")
    expected = "https://sel-lyon.example.org#annonce-1234"
    assert ad["global_id"] == expected  # the portal's own answer to its PUT
    assert client.get(f"/v1/ads/{ad['id']}").json["global_id"] == expected
    (hit,) = client.get("/v1/search").json["hits"]
    assert hit["global_id"] == expected
    geojson = client.get("/v1/search", query_string={"format": "geojson"}).json
    assert geojson["features"][0]["properties"]["global_id"] == expected
    (change,) = client.get("/v1/feed").json["changes"]
    assert change["ad"]["global_id"] == expected
    own = client.get("/v1/portals/me/ads/annonce-1234", headers=portal.headers).json
    assert own["global_id"] == expected
    (listed,) = client.get("/v1/portals/me/ads", headers=portal.headers).json["items"]
    assert listed["global_id"] == expected


def test_ads_of_a_portal_without_website_have_no_global_id(client, portal):
    ad = put(client, portal, "ad-1")
    assert ad["global_id"] is None
    assert client.get(f"/v1/ads/{ad['id']}").json["global_id"] is None
    assert client.get("/v1/search").json["hits"][0]["global_id"] is None


def test_global_id_follows_a_change_of_website(client, portal):
    set_website(client, portal, "https://old.example.org")
    ad = put(client, portal, "ad-1")
    set_website(client, portal, "https://new.example.org")
    assert client.get(f"/v1/ads/{ad['id']}").json["global_id"] == "https://new.example.org#ad-1"
    set_website(client, portal, None)
    assert client.get(f"/v1/ads/{ad['id']}").json["global_id"] is None


def test_a_change_of_website_republishes_the_public_ads_through_the_feed(client, portal):
    # Mirrors following the feed would otherwise keep the old global ids.
    set_website(client, portal, "https://old.example.org")
    public = put(client, portal, "ad-1")["id"]
    put(client, portal, "ad-2", ad_payload("portal_only"))
    put(client, portal, "ad-3")
    assert client.post("/v1/ads/ad-3/expire", headers=portal.headers).status_code == 200
    _, cursor = read_all(client)

    set_website(client, portal, "https://new.example.org")
    changes, cursor = read_all(client, since=cursor)
    assert [(change["op"], change["ad_id"]) for change in changes] == [("upsert", public)]
    assert changes[0]["ad"]["global_id"] == "https://new.example.org#ad-1"

    set_website(client, portal, "https://NEW.example.org/")  # the same identity
    assert read_all(client, since=cursor)[0] == []

    set_website(client, portal, None)
    changes, _ = read_all(client, since=cursor)
    assert [change["ad"]["global_id"] for change in changes] == [None]


def test_global_id_depends_on_website_and_external_id_only(client, portal):
    # As a registration of the same portal in another directory would compute it (other
    # slug, other ids, the website spelt otherwise): tests/clients/test_federation.py.
    set_website(client, portal, "https://sel-lyon.example.org")
    ad = put(client, portal, "ad-1", ad_payload(title="One"))
    assert ad["global_id"] == global_id_prefix("https://SEL-LYON.example.org/") + "ad-1"


def test_a_website_belongs_to_one_portal_of_a_directory(client, portal, other_portal):
    # Otherwise the second could hide the first's ads, or stand in for them, wherever
    # clients search several directories and show one ad per global_id.
    set_website(client, portal, "https://sel-lyon.example.org")

    response = client.patch(
        "/v1/portals/me",
        json={"website": "HTTPS://SEL-Lyon.example.org:443/", "name": "Renamed"},
        headers=other_portal.headers,
    )
    assert response.status_code == 409, response.json
    assert response.json["error"] == "website_taken"
    assert response.json["errors"] == {"json": {"website": [response.json["message"]]}}
    assert "(https://sel-lyon.example.org)" in response.json["message"]
    unchanged = client.get("/v1/portals/me", headers=other_portal.headers).json
    assert (unchanged["website"], unchanged["name"]) == (None, "Other Exchange")

    # Its own portal may spell it otherwise; once it moves, the website is free.
    set_website(client, portal, "https://SEL-LYON.example.org/")
    set_website(client, portal, "https://sel-lyon.example.net")
    set_website(client, other_portal, "https://sel-lyon.example.org")
    # Portals without a website are many.
    set_website(client, portal, None)
    set_website(client, other_portal, None)


def test_a_website_taken_by_another_portal_is_refused_at_creation(session, portal, client):
    set_website(client, portal, "https://sel-lyon.example.org")
    with pytest.raises(Conflict, match="another portal of this directory has this website"):
        portals.create_portal(
            session, slug="copy", name="Copy", website="https://sel-lyon.example.org/"
        )


def test_two_portals_racing_for_one_website_one_gets_it_the_other_a_clear_409(
    app, wiring, client, portal, other_portal
):
    holding, release = threading.Event(), threading.Event()
    answers = {}

    def first():  # sets the website and holds its transaction open
        with unit_of_work(wiring.session_factory) as session:
            portals.update_profile(
                session, portal_id=portal.id, changes={"website": "https://a.example.org"}
            )
            holding.set()
            release.wait(10)

    def second():
        answers["second"] = app.test_client().patch(
            "/v1/portals/me",
            json={"website": "https://A.example.org/"},
            headers=other_portal.headers,
        )

    winner = threading.Thread(target=first)
    winner.start()
    assert holding.wait(10)
    loser = threading.Thread(target=second)
    loser.start()
    wait_for_a_lock_wait(wiring, what="the second")
    release.set()
    winner.join(20)
    loser.join(20)
    assert answers["second"].status_code == 409, answers["second"].json
    assert answers["second"].json["error"] == "website_taken"
    assert client.get("/v1/portals/me", headers=portal.headers).json["website"] == (
        "https://a.example.org"
    )


@pytest.mark.parametrize("external_id", ["a.b_c:d~e-f", "2026:12:01", "~", "A-Z.0_9"])
def test_global_id_splits_back_into_website_and_external_id(client, portal, external_id):
    set_website(client, portal, "https://example.org/sel.lyon/")
    global_id = put(client, portal, external_id)["global_id"]
    website, external = global_id.split("#")  # exactly one '#'
    assert (website, external) == ("https://example.org/sel.lyon", external_id)


@pytest.mark.parametrize(
    "website",
    [None, "", "sel-lyon.example.org", "ftp://sel-lyon.example.org", "https://", "http://a:x"],
)
def test_no_identity_comes_from_a_website_that_is_not_an_http_url(website):
    # The API accepts only http(s) URLs; the CLI stores what it is given.
    assert global_id_prefix(website) is None


def test_identity_of_ipv6_and_international_hosts():
    assert global_id_prefix("https://[2001:DB8::1]:443/") == "https://[2001:db8::1]#"
    assert global_id_prefix("https://Bücher.example/") == "https://xn--bcher-kva.example#"
    assert global_id_prefix("https://user:secret@example.org") == "https://example.org#"
