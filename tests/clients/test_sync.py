"""directory-sync against the real app over HTTP: the command as a subprocess, the Python
API directly, the directory's own view of the portal's ads as the judge."""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from directory_client import sync_cli
from directory_client.client import DirectoryClient
from directory_client.errors import ClientMisconfigured
from directory_client.sync import EXTERNAL_ID, sync_ads, sync_file
from directory_client.sync_input import CSV_COLUMNS
from directory_client.sync_progress import Silent
from directory_client.sync_state import StateError

from directory.db import unit_of_work
from directory.models import PortalStatus
from directory.models.ads import Ad
from directory.services import portals
from directory.settings import Settings
from tests.live import LiveDirectory, live_directory

ROOT = Path(__file__).resolve().parents[2]
MAX_OPEN_SESSIONS = Settings().sync_session_max_open_per_portal
EXAMPLE = ROOT / "clients/python/examples/tauschring-freiburg-ads.csv"


@pytest.fixture
def portal(make_portal):
    return make_portal(default_currencies=["EUR"])


@pytest.fixture
def directory(live, portal) -> Iterator[DirectoryClient]:
    with DirectoryClient(live.url, key=portal.key) as client:
        yield client


def an_ad(number: int, **changes: Any) -> dict[str, Any]:
    return {
        "external_id": f"ad-{number}",
        "kind": "offer",
        "title": f"Bike repairs #{number}",
        "body": "Punctures, brakes, gears.",
        "category": "home.repairs",
        "tags": ["bike"],
        "member": f"m-{number}",
        "location": {"lat": 45.76, "lon": 4.84},
        "currencies": ["HOUR"],
    } | changes


def write_jsonl(path: Path, ads: list[Mapping[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(ad) + "\n" for ad in ads))
    return path


def stored(directory: DirectoryClient) -> dict[str, Any]:
    """The portal's ads as the directory holds them, by external id."""
    ads = list(directory.iter_own_ads())
    assert len(ads) == len({ad.external_id for ad in ads})
    return {ad.external_id: ad for ad in ads}


def run_sync(
    live: LiveDirectory, key: str, *args: str | Path, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        sync_command(live, *args),
        env=sync_env(key),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sync_command(live: LiveDirectory, *args: str | Path) -> list[str]:
    return [sys.executable, "-m", "directory_client.sync_cli", "--directory", live.url, *map(str, args)]  # fmt: skip


def sync_env(key: str) -> dict[str, str]:
    return {**os.environ, "DIRECTORY_PORTAL_KEY": key}


# --- incremental ------------------------------------------------------------------------


def test_first_run_creates_every_ad_and_a_second_run_sends_nothing(directory, tmp_path):
    ads = [an_ad(n) for n in range(1, 26)]
    state = tmp_path / "state"

    first = sync_ads(directory, ads, state_path=state, batch_size=10)
    second = sync_ads(directory, ads, state_path=state, batch_size=10)

    assert (first.created, first.updated, first.unchanged, first.deleted) == (25, 0, 0, 0)
    assert first.sent == 25 and first.ok
    assert set(stored(directory)) == {f"ad-{n}" for n in range(1, 26)}
    assert (second.created, second.updated, second.unchanged, second.sent) == (0, 0, 25, 0)


def test_a_changed_ad_is_updated_and_a_removed_one_deleted(directory, tmp_path):
    state = tmp_path / "state"
    sync_ads(directory, [an_ad(1), an_ad(2), an_ad(3)], state_path=state)

    report = sync_ads(
        directory, [an_ad(1), an_ad(2, title="Bike and scooter repairs")], state_path=state
    )

    assert (report.created, report.updated, report.unchanged, report.deleted) == (0, 1, 1, 1)
    assert report.sent == 2
    ads = stored(directory)
    assert set(ads) == {"ad-1", "ad-2"}
    assert ads["ad-2"].title == "Bike and scooter repairs"


def test_ads_it_never_pushed_are_left_alone(directory, tmp_path):
    directory.put_ad("by-hand", {k: v for k, v in an_ad(9).items() if k != "external_id"})

    sync_ads(directory, [an_ad(1)], state_path=tmp_path / "state")
    sync_ads(directory, [], state_path=tmp_path / "state-of-nothing")

    assert set(stored(directory)) == {"ad-1", "by-hand"}


def test_a_first_run_counts_and_names_the_portals_ads_it_leaves_alone(
    live, portal, directory, tmp_path
):
    """A state file that records no earlier run (lost, or named after a dated export that
    is new each day) cannot delete what earlier runs pushed: the summary says so, where
    those ads stayed published without a word."""
    yesterday = write_jsonl(tmp_path / "ads-2026-11-26.jsonl", [an_ad(1), an_ad(2), an_ad(3)])
    assert run_sync(live, portal.key, yesterday).returncode == 0
    today = write_jsonl(tmp_path / "ads-2026-11-27.jsonl", [an_ad(1), an_ad(2)])

    dry = run_sync(live, portal.key, today, "--dry-run")
    result = run_sync(live, portal.key, today)
    report = json.loads((tmp_path / "ads-2026-11-27.jsonl.sync-report.json").read_text())
    again = run_sync(live, portal.key, today)

    assert result.returncode == 0, result.stderr
    for output in (dry.stdout, result.stdout):
        assert "left alone: 1 of the portal's ads in the directory are not in the input" in output
        assert "run with its --state" in output
    assert report["left_alone"] == 1
    assert set(stored(directory)) == {"ad-1", "ad-2", "ad-3"}  # left alone, as before
    # The state file now records this run: the next says nothing, listing nothing.
    assert "left alone" not in again.stdout


def test_a_run_with_the_state_of_earlier_runs_leaves_nothing_unsaid(directory, tmp_path):
    state = tmp_path / "state"
    sync_ads(directory, [an_ad(1), an_ad(2)], state_path=state)
    directory.put_ad("by-hand", {k: v for k, v in an_ad(9).items() if k != "external_id"})

    first_of_another = sync_ads(directory, [an_ad(1)], state_path=tmp_path / "other")
    later = sync_ads(directory, [an_ad(1)], state_path=state)

    assert first_of_another.left_alone == 2  # ad-2 and by-hand
    assert later.left_alone == 0 and later.deleted == 1


def test_csv_columns_become_the_ads_fields(live, portal, directory, tmp_path):
    source = tmp_path / "ads.csv"
    with source.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        row = dict.fromkeys(CSV_COLUMNS, "")
        row |= {
            "external_id": "velo-42",
            "kind": "offer",
            "title": "Réparation de vélos",
            "body": "Crevaisons, freins,\ndérailleurs.",  # a quoted cell over two lines
            "category": "home.repairs",
            "tags": "vélo|atelier",
            "location.lat": "45.7640",
            "location.lon": "4.8357",
            "privacy": "exact",
            "currencies": "HOUR|EUR",
            "price.amount": "12.50",
            "price.currency": "EUR",
            "price.unit": "hour",
            "member": "m-4821",
            "accepts_contact": "false",
        }
        writer.writerow(row)

    result = run_sync(live, portal.key, source)

    assert result.returncode == 0, result.stderr
    ad = stored(directory)["velo-42"]
    assert ad.body == "Crevaisons, freins,\ndérailleurs."
    assert ad.tags == ["vélo", "atelier"]
    assert (ad.location.lat, ad.location.lon) == (45.764, 4.8357)
    assert ad.currencies == ["HOUR", "EUR"]
    assert (ad.price.amount, ad.price.currency, ad.price.unit) == ("12.5000", "EUR", "hour")
    assert ad.accepts_contact is False
    assert ad.language is None and ad.images == []  # empty cells: absent
    assert "created 1," in result.stdout


def test_malformed_rows_are_rejected_with_their_lines_and_the_rest_goes_in(
    live, portal, directory, tmp_path
):
    header = "external_id,kind,title,body,category,member,location.lat,location.lon,currencies"
    good = "offer,Bike repairs,Punctures.,home.repairs,m-1"
    source = tmp_path / "ads.csv"
    source.write_text(
        "\n".join(
            [
                header,
                f"ad-1,{good},45.76,4.84,HOUR",
                f"ad-2,{good},north,4.84,HOUR",  # line 3: not a number
                f",{good},45.76,4.84,HOUR",  # line 4: no external_id
                f"ad-5,{good},45.76,4.84,HOUR",  # lines 5 and 6: the same external_id
                f"ad-5,{good},45.70,4.80,HOUR",
                f"ad-7,{good},45.76,4.84,HOUR|",  # line 7: an empty list item
                f"ad-8,{good},45.76,4.84,HOUR",
            ]
        )
        + "\n"
    )
    report_path = tmp_path / "report.json"

    result = run_sync(live, portal.key, source, "--report", report_path)

    assert result.returncode == 1, result.stderr
    assert set(stored(directory)) == {"ad-1", "ad-8"}
    report = json.loads(report_path.read_text())
    assert report["created"] == 2
    reasons = {(r["line"], r["external_id"]): r["reason"] for r in report["rejected"]}
    assert set(reasons) == {(3, "ad-2"), (4, None), (5, "ad-5"), (6, "ad-5"), (7, "ad-7")}
    assert reasons[(3, "ad-2")] == "location.lat: 'north' is not a number"
    assert reasons[(4, None)] == "external_id is missing"
    assert "on lines 5, 6" in reasons[(5, "ad-5")]
    assert "empty item" in reasons[(7, "ad-7")]
    assert "line 3 (ad-2): location.lat: 'north' is not a number" in result.stdout
    # Rejected here, before anything was sent: no code of the directory's.
    assert {r["code"] for r in report["rejected"]} == {None}


def test_a_jsonl_export_starting_with_a_byte_order_mark_is_read_whole(directory, tmp_path):
    # As Windows PowerShell's Out-File -Encoding utf8 writes it: its first row was
    # rejected as not JSON, naming no ad, so every run held back every delete.
    source = tmp_path / "ads.jsonl"
    write_jsonl(source, [an_ad(1), an_ad(2)])
    sync_file(directory, source, state_path=tmp_path / "state")
    source.write_bytes(b"\xef\xbb\xbf" + json.dumps(an_ad(1)).encode() + b"\n")

    report = sync_file(directory, source, state_path=tmp_path / "state")

    assert report.ok, report.rejected
    assert (report.unchanged, report.deleted, report.deletes_held_back) == (1, 1, [])
    assert set(stored(directory)) == {"ad-1"}


def test_a_malformed_row_keeps_the_directorys_ad_as_it_was(live, portal, directory, tmp_path):
    source = write_jsonl(tmp_path / "ads.jsonl", [an_ad(1), an_ad(2)])
    assert run_sync(live, portal.key, source).returncode == 0
    source.write_text(json.dumps(an_ad(1)) + "\n" + '{"external_id": "ad-2", "title": \n')

    result = run_sync(live, portal.key, source)

    assert result.returncode == 1
    assert "line 2 (no external_id): not valid JSON" in result.stdout
    assert "deleted 0" in result.stdout and "deletes held back: 1" in result.stdout
    assert set(stored(directory)) == {"ad-1", "ad-2"}


CSV_HEADER = "external_id,kind,title,body,category,location.lat,location.lon,currencies,member"


def csv_rows(numbers: range) -> list[str]:
    return [
        f"tr-{n:04},offer,Brot {n},Sauerteig,home.repairs,47.99,7.84,HOUR,m-{n}" for n in numbers
    ]


def cut_after(text: str, *, line: int, characters: int) -> str:
    """The text as an export cut off `characters` into its line `line` (from 1) leaves it."""
    lines = text.splitlines(keepends=True)
    return "".join(lines[: line - 1]) + lines[line - 1][:characters]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda text: cut_after(text, line=5, characters=5), id="cut-mid-row"),
        pytest.param(
            lambda text: text.replace("Brot 4,", "Brot 4, frisch,"), id="unquoted-separator"
        ),
    ],
)
def test_a_csv_row_with_the_wrong_number_of_cells_names_no_ad_and_deletes_nothing(
    live, portal, directory, tmp_path, damage
):
    source = tmp_path / "ads.csv"
    source.write_text("\n".join([CSV_HEADER, *csv_rows(range(1, 11))]) + "\n")
    assert run_sync(live, portal.key, source).returncode == 0
    source.write_text(damage(source.read_text()))

    result = run_sync(live, portal.key, source)

    assert result.returncode == 1, result.stderr
    assert "line 5 (no external_id): " in result.stdout
    assert "cells where the header has 9: which cell is the external_id" in result.stdout
    assert "deleted 0" in result.stdout
    assert "deletes held back: " in result.stdout
    assert set(stored(directory)) == {f"tr-{n:04}" for n in range(1, 11)}


