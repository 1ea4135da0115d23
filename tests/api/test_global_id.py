"""The global identity of an ad: its portal's normalised website, '#', its external id.

It is what lets a client searching several directories recognise one ad published in
each (tests/clients/test_federation.py); here, how it is formed and that every public
view of an ad carries it. Only a verified website gives one: these portals' example.org
websites are vouched for as an operator would (tests/api/test_website_verification.py
verifies real ones)."""

from __future__ import annotations

import pytest

from directory.db import unit_of_work
from directory.errors import Conflict
from directory.services import portals, websites
from directory.services.ads import global_id_prefix
from tests.api.test_feed import read_all
from tests.factories import ad_payload


def set_website(client, portal, website, *, verified=True):
    """PATCH the portal's website; `verified`: then vouch for it (`trust`)."""
    response = client.patch("/v1/portals/me", json={"website": website}, headers=portal.headers)
    assert response.status_code == 200, response.json
    if verified and website is not None:
        trust(client, portal)


def trust(client, portal):
    """The website verified without a fetch, as `directory portals verify-website --trust`."""
    with unit_of_work(client.application.extensions["directory"].session_factory) as session:
        websites.trust_website(session, portal_id=portal.id)


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


def test_ads_of_a_portal_with_an_unverified_website_have_no_global_id(client, portal):
    # Anyone may claim any website: only a verified one names the portal's ads.
    set_website(client, portal, "https://sel-lyon.example.org", verified=False)
    ad = put(client, portal, "ad-1")
    assert ad["global_id"] is None
    assert client.get(f"/v1/ads/{ad['id']}").json["global_id"] is None
    (hit,) = client.get("/v1/search").json["hits"]
    assert hit["global_id"] is None
    geojson = client.get("/v1/search", query_string={"format": "geojson"}).json
    assert geojson["features"][0]["properties"]["global_id"] is None
    (change,) = client.get("/v1/feed").json["changes"]
    assert change["ad"]["global_id"] is None
    (listed,) = client.get("/v1/portals/me/ads", headers=portal.headers).json["items"]
    assert listed["global_id"] is None


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

    # A new website: no global id until it is verified, then the new one.
    set_website(client, portal, "https://new.example.org", verified=False)
    changes, cursor = read_all(client, since=cursor)
    assert [(change["op"], change["ad_id"]) for change in changes] == [("upsert", public)]
    assert changes[0]["ad"]["global_id"] is None
    trust(client, portal)
    changes, cursor = read_all(client, since=cursor)
    assert [(change["op"], change["ad_id"]) for change in changes] == [("upsert", public)]
    assert changes[0]["ad"]["global_id"] == "https://new.example.org#ad-1"

    # The same identity: still verified, nothing to tell.
    set_website(client, portal, "https://NEW.example.org/", verified=False)
    assert read_all(client, since=cursor)[0] == []

    set_website(client, portal, None)
    changes, _ = read_all(client, since=cursor)
    assert [change["ad"]["global_id"] for change in changes] == [None]


def test_a_change_between_unverified_websites_tells_the_feed_nothing(client, portal):
    # Their ads had no global id and have none: a portal flipping its website could
    # otherwise write its every public ad to the feed as often as it liked.
    set_website(client, portal, "https://one.example.org", verified=False)
    put(client, portal, "ad-1")
    _, cursor = read_all(client)

    for website in ("https://two.example.org", "https://one.example.org", None):
        set_website(client, portal, website, verified=False)

    assert read_all(client, since=cursor)[0] == []


def test_global_id_depends_on_website_and_external_id_only(client, portal):
    # As a registration of the same portal in another directory would compute it (other
    # slug, other ids, the website spelt otherwise): tests/clients/test_federation.py.
    set_website(client, portal, "https://sel-lyon.example.org")
    ad = put(client, portal, "ad-1", ad_payload(title="One"))
    assert ad["global_id"] == global_id_prefix("https://SEL-LYON.example.org/") + "ad-1"


def test_a_website_is_verified_for_one_portal_of_a_directory_at_most(client, portal, other_portal):
    # Otherwise the second could hide the first's ads, or stand in for them, wherever
    # clients search several directories and show one ad per global_id.
    set_website(client, portal, "https://sel-lyon.example.org")

    # Claiming it is allowed (a squatter must not keep its owner out), verifying it not.
    set_website(client, other_portal, "HTTPS://SEL-Lyon.example.org:443/", verified=False)
    with pytest.raises(Conflict, match="another portal of this directory has verified") as taken:
        trust(client, other_portal)
    assert taken.value.code == "website_taken"
    assert "(https://sel-lyon.example.org)" in taken.value.message
    ad = put(client, other_portal, "ad-1")
    assert ad["global_id"] is None

    # Once the first portal moves, the website is free to verify.
    set_website(client, portal, "https://sel-lyon.example.net")
    trust(client, other_portal)
    assert client.get(f"/v1/ads/{ad['id']}").json["global_id"] == (
        "https://sel-lyon.example.org#ad-1"
    )
    # Portals without a website are many.
    set_website(client, portal, None)
    set_website(client, other_portal, None)


def test_a_portal_created_with_a_website_another_has_verified_is_unverified(
    session, portal, client
):
    set_website(client, portal, "https://sel-lyon.example.org")
    copy, _ = portals.create_portal(
        session, slug="copy", name="Copy", website="https://sel-lyon.example.org/"
    )
    assert copy.website_verified_at is None
    with pytest.raises(Conflict, match="another portal of this directory has verified"):
        websites.trust_website(session, portal_id=copy.id)


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
