"""The demo data: loaded once, the same for the same seed, and valid by the API's rules."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from geoalchemy2 import Geometry
from sqlalchemy import cast, func, select, update

from directory import demo
from directory.api.ads.schemas import AdPutSchema
from directory.api.fields import validate_member_handle
from directory.db import unit_of_work
from directory.geo import Privacy
from directory.models import Ad, Currency, Portal, Visibility
from directory.services.portals import looks_like_key

AD_COUNT = 300
SEED = 20261125
# The farthest regional town is Geelong, ~65 km from Melbourne; area snapping adds ~11 km.
MAX_DISTANCE_FROM_TOWN_KM = 90


def _load(wiring, *, seed: int = SEED) -> demo.DemoSummary:
    with unit_of_work(wiring.session_factory) as session:
        return demo.load(session, ad_count=AD_COUNT, seed=seed, lifetimes=wiring.lifetimes)


@pytest.fixture
def loaded(wiring) -> demo.DemoSummary:
    return _load(wiring)


def _ad_rows(session) -> list[tuple]:
    rows = session.execute(
        select(
            Portal.slug,
            Ad.external_id,
            Ad.title,
            Ad.category,
            Ad.kind,
            Ad.member,
            func.ST_Y(cast(Ad.location, Geometry)),
            func.ST_X(cast(Ad.location, Geometry)),
        ).join(Portal, Portal.id == Ad.portal_id)
    ).all()
    return sorted(tuple(row) for row in rows)


def _rows_of_a_load_on_an_empty_database(wiring, *, seed: int) -> list[tuple]:
    # Rolled back, so each load starts from the same empty database.
    with wiring.session_factory() as session:
        demo.load(session, ad_count=AD_COUNT, seed=seed, lifetimes=wiring.lifetimes)
        rows = _ad_rows(session)
        session.rollback()
    return rows


def _distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (lat1, lon1, lat2, lon2))
    a = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371 * math.asin(math.sqrt(a))


def test_load_creates_the_demo_portals_and_returns_their_keys(loaded, session):
    slugs = set(session.scalars(select(Portal.slug)))
    assert slugs == set(demo.SLUGS)
    assert len(slugs) == loaded.portals == 8
    assert set(loaded.keys) == slugs
    assert all(looks_like_key(key) for key in loaded.keys.values())


def test_load_creates_exactly_ad_count_ads(loaded, session):
    assert session.scalar(select(func.count()).select_from(Ad)) == AD_COUNT
    assert loaded.ads == AD_COUNT


def test_every_portal_gets_ads(loaded, session):
    counts = dict(
        session.execute(
            select(Portal.slug, func.count(Ad.id))
            .outerjoin(Ad, Ad.portal_id == Portal.id)
            .group_by(Portal.slug)
        ).all()
    )
    assert all(counts[slug] > 0 for slug in demo.SLUGS), counts


def test_second_load_changes_nothing_and_shows_no_keys(loaded, wiring):
    with unit_of_work(wiring.session_factory) as session:
        before = _ad_rows(session)

    again = _load(wiring, seed=SEED + 1)

    assert not again.created
    assert again.keys == {}
    assert (again.portals, again.ads) == (loaded.portals, loaded.ads)
    with unit_of_work(wiring.session_factory) as session:
        assert _ad_rows(session) == before


def test_a_load_months_later_renews_the_expired_demo_ads(loaded, wiring, client):
    with unit_of_work(wiring.session_factory) as session:
        # Months pass: every ad has expired but the one that ends last.
        last = session.execute(select(Ad.id, Ad.version).order_by(Ad.expires_at.desc())).first()
        session.execute(update(Ad).where(Ad.id != last.id).values(expires_at=func.now()))
    assert len(client.get("/v1/search", query_string={"limit": 100}).json["hits"]) <= 1

    again = _load(wiring)

    assert not again.created and again.keys == {}
    assert again.renewed == AD_COUNT - 1
    assert again.describe().startswith(f"demo data already loaded, {AD_COUNT - 1} expired")
    with unit_of_work(wiring.session_factory) as session:
        expired = select(func.count()).select_from(Ad).where(Ad.expires_at <= func.now())
        assert session.scalar(expired) == 0
        assert session.scalar(select(Ad.version).where(Ad.id == last.id)) == last.version
    assert len(client.get("/v1/search", query_string={"limit": 100}).json["hits"]) == 100


def test_same_seed_gives_the_same_ads(wiring):
    first = _rows_of_a_load_on_an_empty_database(wiring, seed=SEED)
    second = _rows_of_a_load_on_an_empty_database(wiring, seed=SEED)
    assert len(first) == AD_COUNT
    assert first == second


def test_another_seed_gives_other_ads(wiring):
    first = _rows_of_a_load_on_an_empty_database(wiring, seed=SEED)
    other = _rows_of_a_load_on_an_empty_database(wiring, seed=SEED + 1)
    assert first != other


def test_every_demo_ad_is_a_valid_api_payload(session, wiring):
    ads = demo.build_ads(
        seed=SEED,
        ad_count=AD_COUNT,
        domains=demo.leaf_domains(session),
        now=datetime.now(UTC),
        lifetimes=wiring.lifetimes,
    )
    schema = AdPutSchema()
    for upsert in (upsert for portal_ads in ads.values() for upsert in portal_ads):
        assert schema.load(upsert.ad.to_json()) == upsert.ad, upsert.external_id


def test_member_handles_are_opaque(loaded, session):
    members = session.scalars(select(Ad.member).distinct()).all()
    assert members
    for member in members:
        assert "@" not in member
        validate_member_handle(member)  # raises on anything like an email or a phone number


def test_public_ads_are_readable_through_the_api(loaded, session, client):
    public = session.execute(
        select(Ad.id, Ad.title)
        .where(Ad.visibility == Visibility.PUBLIC)
        .order_by(Ad.external_id)
        .limit(25)
    ).all()
    assert public
    for ad_id, title in public:
        response = client.get(f"/v1/ads/{ad_id}")
        assert response.status_code == 200, response.json
        assert response.json["title"] == title


def test_ads_with_ledger_accounts_of_portals_with_ledgers_can_be_paid(loaded, session, client):
    response = client.get("/v1/search", query_string={"payable": "true", "limit": 100})
    assert response.status_code == 200, response.json
    hits = response.json["hits"]
    assert hits
    for hit in hits:
        payment = hit["payment"]
        assert payment["protocol"] == "credit-commons"
        assert payment["payee"] == hit["ledger_account"]
        assert payment["ledger_url"] == f"https://ledger.{hit['portal']}.example.org/"


def test_a_demo_loaded_before_ledgers_existed_gets_them_on_the_next_load(loaded, wiring):
    with unit_of_work(wiring.session_factory) as session:
        portal = session.scalar(select(Portal).where(Portal.slug == "sel-lyon"))
        portal.ledger = None

    _load(wiring)

    with unit_of_work(wiring.session_factory) as session:
        portal = session.scalar(select(Portal).where(Portal.slug == "sel-lyon"))
        assert portal.ledger is not None
        assert portal.ledger.url == "https://ledger.sel-lyon.example.org/"


def test_portal_only_ads_are_not_public(loaded, session, client):
    portal_only = session.scalars(select(Ad.id).where(Ad.visibility == Visibility.PORTAL)).all()
    assert portal_only
    for ad_id in portal_only:
        assert client.get(f"/v1/ads/{ad_id}").status_code == 404


def test_hidden_ads_carry_no_location(loaded, session, client):
    hidden = session.execute(
        select(Ad.id, Ad.visibility, Ad.location).where(Ad.privacy == Privacy.HIDDEN)
    ).all()
    assert hidden
    assert all(location is None for _, _, location in hidden)
    ad_id = next(ad_id for ad_id, visibility, _ in hidden if visibility is Visibility.PUBLIC)
    assert client.get(f"/v1/ads/{ad_id}").json["location"] is None


def test_ads_lie_near_their_portals_town(loaded, session):
    towns = {spec.slug: spec.town for spec in demo.PORTALS}
    rows = session.execute(
        select(
            Portal.slug,
            func.ST_Y(cast(Ad.location, Geometry)),
            func.ST_X(cast(Ad.location, Geometry)),
        )
        .join(Portal, Portal.id == Ad.portal_id)
        .where(Ad.location.is_not(None))
    ).all()
    assert rows
    for slug, lat, lon in rows:
        town = towns[slug]
        assert _distance_km(lat, lon, town.lat, town.lon) < MAX_DISTANCE_FROM_TOWN_KM, slug


def test_community_currencies_are_registered_and_accepted(loaded, session):
    registered = set(session.scalars(select(Currency.code)))
    expected = {f"{spec.slug}:{spec.currency.code}" for spec in demo.PORTALS if spec.currency}
    assert registered == expected
    accepted = set(session.scalars(select(func.unnest(Ad.currencies)).distinct()))
    assert expected <= accepted


def test_describe_counts_what_was_loaded(loaded):
    assert loaded.describe().startswith(f"demo data loaded: 8 portals, {AD_COUNT} ads (")


def test_describe_says_when_the_demo_was_there_already(loaded, wiring):
    assert "already loaded" in _load(wiring).describe()