def test_replace_refuses_a_csv_cut_off_mid_row(live, portal, directory, tmp_path):
    source = tmp_path / "ads.csv"
    source.write_text("\n".join([CSV_HEADER, *csv_rows(range(1, 11))]) + "\n")
    assert run_sync(live, portal.key, source).returncode == 0
    source.write_text(cut_after(source.read_text(), line=5, characters=5))

    dry = run_sync(live, portal.key, source, "--replace", "--dry-run")
    result = run_sync(live, portal.key, source, "--replace")

    for refused in (dry, result):
        assert refused.returncode == 2
        assert "1 rows without a readable external_id (first on line 5)" in refused.stderr
    assert set(stored(directory)) == {f"tr-{n:04}" for n in range(1, 11)}


def test_the_external_id_pattern_is_the_specs():
    schemas = yaml.safe_load((ROOT / "openapi.yaml").read_text())["components"]["schemas"]

    for schema in ("BatchItem", "StageItem"):
        assert schemas[schema]["properties"]["external_id"]["pattern"] == EXTERNAL_ID.pattern


REFUSED_EXTERNAL_IDS = [
    "ad 3 with space",
    "ad/3",
    "ad-3\n",
    "vélo-3",
    ".",
    "..",
    "x" * 129,
]


@pytest.mark.parametrize("external_id", REFUSED_EXTERNAL_IDS)
def test_an_external_id_the_directory_refuses_is_a_rejected_row_naming_no_ad(
    directory, tmp_path, external_id
):
    report = sync_ads(
        directory, [an_ad(1), an_ad(2) | {"external_id": external_id}], state_path=tmp_path / "s"
    )

    assert report.created == 1 and set(stored(directory)) == {"ad-1"}
    (rejection,) = report.rejected
    assert (rejection.line, rejection.external_id) == (2, None)
    assert rejection.reason == (
        f"external_id {external_id!r} is not one the directory takes "
        f"(it must match {EXTERNAL_ID.pattern})"
    )


@pytest.mark.parametrize("external_id", ["a", "x" * 128, "...", ".a", "a.b_c:d~e-F9"])
def test_external_ids_at_the_edges_of_the_pattern_are_taken(directory, tmp_path, external_id):
    report = sync_ads(
        directory, [an_ad(1) | {"external_id": external_id}], state_path=tmp_path / "s"
    )

    assert report.ok and report.created == 1
    assert set(stored(directory)) == {external_id}


def test_replace_refuses_a_row_whose_external_id_the_directory_refuses(
    live, portal, directory, tmp_path
):
    source = write_jsonl(tmp_path / "ads.jsonl", [an_ad(1), an_ad(2)])
    assert run_sync(live, portal.key, source).returncode == 0
    state = (tmp_path / "ads.jsonl.sync-state").read_bytes()
    write_jsonl(source, [an_ad(1), an_ad(2), an_ad(3) | {"external_id": "ad 3 with space"}])

    result = run_sync(live, portal.key, source, "--replace")

    assert result.returncode == 2, result.stdout + result.stderr
    assert "1 rows without a readable external_id (first on line 3)" in result.stderr
    assert (tmp_path / "ads.jsonl.sync-state").read_bytes() == state  # no session opened
    assert set(stored(directory)) == {"ad-1", "ad-2"}


def test_the_directorys_rejections_are_reported_with_field_paths(directory, tmp_path):
    ads = [
        an_ad(1),
        an_ad(2, category="no.such-category"),
        an_ad(3, location={"lat": 123.0, "lon": 4.84}),
    ]
    state = tmp_path / "state"

    report = sync_ads(directory, ads, state_path=state)
    again = sync_ads(directory, ads, state_path=state)

    assert report.created == 1 and not report.ok
    rejected = {rejection.line: rejection for rejection in report.rejected}
    assert set(rejected) == {2, 3}
    assert rejected[2].external_id == "ad-2" and list(rejected[2].errors) == ["category"]
    assert list(rejected[3].errors) == ["location.lat"]
    assert rejected[3].reason.startswith("location.lat: ")
    assert (rejected[2].code, rejected[3].code) == ("unknown_category", "validation_error")
    assert report.over_the_limit == []
    # Not recorded as synced: the next run tries them again.
    assert again.sent == 2 and len(again.rejected) == 2 and again.unchanged == 1


# --- renewal ----------------------------------------------------------------------------


def days_pass(wiring, portal, days: int, *, state: Path, only: str | None = None) -> None:
    """As if `days` had passed since the portal's ads were written (or only ad `only`): in
    the directory (written then, ending as it had them end) and in the state file."""
    ads = sa.update(Ad).where(Ad.portal_id == portal.id)
    if only is not None:
        ads = ads.where(Ad.external_id == only)
    with unit_of_work(wiring.session_factory) as session:
        session.execute(
            ads.values(
                updated_at=Ad.updated_at - timedelta(days=days),
                expires_at=Ad.expires_at - timedelta(days=days),
            )
        )
    snapshot, *steps = state.read_text().splitlines()
    head = json.loads(snapshot)
    head["written"] = {
        key: when - days * 86400 if only in (None, key) else when
        for key, when in head.get("written", {}).items()
    }
    state.write_text("\n".join([json.dumps(head), *steps]) + "\n")


def ends_in_days(ad: Any) -> float:
    return (ad.expires_at - datetime.now(UTC)) / timedelta(days=1)


class Notes(Silent):
    """Progress that keeps its notes."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)


def test_an_unchanged_ad_is_renewed_before_it_ends(wiring, portal, directory, tmp_path):
    state = tmp_path / "state"
    ads = [an_ad(1), an_ad(2)]
    sync_ads(directory, ads, state_path=state)
    days_pass(wiring, portal, 31, state=state)  # 59 days to go
    assert all(58 < ends_in_days(ad) < 60 for ad in stored(directory).values())

    report = sync_ads(directory, ads, state_path=state)
    after = sync_ads(directory, ads, state_path=state)

    assert all(89 < ends_in_days(ad) < 90 for ad in stored(directory).values())
    assert (report.renewed, report.updated, report.unchanged, report.sent) == (2, 0, 0, 2)
    assert (after.renewed, after.unchanged, after.sent) == (0, 2, 0)


def test_an_unchanged_ad_is_not_sent_before_a_third_of_its_lifetime(
    wiring, portal, directory, tmp_path
):
    state = tmp_path / "state"
    sync_ads(directory, [an_ad(1)], state_path=state)
    days_pass(wiring, portal, 29, state=state)
    notes = Notes()

    report = sync_ads(directory, [an_ad(1)], state_path=state, progress=notes)

    assert (report.renewed, report.unchanged, report.sent) == (0, 1, 0)
    assert not any(note.startswith("looked at") for note in notes.notes)  # not even a look
    assert 60 < ends_in_days(stored(directory)["ad-1"]) < 62


def test_an_ad_that_ended_is_sent_again_and_lives_again(wiring, portal, directory, tmp_path):
    state = tmp_path / "state"
    sync_ads(directory, [an_ad(1)], state_path=state)
    days_pass(wiring, portal, 91, state=state)  # as test_lapse: ended a day ago
    assert stored(directory)["ad-1"].expired and not directory.search_ads(q="Bike").hits

    report = sync_ads(directory, [an_ad(1)], state_path=state)

    ad = stored(directory)["ad-1"]
    assert not ad.expired and 89 < ends_in_days(ad) <= 90
    assert [hit.title for hit in directory.search_ads(q="Bike").hits] == ["Bike repairs #1"]
    assert (report.renewed, report.sent) == (1, 1)


def test_an_ad_whose_row_sets_its_end_is_never_renewed(wiring, portal, directory, tmp_path):
    state = tmp_path / "state"
    ends = (datetime.now(UTC) + timedelta(days=40)).isoformat()
    ads = [an_ad(1, expires_at=ends), an_ad(2, expires_at=None)]  # null: the default
    sync_ads(directory, ads, state_path=state)
    days_pass(wiring, portal, 31, state=state)

    report = sync_ads(directory, ads, state_path=state)

    assert (report.renewed, report.unchanged) == (1, 1)
    held = stored(directory)
    assert 8 < ends_in_days(held["ad-1"]) < 10 and 89 < ends_in_days(held["ad-2"]) < 90


def test_an_ad_deleted_behind_its_back_is_made_again_when_due(wiring, portal, directory, tmp_path):
    state = tmp_path / "state"
    sync_ads(directory, [an_ad(1), an_ad(2)], state_path=state)
    directory.delete_ad("ad-2")
    days_pass(wiring, portal, 31, state=state)

    report = sync_ads(directory, [an_ad(1), an_ad(2)], state_path=state)

    assert (report.created, report.renewed) == (1, 1)
    assert set(stored(directory)) == {"ad-1", "ad-2"}


def test_an_ad_written_since_by_other_hands_is_looked_at_and_left_until_due(
    wiring, portal, directory, tmp_path
):
    state = tmp_path / "state"
    sync_ads(directory, [an_ad(1)], state_path=state)
    days_pass(wiring, portal, 31, state=state)
    directory.expire_ad("ad-1")  # ended, by hand
    directory.put_ad("ad-1", {k: v for k, v in an_ad(1).items() if k != "external_id"})

    looked = sync_ads(directory, [an_ad(1)], state_path=state, progress=(notes := Notes()))
    again = sync_ads(directory, [an_ad(1)], state_path=state, progress=(later := Notes()))

    assert (looked.renewed, looked.sent) == (0, 0)
    assert "looked at 1 ads due for renewal: 0 to send again (0 gone from the directory)" in (
        notes.notes
    )
    assert again.sent == 0 and not any(note.startswith("looked at") for note in later.notes)


def test_a_state_file_from_before_renewals_loads_and_renews_what_is_due(
    wiring, portal, directory, tmp_path
):
    state = tmp_path / "state"
    sync_ads(directory, [an_ad(1), an_ad(2)], state_path=state)
    days_pass(wiring, portal, 40, state=state, only="ad-1")
    snapshot = json.loads(state.read_text())
    del snapshot["written"], snapshot["lifetime_s"]
    state.write_text(json.dumps(snapshot) + "\n")

    report = sync_ads(directory, [an_ad(1), an_ad(2)], state_path=state)
    after = sync_ads(directory, [an_ad(1), an_ad(2)], state_path=state, progress=(notes := Notes()))

    assert (report.renewed, report.unchanged, report.sent) == (1, 1, 1)
    assert all(89 < ends_in_days(ad) <= 90 for ad in stored(directory).values())
    assert after.sent == 0 and not any(note.startswith("looked at") for note in notes.notes)


def test_replace_renews_unchanged_ads_before_they_end(wiring, portal, directory, tmp_path):
    state = tmp_path / "state"
    ads = [an_ad(1), an_ad(2)]
    sync_ads(directory, ads, state_path=state, replace=True)
    sync_ads(directory, ads, state_path=state)  # a look: the commit said not which it wrote
    days_pass(wiring, portal, 31, state=state)

    report = sync_ads(directory, ads, state_path=state, replace=True)

    assert all(89 < ends_in_days(ad) < 90 for ad in stored(directory).values())
    assert (report.renewed, report.updated, report.created, report.deleted) == (2, 0, 0, 0)
    after = sync_ads(directory, ads, state_path=state)
    assert after.sent == 0


def test_a_dry_run_names_the_ads_it_would_renew_and_renews_none(
    wiring, portal, directory, tmp_path
):
    state = tmp_path / "state"
    sync_ads(directory, [an_ad(1), an_ad(2)], state_path=state)
    days_pass(wiring, portal, 31, state=state)
    state_before = state.read_bytes()

    dry = sync_ads(directory, [an_ad(1), an_ad(2), an_ad(3)], state_path=state, dry_run=True)

    assert dry.would_renew == ["ad-1", "ad-2"]
    assert (dry.would_create, dry.would_update, dry.unchanged) == (["ad-3"], [], 0)
    assert state.read_bytes() == state_before
    assert all(58 < ends_in_days(ad) < 60 for ad in stored(directory).values())


@pytest.fixture
def short_lived(migrated) -> Iterator[LiveDirectory]:
    """The same database behind an app giving ads 9 days unless they say otherwise."""
    settings = dataclasses.replace(migrated, ad_default_ttl_days=9, ad_max_ttl_days=9)
    with live_directory(settings) as server:
        yield server


def test_a_directorys_shorter_lifetime_is_learned_and_ads_renewed_within_it(
    wiring, portal, directory, short_lived, tmp_path
):
    state = tmp_path / "state"
    with DirectoryClient(short_lived.url, key=portal.key) as short:
        sync_ads(short, [an_ad(1)], state_path=state)
        days_pass(wiring, portal, 31, state=state)  # ended 22 days ago: 90 days assumed
        lapsed = sync_ads(short, [an_ad(1)], state_path=state)
        days_pass(wiring, portal, 4, state=state)  # 5 days to go: due, at a third of 9
        renewed = sync_ads(short, [an_ad(1)], state_path=state)

    assert lapsed.renewed == 1 and renewed.renewed == 1 and renewed.ok
    assert json.loads(state.read_text())["lifetime_s"] == 9 * 86400
    assert 8.9 < ends_in_days(stored(directory)["ad-1"]) < 9  # the directory's maximum, too


# --- dry run ----------------------------------------------------------------------------


def test_dry_run_prints_the_changes_and_makes_none(live, portal, directory, tmp_path):
    source = write_jsonl(tmp_path / "ads.jsonl", [an_ad(1), an_ad(2), an_ad(3)])
    assert run_sync(live, portal.key, source).returncode == 0
    state_before = (tmp_path / "ads.jsonl.sync-state").read_bytes()
    write_jsonl(source, [an_ad(1), an_ad(2, title="Changed"), an_ad(4)])

    result = run_sync(live, portal.key, source, "--dry-run")

    assert result.returncode == 0, result.stderr
    assert "would create: 1\n  ad-4\n" in result.stdout
    assert "would update: 1\n  ad-2\n" in result.stdout
    assert "would delete: 1\n  ad-3\n" in result.stdout
    assert "unchanged: 1" in result.stdout
    ads = stored(directory)
    assert set(ads) == {"ad-1", "ad-2", "ad-3"} and ads["ad-2"].title == "Bike repairs #2"
    assert (tmp_path / "ads.jsonl.sync-state").read_bytes() == state_before


# --- replace ----------------------------------------------------------------------------


class StagingWatch:
    """Progress that looks at the directory while the sync session is being staged."""

    def __init__(self, directory: DirectoryClient):
        self.directory = directory
        self.seen_while_staging: set[str] | None = None
        self.action = ""

    def note(self, message: str) -> None:
        pass

    def start(self, action: str, total: int) -> None:
        self.action = action

    def advance(self, ads: int, counts: Mapping[str, int]) -> None:
        if self.action == "staging" and self.seen_while_staging is None:
            self.seen_while_staging = set(stored(self.directory))

    def finish(self) -> None:
        pass


def test_replace_makes_the_input_the_complete_set_at_once(directory, tmp_path):
    directory.put_ad("by-hand", {k: v for k, v in an_ad(9).items() if k != "external_id"})
    sync_ads(directory, [an_ad(1), an_ad(2)], state_path=tmp_path / "state")
    watch = StagingWatch(directory)
    ads = [an_ad(2, title="Changed"), *(an_ad(n) for n in range(3, 13))]

    report = sync_ads(
        directory, ads, state_path=tmp_path / "state", replace=True, batch_size=4, progress=watch
    )

    assert watch.seen_while_staging == {"by-hand", "ad-1", "ad-2"}
    assert set(stored(directory)) == {f"ad-{n}" for n in range(2, 13)}
    assert (report.created, report.updated, report.deleted) == (10, 1, 2)
    # The state now knows every ad: an incremental run after it sends nothing.
    after = sync_ads(directory, ads, state_path=tmp_path / "state")
    assert after.sent == 0 and after.unchanged == 11


def test_replace_keeps_an_ad_whose_row_was_rejected(live, portal, directory, tmp_path):
    source = write_jsonl(tmp_path / "ads.jsonl", [an_ad(1), an_ad(2), an_ad(3)])
    assert run_sync(live, portal.key, source).returncode == 0
    source.write_text(
        json.dumps(an_ad(1)) + "\n" + json.dumps(an_ad(2) | {"tags": "not a list"}) + "\n"
    )

    result = run_sync(live, portal.key, source, "--replace")

    assert result.returncode == 1
    assert "line 2 (ad-2): tags: " in result.stdout
    ads = stored(directory)
    assert set(ads) == {"ad-1", "ad-2"} and ads["ad-2"].tags == ["bike"]


def test_an_input_without_usable_ads_is_refused_rather_than_deleting_everything(
    live, portal, directory, tmp_path
):
    source = write_jsonl(tmp_path / "ads.jsonl", [an_ad(1)])
    assert run_sync(live, portal.key, source).returncode == 0
    source.write_text("")

    result = run_sync(live, portal.key, source, "--replace")

    assert result.returncode == 2
    assert "would delete every ad" in result.stderr
    assert set(stored(directory)) == {"ad-1"}


def test_replace_meeting_the_limit_of_open_sessions_says_so_and_not_to_resume_at_once(
    live, portal, directory, tmp_path
):
    held = [str(directory.open_sync_session().id) for _ in range(MAX_OPEN_SESSIONS)]
    source = write_jsonl(tmp_path / "ads.jsonl", [an_ad(1)])

    result = run_sync(live, portal.key, source, "--replace")

    assert result.returncode == 3, result.stdout + result.stderr
    assert "directory-sync: 409 too_many_sync_sessions: the portal has " in result.stderr
    assert held[0] in result.stderr  # the open sessions are named, to be aborted
    assert "Run the same command again once one is committed, aborted or expired" in (
        result.stderr.replace("\n", " ")
    )
    assert "resume" not in result.stderr and "Traceback" not in result.stderr
    directory.abort_sync_session(held[0])
    assert run_sync(live, portal.key, source, "--replace").returncode == 0
    assert set(stored(directory)) == {"ad-1"}


def test_ads_beyond_the_portals_limit_are_reported_as_such_and_sent_by_the_next_run(
    live, wiring, portal, directory, tmp_path
):
    def set_limit(max_ads: int) -> None:
        with unit_of_work(wiring.session_factory) as session:
            session.execute(
                sa.text("UPDATE portals SET max_ads = :max_ads WHERE id = :id"),
                {"max_ads": max_ads, "id": portal.id},
            )

    set_limit(2)
    source = write_jsonl(tmp_path / "ads.jsonl", [an_ad(number) for number in (1, 2, 3)])
    report_path = tmp_path / "report.json"

    result = run_sync(live, portal.key, source, "--report", report_path)

    assert result.returncode == 1, result.stdout + result.stderr
    assert set(stored(directory)) == {"ad-1", "ad-2"}
    (rejection,) = json.loads(report_path.read_text())["rejected"]
    assert (rejection["line"], rejection["external_id"], rejection["code"]) == (
        3, "ad-3", "too_many_ads"
    )  # fmt: skip
    assert rejection["reason"].startswith(
        "the portal may store at most 2 ads and stores 2: this ad was not created"
    )
    assert f"line 3 (ad-3): {rejection['reason']}" in result.stdout
    assert (
        "not created, the portal storing as many ads as the directory lets it (too_many_ads): "
        "1. Delete ads it no longer needs, or ask the directory's operators for a higher "
        "limit; the next run sends them again."
    ) in result.stdout.replace("\n", " ")
    # Not recorded as synced: once there is room, the next run sends it, and it alone.
    set_limit(3)
    again = run_sync(live, portal.key, source, "--report", report_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "not created" not in again.stdout
    assert json.loads(report_path.read_text())["sent"] == 1
    assert set(stored(directory)) == {"ad-1", "ad-2", "ad-3"}


def test_replace_beyond_the_portals_limit_of_ads_says_so_and_not_to_resume_unchanged(
    live, wiring, portal, directory, tmp_path
):
    with unit_of_work(wiring.session_factory) as session:
        session.execute(sa.text("UPDATE portals SET max_ads = 2 WHERE id = :id"), {"id": portal.id})
    source = write_jsonl(tmp_path / "ads.jsonl", [an_ad(number) for number in (1, 2, 3)])

    result = run_sync(live, portal.key, source, "--replace")

    assert result.returncode == 3, result.stdout + result.stderr
    assert "directory-sync: 409 too_many_ads: " in result.stderr
    assert "Take ads out of the file, or ask the directory's operators for a higher limit" in (
        result.stderr.replace("\n", " ")
    )
    assert "resume" not in result.stderr and "Traceback" not in result.stderr
    assert stored(directory) == {}
    # Within the limit, the same command goes through.
    write_jsonl(source, [an_ad(1), an_ad(2)])
    assert run_sync(live, portal.key, source, "--replace").returncode == 0
    assert set(stored(directory)) == {"ad-1", "ad-2"}


# --- request size -----------------------------------------------------------------------


class Batches:
    """Progress that keeps the number of ads of each batch answered."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def note(self, message: str) -> None:
        pass

    def start(self, action: str, total: int) -> None:
        pass

    def advance(self, ads: int, counts: Mapping[str, int]) -> None:
        self.sizes.append(ads)

    def finish(self) -> None:
        pass


def long_ad(number: int, **changes: Any) -> dict[str, Any]:
    """About 24 KB as JSON: a body of 8,000 characters (the most) of 3 bytes each."""
    return an_ad(number, body="€" * 8000, **changes)


def test_long_ads_go_in_batches_under_the_directorys_request_limit(directory, tmp_path):
    ads = [long_ad(n) for n in range(1, 801)]  # 19 MB: 1,000 a batch is over its 16 MiB
    batches = Batches()

    report = sync_ads(directory, ads, state_path=tmp_path / "state", progress=batches)

    assert report.ok and report.created == 800
    assert len(batches.sizes) == 3 and sum(batches.sizes) == 800
    assert len(stored(directory)) == 800


@pytest.fixture
def small_live(migrated) -> Iterator[LiveDirectory]:
    """The same database behind an app taking request bodies of 16 KiB at most."""
    with live_directory(dataclasses.replace(migrated, max_request_bytes=16 * 1024)) as server:
        yield server


@pytest.mark.parametrize("replace", [False, True], ids=["incremental", "replace"])
def test_a_batch_the_directory_finds_too_large_is_sent_again_in_halves(
    small_live, portal, directory, tmp_path, replace
):
    ads = [an_ad(n, body="é" * 1000) for n in range(1, 41)]  # 2 KB each, 80 KB in all

    with DirectoryClient(small_live.url, key=portal.key) as small:
        report = sync_ads(small, ads, state_path=tmp_path / "state", replace=replace)

    assert report.ok and report.created == 40
    assert len(stored(directory)) == 40


@pytest.mark.parametrize("replace", [False, True], ids=["incremental", "replace"])
def test_an_ad_too_large_for_any_request_is_rejected_and_kept_as_it_was(
    small_live, portal, directory, tmp_path, replace
):
    state = tmp_path / "state"
    with DirectoryClient(small_live.url, key=portal.key) as small:
        sync_ads(small, [an_ad(1), an_ad(2), an_ad(3)], state_path=state)

        report = sync_ads(
            small,
            [an_ad(1, title="Changed"), long_ad(2), an_ad(3)],
            state_path=state,
            replace=replace,
        )
        again = sync_ads(small, [an_ad(1, title="Changed"), an_ad(2), an_ad(3)], state_path=state)

    (rejection,) = report.rejected
    assert (rejection.line, rejection.external_id) == (2, "ad-2")
    assert rejection.reason.startswith("ad: 24,")
    assert "more than the directory takes in a request (413 request_too_large: " in (
        rejection.reason
    )
    assert rejection.code == "request_too_large"
    ads = stored(directory)
    assert set(ads) == {"ad-1", "ad-2", "ad-3"}
    assert ads["ad-1"].title == "Changed" and ads["ad-2"].body == "Punctures, brakes, gears."
    # Not recorded as synced: the row as it was is sent again, and all is as it should be.
    assert again.ok and again.unchanged == 3


# --- interrupted runs -------------------------------------------------------------------


def wait_for(process: subprocess.Popen, state: Path, step: str, count: int) -> None:
    """Return once the state file records `count` steps named `step`, the process running."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if state.exists() and state.read_bytes().count(f'{{"{step}"'.encode()) >= count:
            return
        if process.poll() is not None:
            with process.stderr:
                pytest.fail(f"finished before {count} {step} steps: {process.stderr.read()}")
        time.sleep(0.005)
    pytest.fail("the state file never showed progress")


def kill_when(process: subprocess.Popen, state: Path, step: str, count: int) -> None:
    """SIGKILL the process once the state file records `count` steps named `step`."""
    wait_for(process, state, step, count)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()


def test_a_killed_run_resumes_without_duplicating_or_losing_an_ad(
    live, portal, directory, tmp_path
):
    old = [an_ad(n, title="Old") for n in range(1, 401)]
    source = write_jsonl(tmp_path / "ads.jsonl", old)
    assert run_sync(live, portal.key, source).returncode == 0
    ads = [an_ad(n) for n in range(51, 451)]  # 50 deleted, 50 new, 350 changed
    write_jsonl(source, ads)
    state = tmp_path / "ads.jsonl.sync-state"
    arguments = (source, "--batch-size", "5", "--concurrency", "2")

    process = subprocess.Popen(
        sync_command(live, *arguments), env=sync_env(portal.key), stderr=subprocess.PIPE, text=True
    )
    kill_when(process, state, "synced", 10)
    halfway = stored(directory)
    result = run_sync(live, portal.key, *arguments)

    assert 0 < sum(ad.title != "Old" for ad in halfway.values()) < 400
    assert result.returncode == 0, result.stderr
    assert "resumed an interrupted run" in result.stdout
    now = stored(directory)
    assert set(now) == {ad["external_id"] for ad in ads}
    assert all(ad.title.startswith("Bike repairs #") for ad in now.values())
    report = json.loads((tmp_path / "ads.jsonl.sync-report.json").read_text())
    assert report["sent"] < 450  # what the killed run finished was not sent again


def test_a_killed_replace_run_resumes_staging_in_the_same_session(
    live, portal, directory, tmp_path
):
    directory.put_ad("by-hand", {k: v for k, v in an_ad(9).items() if k != "external_id"})
    ads = [an_ad(n) for n in range(1, 301)]
    source = write_jsonl(tmp_path / "ads.jsonl", ads)
    state = tmp_path / "ads.jsonl.sync-state"
    arguments = (source, "--replace", "--batch-size", "5", "--concurrency", "1")

    process = subprocess.Popen(
        sync_command(live, *arguments), env=sync_env(portal.key), stderr=subprocess.PIPE, text=True
    )
    kill_when(process, state, "staged", 10)
    assert set(stored(directory)) == {"by-hand"}  # nothing applied before the commit
    session_id = json.loads(state.read_text().splitlines()[1])["session"]
    result = run_sync(live, portal.key, *arguments)

    assert result.returncode == 0, result.stderr
    assert f"resuming sync session {session_id}" in result.stderr
    assert set(stored(directory)) == {ad["external_id"] for ad in ads}
    assert directory.get_sync_session(session_id).status == "committed"


class Died(Exception):
    """The run died between the directory applying a request and it reading the answer."""


class DiesAfterTheFirstPost(httpx.HTTPTransport):
    """Forwards to the directory; the first POST to a path ending in `ending` is applied
    there, then the run dies without its answer: a kill no signal can time as exactly."""

    def __init__(self, ending: str) -> None:
        super().__init__()
        self.ending = ending
        self.died = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if not self.died and request.method == "POST" and request.url.path.endswith(self.ending):
            response.close()
            self.died = True
            raise Died
        return response


def die_after_the_first_post(
    live, portal, ads: list[dict[str, Any]], state: Path, *, replace: bool
) -> None:
    """A run killed once its first batch (or, with `replace`, its first staging request)
    has been sent, before its answer is read."""
    path = "/items" if replace else "/v1/ads/batch"
    with (
        DirectoryClient(
            live.url, key=portal.key, http_transport=DiesAfterTheFirstPost(path)
        ) as dying,
        pytest.raises(Died),
    ):
        sync_ads(dying, ads, state_path=state, replace=replace)


def test_a_dry_run_after_an_unanswered_batch_counts_the_deletes_of_its_ads(
    live, portal, directory, tmp_path
):
    state = tmp_path / "state"
    die_after_the_first_post(live, portal, [an_ad(1), an_ad(2), an_ad(3)], state, replace=False)
    state_before = state.read_bytes()

    dry = sync_ads(directory, [an_ad(1)], state_path=state, dry_run=True)

    assert dry.would_delete == ["ad-2", "ad-3"]
    assert state.read_bytes() == state_before
    report = sync_ads(directory, [an_ad(1)], state_path=state)
    assert report.deleted == 2 and set(stored(directory)) == {"ad-1"}


def test_a_replace_run_resumed_after_an_unanswered_staging_leaves_out_an_ad_that_left(
    live, portal, directory, tmp_path
):
    state = tmp_path / "state"
    die_after_the_first_post(live, portal, [an_ad(1), an_ad(2), an_ad(3)], state, replace=True)

    report = sync_ads(directory, [an_ad(1), an_ad(2)], state_path=state, replace=True)

    assert report.resumed
    assert set(stored(directory)) == {"ad-1", "ad-2"}


def test_a_replace_run_resumed_after_an_unanswered_staging_keeps_a_rejected_rows_ad(
    live, portal, directory, tmp_path
):
    state = tmp_path / "state"
    sync_ads(directory, [an_ad(1), an_ad(2)], state_path=state)
    die_after_the_first_post(
        live, portal, [an_ad(1), an_ad(2, title="Staged")], state, replace=True
    )
    # ad-2 on two lines: which one is meant is unclear, so its ad is kept as it was.
    ads = [an_ad(1), an_ad(2, title="One"), an_ad(2, title="Other")]

    report = sync_ads(directory, ads, state_path=state, replace=True)

    assert {rejection.external_id for rejection in report.rejected} == {"ad-2"}
    assert stored(directory)["ad-2"].title == "Bike repairs #2"


class LosesACurrencyThenDiesAtCommit(DiesAfterTheFirstPost):
    """The portal's currency is deleted between staging and commit, so the commit rejects
    the ad that accepts it; the run dies before reading the commit's answer."""

    def __init__(self, delete_currency) -> None:
        super().__init__("/commit")
        self.delete_currency = delete_currency

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self.died and request.url.path.endswith("/commit"):
            self.delete_currency()
        return super().handle_request(request)


@pytest.mark.parametrize(
    "answer", ["kept", "kept before codes", "none"], ids=lambda answer: f"answer {answer}"
)
def test_an_ad_the_commit_of_a_killed_run_rejected_is_sent_by_the_next_run(
    live, wiring, portal, directory, tmp_path, answer
):
    """The next run asks the commit's answer again; a session committed before the
    directory kept it (no answer to give: 409) leaves every staged ad to be looked at,
    and one committed before answers had codes tells its rejections without one."""
    code = f"{portal.slug}:TALENT"
    directory.register_currency({"code": "TALENT", "name": "Talents"})
    ads = [an_ad(1, currencies=[code]), an_ad(2)]
    state = tmp_path / "state"
    dying = LosesACurrencyThenDiesAtCommit(lambda: directory.delete_currency(code))
    with (
        DirectoryClient(live.url, key=portal.key, http_transport=dying) as client,
        pytest.raises(Died),
    ):
        sync_ads(client, ads, state_path=state, replace=True)
    assert set(stored(directory)) == {"ad-2"}  # the commit rejected ad-1
    directory.register_currency({"code": "TALENT", "name": "Talents"})
    with unit_of_work(wiring.session_factory) as session:
        if answer == "none":
            session.execute(sa.text("UPDATE sync_sessions SET result = NULL"))
        if answer == "kept before codes":
            session.execute(
                sa.text(
                    "UPDATE sync_sessions SET result = jsonb_set(result, '{rejected_items}', "
                    "(SELECT jsonb_agg(item - 'error') "
                    "FROM jsonb_array_elements(result->'rejected_items') AS item))"
                )
            )

    report = sync_ads(directory, ads, state_path=state)  # not --replace: only what changed

    if answer != "none":  # then
        (rejection,) = report.rejected
        assert (rejection.line, rejection.external_id) == (1, "ad-1")
        assert rejection.reason.startswith(f"currencies: unknown currency code {code}")
        assert rejection.code == ("unknown_currency" if answer == "kept" else None)
    assert set(stored(directory)) == {"ad-1", "ad-2"}  # and now sent again


# --- the state file ---------------------------------------------------------------------


# Holds a state file's lock as a run does (flock on STATE.lock), until its stdin closes.
HOLD_LOCK = """
import fcntl, sys
lock = open(sys.argv[1], "ab")
fcntl.flock(lock, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def lock_of(state: Path) -> Path:
    return state.with_name(state.name + ".lock")


def test_a_run_stops_before_sending_anything_while_another_process_holds_its_state(
    live, portal, directory, tmp_path
):
    source = write_jsonl(tmp_path / "ads.jsonl", [an_ad(1)])
    state = tmp_path / "ads.jsonl.sync-state"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, lock_of(state)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"

        refused = run_sync(live, portal.key, source)

        assert refused.returncode == 2
        assert f"another directory-sync run is using {state}" in refused.stderr
        assert stored(directory) == {} and not state.exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # a run that dies: the system releases its lock
        holder.wait()
        holder.stdin.close()
        holder.stdout.close()
    assert run_sync(live, portal.key, source).returncode == 0
    assert set(stored(directory)) == {"ad-1"}


def test_a_second_run_on_the_same_state_file_leaves_the_first_to_finish(
    live, portal, directory, tmp_path
):
    ads = [an_ad(n) for n in range(1, 601)]
    source = write_jsonl(tmp_path / "ads.jsonl", ads)
    state = tmp_path / "ads.jsonl.sync-state"
    # Run on its own, this one would delete 599 of the ads the first run is pushing.
    other = write_jsonl(tmp_path / "other.jsonl", [an_ad(1)])
    first = subprocess.Popen(
        sync_command(live, source, "--batch-size", "2", "--concurrency", "1"),
        env=sync_env(portal.key),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(first, state, "synced", 2)

    second = run_sync(live, portal.key, other, "--state", state)

    assert first.poll() is None, "the first run ended before the second began: no overlap"
    assert second.returncode == 2
    assert f"another directory-sync run is using {state}" in second.stderr
    with first.stderr:
        assert first.wait(timeout=60) == 0, first.stderr.read()
    assert set(stored(directory)) == {ad["external_id"] for ad in ads}
    again = sync_ads(directory, ads, state_path=state)
    assert again.sent == 0 and again.unchanged == 600


def hold_lock(state: Path, mode: int) -> Any:
    """The state's lock held as another run holds it, by another open file: a run in this
    process meets it as it would meet another process's."""
    lock = lock_of(state).open("ab")
    fcntl.flock(lock, mode | fcntl.LOCK_NB)
    return lock


def test_a_dry_run_waits_for_no_other_dry_run_but_stops_beside_a_run(directory, tmp_path):
    state = tmp_path / "state"
    sync_ads(directory, [an_ad(1)], state_path=state)

    with hold_lock(state, fcntl.LOCK_SH):  # as a dry run holds it
        dry = sync_ads(directory, [an_ad(2)], state_path=state, dry_run=True)
        with pytest.raises(StateError, match="another directory-sync run is using"):
            sync_ads(directory, [an_ad(2)], state_path=state)
    with (
        hold_lock(state, fcntl.LOCK_EX),  # as a run holds it
        pytest.raises(StateError, match="another directory-sync run is using"),
    ):
        sync_ads(directory, [an_ad(2)], state_path=state, dry_run=True)

    assert dry.would_create == ["ad-2"] and dry.would_delete == ["ad-1"]
    assert set(stored(directory)) == {"ad-1"}


@pytest.mark.parametrize(
    ("arrange", "message"),
    [
        pytest.param(
            lambda folder: folder / "no-such-folder" / "ads.sync-state",
            "cannot create the lock file {state}.lock beside the state file: "
            "No such file or directory; nothing was sent",
            id="folder-missing",
        ),
        pytest.param(
            lambda folder: folder,
            "cannot read the state file {state}: Is a directory",
            id="a-folder",
        ),
        pytest.param(
            lambda folder: (folder / "ads.sync-state.tmp").mkdir() or folder / "ads.sync-state",
            "cannot write the state file {state}: Is a directory; nothing was sent",
            id="not-writable",
        ),
    ],
)
def test_a_state_file_that_cannot_be_used_stops_the_run_before_anything_is_sent(
    live, portal, directory, tmp_path, arrange, message
):
    source = write_jsonl(tmp_path / "ads.jsonl", [an_ad(1)])
    folder = tmp_path / "states"
    folder.mkdir()
    state = arrange(folder)

    result = run_sync(live, portal.key, source, "--state", state)

    assert result.returncode == 2, result.stderr
    assert f"directory-sync: {message.format(state=state)}\n" in result.stderr
    assert "Traceback" not in result.stderr
    assert stored(directory) == {}


@pytest.mark.parametrize(
    ("arrange", "reason"),
    [
        pytest.param(
            lambda folder: folder / "no-such-folder" / "report.json",
            "No such file or directory",
            id="folder-missing",
        ),
        pytest.param(lambda folder: folder, "Is a directory", id="a-folder"),
    ],
)
def test_a_report_file_that_cannot_be_written_stops_the_run_before_anything_is_sent(
    live, portal, directory, tmp_path, arrange, reason
):
    source = write_jsonl(tmp_path / "ads.jsonl", [an_ad(1)])
    report = arrange(tmp_path)

    result = run_sync(live, portal.key, source, "--report", report)

    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"directory-sync: cannot write the report file {report}: {reason}; nothing was sent\n"
    )
    assert stored(directory) == {}
    assert not (tmp_path / "ads.jsonl.sync-state").exists()


def test_a_report_path_checked_before_the_run_is_not_left_behind_when_the_run_stops(
    live, portal, tmp_path
):
    source = tmp_path / "ads.csv"
    source.write_text("external_id,title,colour\nad-1,Bike,red\n")
    report = tmp_path / "report.json"

    result = run_sync(live, portal.key, source, "--report", report)

    assert result.returncode == 2
    assert not report.exists()


def test_a_state_file_that_cannot_be_written_during_a_run_stops_it_with_a_clear_message(
    live, portal, tmp_path
):
    source = write_jsonl(tmp_path / "ads.jsonl", [an_ad(n) for n in range(1, 401)])
    folder = tmp_path / "states"
    folder.mkdir()
    state = folder / "ads.sync-state"
    process = subprocess.Popen(
        sync_command(live, source, "--state", state, "--batch-size", "5", "--concurrency", "1"),
        env=sync_env(portal.key),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(process, state, "synced", 2)

    shutil.rmtree(folder)  # the run's last snapshot cannot be written
    with process.stderr:
        assert process.wait(timeout=60) == 3
        stderr = process.stderr.read()

    assert f"directory-sync: cannot write the state file {state}: " in stderr
    assert "Run the same command again once the state file can be written" in stderr
    assert "Traceback" not in stderr


# --- the command ------------------------------------------------------------------------


def test_without_a_terminal_progress_is_plain_log_lines(live, portal, tmp_path):
    source = write_jsonl(tmp_path / "ads.jsonl", [an_ad(n) for n in range(1, 61)])

    result = run_sync(live, portal.key, source, "--batch-size", "5", "--concurrency", "1")

    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    lines = result.stderr.splitlines()
    assert all(line.startswith("directory-sync: ") for line in lines)
    assert "directory-sync: read 60 rows: 60 ads, 0 rejected" in lines
    assert "directory-sync: sending 50/60 ads (83%)" in result.stderr  # every 10 batches
    assert lines[-1].startswith("directory-sync: sending 60/60 ads (100%)")
    assert lines[-1].endswith("created 60")


def test_the_key_comes_from_the_environment_only(live, tmp_path):
    source = write_jsonl(tmp_path / "ads.jsonl", [an_ad(1)])
    env = {name: value for name, value in os.environ.items() if name != "DIRECTORY_PORTAL_KEY"}

    result = subprocess.run(
        sync_command(live, source), env=env, capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 2
    assert "DIRECTORY_PORTAL_KEY" in result.stderr


def test_a_key_the_directory_refuses_is_not_a_run_to_resume(live, portal, directory, tmp_path):
    # A key revoked, or mistyped in cron's environment: running the same command again is
    # refused alike, so it must not say to.
    source = write_jsonl(tmp_path / "ads.jsonl", [an_ad(1)])
    unknown_key = portal.key[:-8] + ("A" * 8 if not portal.key.endswith("A" * 8) else "B" * 8)

    result = run_sync(live, unknown_key, source)

    assert result.returncode == 3, result.stderr
    assert "run the same command again" not in result.stderr
    assert "refused the portal's key" in result.stderr and "DIRECTORY_PORTAL_KEY" in result.stderr
    assert unknown_key not in result.stderr


def test_a_suspended_portal_is_told_so_not_to_resume(live, wiring, portal, directory, tmp_path):
    source = write_jsonl(tmp_path / "ads.jsonl", [an_ad(1)])
    with unit_of_work(wiring.session_factory) as session:
        portals.set_status(session, portal_slug=portal.slug, status=PortalStatus.SUSPENDED)

    result = run_sync(live, portal.key, source)

    assert result.returncode == 3, result.stderr
    assert "run the same command again" not in result.stderr
    assert "portal_suspended" in result.stderr and "operators" in result.stderr


class MisconfiguredAtStart(DirectoryClient):
    """Refuses its URL as it is made, as the transport refuses one without http(s)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ClientMisconfigured("the directory URL must start with http:// or https://")


class MisconfiguredAtFirstCall(DirectoryClient):
    """Refuses its key before its first request, as the transport refuses a key that is no
    valid header value."""

    def get_own_portal(self) -> Any:
        raise ClientMisconfigured("the portal key is not a valid HTTP header value")


@pytest.mark.parametrize("client_class", [MisconfiguredAtStart, MisconfiguredAtFirstCall])
def test_a_key_or_url_the_client_cannot_send_is_bad_usage_not_a_run_to_resume(
    live, portal, directory, tmp_path, capsys, monkeypatch, client_class
):
    source = write_jsonl(tmp_path / "ads.jsonl", [an_ad(1)])
    monkeypatch.setenv("DIRECTORY_PORTAL_KEY", portal.key)

    status = sync_cli.main([str(source), "--directory", live.url], client_class=client_class)

    assert status == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("directory-sync: the ")
    assert stderr.endswith("; nothing was sent\n") and "run the same command again" not in stderr
    assert stored(directory) == {}
    assert not (tmp_path / "ads.jsonl.sync-state").exists()


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda key: key + "\n", id="read-from-a-file-with-its-line-break"),
        pytest.param(lambda key: key[:8] + " " + key[8:], id="a-space"),
        pytest.param(lambda key: key + "é", id="beyond-ascii"),
    ],
)
def test_a_key_that_cannot_be_sent_stops_the_command_before_anything_is_sent(
    live, portal, directory, tmp_path, spoil
):
    source = write_jsonl(tmp_path / "ads.jsonl", [an_ad(1)])
    key = spoil(portal.key)

    result = run_sync(live, key, source)

    assert result.returncode == 2
    assert result.stderr.startswith("directory-sync: key must be a portal key")
    assert result.stderr.endswith("; nothing was sent\n")
    assert portal.key not in result.stdout + result.stderr
    assert "run the same command again" not in result.stderr
    assert stored(directory) == {}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ads.jsonl"]


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda url: url.removeprefix("http://"), id="no-scheme"),
        pytest.param(lambda url: url.replace("http://", "ftp://"), id="ftp"),
    ],
)
def test_a_directory_url_that_cannot_be_sent_stops_the_command_before_anything_is_sent(
    live, portal, directory, tmp_path, spoil
):
    source = write_jsonl(tmp_path / "ads.jsonl", [an_ad(1)])
    url = spoil(live.url)

    result = subprocess.run(
        [sys.executable, "-m", "directory_client.sync_cli", "--directory", url, str(source)],
        env=sync_env(portal.key),
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2
    assert result.stderr.startswith("directory-sync: the directory's URL must start with ")
    assert result.stderr.endswith("; nothing was sent\n")
    assert "run the same command again" not in result.stderr
    assert stored(directory) == {}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ads.jsonl"]


def test_an_unknown_csv_column_stops_the_run_before_anything_is_sent(
    live, portal, directory, tmp_path
):
    source = tmp_path / "ads.csv"
    source.write_text("external_id,title,colour\nad-1,Bike,red\n")

    result = run_sync(live, portal.key, source)

    assert result.returncode == 2
    assert "line 1: unknown column(s) 'colour'" in result.stderr
    assert stored(directory) == {}


def test_a_state_file_of_another_portal_is_refused(live, portal, make_portal, tmp_path):
    source = write_jsonl(tmp_path / "ads.jsonl", [an_ad(1)])
    assert run_sync(live, portal.key, source).returncode == 0
    other = make_portal(slug="other-exchange")

    result = run_sync(live, other.key, source)

    assert result.returncode == 2
    assert f"is for portal {portal.slug!r}" in result.stderr


def test_the_example_loads_without_a_rejection(live, portal, directory, tmp_path):
    source = tmp_path / EXAMPLE.name
    shutil.copy(EXAMPLE, source)

    result = run_sync(live, portal.key, source)

    assert result.returncode == 0, result.stdout + result.stderr
    with EXAMPLE.open(newline="") as file:
        expected = {row["external_id"] for row in csv.DictReader(file)}
    assert len(expected) >= 200 and set(stored(directory)) == expected
    report = json.loads((tmp_path / f"{EXAMPLE.name}.sync-report.json").read_text())
    assert report["created"] == len(expected) and report["rejected"] == []


def test_sync_file_reads_the_same_ads_as_the_command(directory, tmp_path):
    source = tmp_path / EXAMPLE.name
    shutil.copy(EXAMPLE, source)

    report = sync_file(directory, source, state_path=tmp_path / "state")

    assert report.ok and report.created == report.rows
