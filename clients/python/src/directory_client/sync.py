"""Keep a portal's ads in the directory equal to a list of ads: the engine of
`directory-sync`, usable from Python.

    with DirectoryClient(url, key=portal_key) as directory:
        report = sync_ads(directory, rows, state_path=Path("ads.sync-state"))

Incremental (the default): only ads that changed since the last successful run are
upserted (POST /v1/ads/batch), and ads that earlier runs pushed but that left the input
are deleted. What the directory accepted is remembered by digest in the state file
(`directory_client.sync_state`), after every batch, so a run that is killed resumes where
it stopped; unchanged ads are sent again before the directory would end them (see
DEFAULT_LIFETIME_S). Ads this command never pushed are left alone: `replace=True` makes
the input the portal's complete set instead, atomically, through a sync session (staged
in batches, then committed in one transaction; a killed run resumes staging in the same
session).

Rows that cannot be used (unreadable, no external_id or one the directory refuses, an
external_id given twice) and ads the directory rejects are reported with their line and
reason, and the directory's copy of such an ad is kept as it was: a row with a typo never
deletes an ad."""

from __future__ import annotations

import copy
import gc
import hashlib
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from directory_client import models
from directory_client.client import DirectoryClient
from directory_client.errors import (
    ApiError,
    Conflict,
    DirectoryUnavailable,
    NotFound,
    ServerError,
    ServiceUnavailable,
    flatten_field_errors,
)
from directory_client.sync_input import SourceRow, read_rows
from directory_client.sync_progress import Progress, Silent
from directory_client.sync_state import (
    UNKNOWN,
    OpenSession,
    StateLog,
    SyncState,
    load_state,
    locked,
)
from directory_client.transport import RetryPolicy

MAX_BATCH_SIZE = 1000  # the API's limit per batch or staging request
# A batch is cut by its size too: half the directory's default request limit (16 MiB,
# DIRECTORY_MAX_REQUEST_BYTES), which 1,000 long ads exceed. A directory set lower answers
# 413: the batch is then sent again in halves (`_Run._fitted`).
MAX_BATCH_BYTES = 8 * 1024 * 1024
DEFAULT_CONCURRENCY = 4
# A batch whose answer was lost is sent again: upserts and deletes by external id give
# the same result twice (the repeat reports `unchanged`).
BATCH_RETRY = RetryPolicy(attempts=5, backoff_s=1.0)
RETRIED_ERRORS = (DirectoryUnavailable, ServiceUnavailable, ServerError)
# The directory's code for a new ad beyond the portal's limit on stored ads: of a request
# it refuses whole (409), or of an item it rejects. The ad's row is not at fault.
TOO_MANY_ADS = "too_many_ads"
# Staged for a row this command rejected, in --replace: the directory rejects it too,
# and a sync session keeps the ad of a rejected item as it was instead of deleting it.
KEEP_AS_IT_WAS: dict[str, Any] = {}
# The directory ends an ad a lifetime after its last change (90 days unless its operator
# set another: DIRECTORY_AD_DEFAULT_TTL_DAYS), and sending it again unchanged does not
# move that end; only an ad that has ended is renewed by being sent again. So an ad whose
# row gives no expires_at of its own is renewed before it ends: once a third of its
# lifetime has passed since the directory last wrote it, it is sent with an expires_at one
# lifetime ahead, the lifetime the directory gave it (a look at the portal's ads tells).
# Until a look tells the directory's, its default is assumed.
DEFAULT_LIFETIME_S = 90 * 24 * 3600
RENEW_AFTER_SHARE = 1 / 3  # of its lifetime: 30 days of 90
# A renewal asks for a lifetime less this, so that a client clock ahead of the directory's
# by up to this never asks beyond its maximum lifetime (which may be its default).
CLOCK_ALLOWANCE_S = 3600
DAY_S = 24 * 3600


def _spec_pattern(struct: type[msgspec.Struct], name: str) -> re.Pattern[str]:
    """The pattern of a string field, as the models generated from openapi.yaml hold it."""
    (field_info,) = (f for f in msgspec.inspect.type_info(struct).fields if f.name == name)
    return re.compile(field_info.type.type.pattern)


# The ids the directory takes: a row with another names no ad it can hold, so it is
# rejected here, as a row without one, rather than refuse the request that carried it.
# Matched whole (fullmatch), as the directory does: "$" alone lets a final newline in.
EXTERNAL_ID = _spec_pattern(models.BatchItem, "external_id")


class SyncError(Exception):
    """The run cannot go on as asked (nothing unsafe was done; the message says why)."""


@dataclass(frozen=True, slots=True)
class Rejection:
    line: int
    external_id: str | None
    reason: str
    errors: dict[str, list[str]] = field(default_factory=dict)  # by field path
    # The directory's code for an ad it rejected (its `error`: unknown_currency,
    # too_many_ads...); None for a row this command rejected before sending it.
    code: str | None = None


@dataclass
class SyncReport:
    mode: str  # incremental or replace
    dry_run: bool
    rows: int = 0
    created: int = 0
    updated: int = 0
    renewed: int = 0  # sent unchanged, to keep them from ending (not among `updated`)
    unchanged: int = 0
    deleted: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    sent: int = 0  # ads sent in this run (upserts, deletes and staged ads)
    resumed: bool = False
    elapsed_s: float = 0.0
    # For a dry run: the external ids that would change.
    would_create: list[str] = field(default_factory=list)
    would_update: list[str] = field(default_factory=list)
    would_renew: list[str] = field(default_factory=list)
    would_delete: list[str] = field(default_factory=list)
    # Deletes not sent because a row without a readable external_id might be that ad.
    deletes_held_back: list[str] = field(default_factory=list)
    # On an incremental run with a state file that records no earlier run: the portal's
    # ads in the directory that are not in the input, left alone (this command never
    # pushed them, as far as the state file knows).
    left_alone: int = 0

    @property
    def ok(self) -> bool:
        return not self.rejected

    @property
    def over_the_limit(self) -> list[Rejection]:
        """Ads not created because the portal stores as many as the directory lets it: no
        fault of their rows, and the next run sends them again."""
        return [rejection for rejection in self.rejected if rejection.code == TOO_MANY_ADS]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rejected"] = sorted(data["rejected"], key=lambda rejection: rejection["line"])
        if not self.dry_run:
            for key in ("would_create", "would_update", "would_renew", "would_delete"):
                del data[key]
        return data


@dataclass(frozen=True, slots=True)
class _Ad:
    line: int
    body: bytes  # the ad's fields, encoded once, with sorted keys: sent as they are
    digest: str
    renewable: bool  # the row gives no expires_at: the directory's default lifetime applies


@dataclass
class _Input:
    ads: dict[str, _Ad]
    rejected: list[Rejection]
    kept: set[str]  # external ids of rejected rows: the directory's ad stays as it was
    rows: int

    @property
    def unidentified(self) -> int:
        """Rejected rows whose external id could not be read: any ad may be one of them."""
        return sum(rejection.external_id is None for rejection in self.rejected)

    def line_of(self, external_id: str | None) -> int:
        ad = self.ads.get(external_id) if external_id is not None else None
        return ad.line if ad is not None else 0


def sync_file(client: DirectoryClient, path: Path, **options: Any) -> SyncReport:
    """`sync_ads` over a JSON Lines or CSV file (`directory_client.sync_input`)."""
    return sync_ads(client, read_rows(path), **options)


def sync_ads(
    client: DirectoryClient,
    ads: Iterable[Mapping[str, Any] | SourceRow],
    *,
    state_path: Path,
    replace: bool = False,
    dry_run: bool = False,
    batch_size: int = MAX_BATCH_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: Progress | None = None,
) -> SyncReport:
    """Make the portal's ads in the directory those of `ads`: mappings with
    `external_id` and the fields of PUT /v1/ads/{external_id} (numbered from 1 in
    reports), or the rows of `sync_input.read_rows` (numbered by line)."""
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise SyncError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}, got {batch_size}")
    if concurrency < 1:
        raise SyncError(f"concurrency must be at least 1, got {concurrency}")
    progress = progress or Silent()
    # A dry run only reads the state: it may run beside another dry run, not beside a run.
    with locked(state_path, shared=dry_run):
        return _sync(
            client,
            ads,
            state_path=state_path,
            replace=replace,
            dry_run=dry_run,
            batch_size=batch_size,
            concurrency=concurrency,
            progress=progress,
        )


def _sync(
    client: DirectoryClient,
    ads: Iterable[Mapping[str, Any] | SourceRow],
    *,
    state_path: Path,
    replace: bool,
    dry_run: bool,
    batch_size: int,
    concurrency: int,
    progress: Progress,
) -> SyncReport:
    started = time.monotonic()
    portal = client.get_own_portal()
    state = load_state(state_path, directory=client.base_url, portal=portal.slug)
    source = read_input(ads)
    report = SyncReport(
        mode="replace" if replace else "incremental",
        dry_run=dry_run,
        rows=source.rows,
        rejected=list(source.rejected),
        resumed=not state.finished,
    )
    progress.note(
        f"read {source.rows:,} rows: {len(source.ads):,} ads, "
        f"{len(source.rejected):,} rejected"
        + (" (resuming an interrupted run)" if report.resumed else "")
    )
    if not source.ads and not dry_run and (replace or set(state.ads) - source.kept):
        raise SyncError(
            "the input holds no usable ad: syncing it would delete every ad of the portal; "
            "nothing was sent"
        )
    if replace and source.unidentified:
        raise SyncError(
            f"{source.unidentified:,} rows without a readable external_id (first on line "
            f"{min(r.line for r in source.rejected if r.external_id is None)}): --replace "
            "would delete their ads; fix them or leave them out. Nothing was sent"
        )
    run = _Run(client, source, report, progress, batch_size, concurrency)
    if dry_run:
        run.plan_dry(state, replace=replace)
    else:
        log = StateLog(state_path, state)
        try:
            run.settle_session(log, keep_open=replace)
            if replace:
                run.replace(log)
            else:
                run.incremental(log)
            log.finish()
        finally:
            log.close()
    report.elapsed_s = time.monotonic() - started
    return report


def read_input(ads: Iterable[Mapping[str, Any] | SourceRow]) -> _Input:
    """Each row checked, encoded canonically and digested; rejections kept with lines."""
    # Each row makes a dozen objects that reference counting frees at once, while the
    # kept ones pile up: the cyclic collector would scan that growing pile over and
    # over (a third of the reading time for 100,000 rows) and finds no cycles in it.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _read_input(ads)
    finally:
        if collecting:
            gc.enable()


def _read_input(ads: Iterable[Mapping[str, Any] | SourceRow]) -> _Input:
    encoder = msgspec.json.Encoder(order="sorted")
    accepted: dict[str, _Ad] = {}
    rejected: list[Rejection] = []
    lines_by_id: dict[str, list[int]] = {}
    rows = 0
    for position, row in enumerate(ads, start=1):
        rows += 1
        if isinstance(row, SourceRow):
            line, fields, problem = row.line, row.fields, row.problem
        else:
            line, fields, problem = position, dict(row), None
        external_id = None if fields is None else fields.pop("external_id", None)
        if problem is None:
            problem = _external_id_problem(external_id)
        if isinstance(external_id, str) and EXTERNAL_ID.fullmatch(external_id):
            lines_by_id.setdefault(external_id, []).append(line)
        else:
            external_id = None
        if problem is not None:
            rejected.append(Rejection(line, external_id, problem))
            continue
        try:
            body = encoder.encode(fields)
        except (TypeError, msgspec.EncodeError) as error:
            rejected.append(Rejection(line, external_id, f"cannot be encoded as JSON: {error}"))
            continue
        accepted[external_id] = _Ad(
            line,
            body,
            hashlib.blake2b(body, digest_size=16).hexdigest(),
            renewable=fields.get("expires_at") is None,
        )
    kept = {external_id for rejection in rejected if (external_id := rejection.external_id)}
    for external_id, lines in lines_by_id.items():
        if len(lines) > 1:
            kept.add(external_id)
            shown = ", ".join(map(str, lines))
            accepted.pop(external_id, None)
            for line in lines:
                rejected.append(
                    Rejection(
                        line,
                        external_id,
                        f"external_id {external_id!r} is on lines {shown}: which one is meant "
                        "is unclear, so the directory's ad is kept as it was",
                    )
                )
    return _Input(accepted, rejected, kept, rows)


def _external_id_problem(external_id: Any) -> str | None:
    if external_id is None:
        return "external_id is missing"
    if not isinstance(external_id, str) or not external_id:
        return f"external_id must be a non-empty string, got {external_id!r}"
    if not EXTERNAL_ID.fullmatch(external_id):
        return (
            f"external_id {external_id!r} is not one the directory takes (it must match "
            f"{EXTERNAL_ID.pattern})"
        )
    return None


@dataclass
class _Renewals:
    """Ads the input has unchanged that are sent again all the same, lest they end."""

    bodies: dict[str, bytes] = field(default_factory=dict)  # what to send, by external id
    missing: set[str] = field(default_factory=set)  # gone from the directory: made again
    looked: dict[str, int] | None = None  # after a look: ads written since, and when
    lifetime_s: int | None = None  # the shortest lifetime a look found


@dataclass(frozen=True, slots=True)
class _Batch:
    number: int
    external_ids: list[str]
    items: list[dict[str, Any]]


class _Run:
    def __init__(
        self,
        client: DirectoryClient,
        source: _Input,
        report: SyncReport,
        progress: Progress,
        batch_size: int,
        concurrency: int,
    ) -> None:
        self.client = client
        self.source = source
        self.report = report
        self.progress = progress
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.counts: Counter[str] = Counter()
        self.now = datetime.now(UTC).replace(microsecond=0)

    # --- incremental ----------------------------------------------------------------

    def _incremental_plan(self, state: SyncState) -> tuple[list[str], list[str]]:
        """Upserts (in input order) and deletes."""
        ads = self.source.ads
        upserts = [key for key, ad in ads.items() if state.ads.get(key) != ad.digest]
        deletes = [key for key in state.ads if key not in ads and key not in self.source.kept]
        if deletes and self.source.unidentified:
            self.report.deletes_held_back = deletes
            self.progress.note(
                f"{len(deletes):,} deletes held back: {self.source.unidentified:,} rows have "
                "no readable external_id, and any of those ads may be one of them"
            )
            deletes = []
        return upserts, deletes

    def _renewals(
        self,
        state: SyncState,
        unchanged: Iterable[str],
        own: Mapping[str, models.Ad] | None = None,
    ) -> _Renewals:
        """Which of the `unchanged` ads to send again: those due for renewal (see
        DEFAULT_LIFETIME_S), after a look at what the directory holds of them (`own`, the
        portal's ads by external id, when the caller has them already)."""
        ads, now = self.source.ads, self.now
        renew_after = (state.lifetime_s or DEFAULT_LIFETIME_S) * RENEW_AFTER_SHARE
        due = [
            key
            for key in unchanged
            if ads[key].renewable and now.timestamp() - state.written.get(key, 0) >= renew_after
        ]
        renewals = _Renewals()
        if not due:
            return renewals
        if own is None:
            wanted = set(due)
            own = {
                ad.external_id: ad for ad in self.client.iter_own_ads() if ad.external_id in wanted
            }
        renewals.looked = {}
        lifetimes = []
        for key in due:
            held = own.get(key)
            if held is None:  # deleted behind this command's back: sent, it is made again
                renewals.bodies[key] = ads[key].body
                renewals.missing.add(key)
                continue
            days = round((held.expires_at - held.updated_at) / timedelta(days=1))
            lifetime_s = max(days, 1) * DAY_S
            if days >= 1:  # an ad ended by hand (`expire`) ends when it was last written
                lifetimes.append(lifetime_s)
            if held.expired:  # sent again as it is, it is renewed
                renewals.bodies[key] = ads[key].body
            elif now - held.updated_at < timedelta(seconds=lifetime_s * RENEW_AFTER_SHARE):
                renewals.looked[key] = int(held.updated_at.timestamp())  # written since
            else:
                expires_at = now + timedelta(seconds=lifetime_s - CLOCK_ALLOWANCE_S)
                renewals.bodies[key] = _with_expiry(ads[key].body, expires_at)
        renewals.lifetime_s = min(lifetimes, default=None)
        self.progress.note(
            f"looked at {len(due):,} ads due for renewal: {len(renewals.bodies):,} to send "
            f"again ({len(renewals.missing):,} gone from the directory)"
        )
        return renewals

    def _record_look(self, log: StateLog, renewals: _Renewals) -> None:
        if renewals.looked is not None:
            log.record({"looked": renewals.looked, "lifetime_s": renewals.lifetime_s})

    def _untracked(self, state: SyncState, own: Iterable[str] | None = None) -> None:
        """Counts, when the state file records no earlier run, the portal's ads in the
        directory (the external ids `own`, listed here when not given) that are not in the
        input: an incremental run leaves them, and a later one deletes only what it
        pushed. Counted, so that the summary says so: a state file lost, or named after a
        dated export that is new every day, would otherwise let ads gone from the portal
        stay published."""
        if state.ads:
            return
        if own is None:
            own = (ad.external_id for ad in self.client.iter_own_ads())
        self.report.left_alone = sum(
            key is not None and key not in self.source.ads and key not in self.source.kept
            for key in own
        )

    def incremental(self, log: StateLog) -> None:
        self._untracked(log.state)
        upserts, deletes = self._incremental_plan(log.state)
        ads = self.source.ads
        sending = set(upserts)
        renewals = self._renewals(log.state, (key for key in ads if key not in sending))
        self._record_look(log, renewals)
        renewing = list(renewals.bodies)
        self.counts["unchanged"] = len(ads) - len(upserts) - len(renewing)
        self.progress.note(
            f"{len(upserts):,} ads to send, {len(renewing):,} to renew, "
            f"{len(deletes):,} to delete, {self.counts['unchanged']:,} unchanged since the "
            "last run"
        )
        bodies = {key: ads[key].body for key in upserts} | renewals.bodies
        items: list[dict[str, Any]] = [
            {"external_id": key, "ad": msgspec.Raw(body)} for key, body in bodies.items()
        ]
        items += [{"op": "delete", "external_id": key} for key in deletes]
        keys = list(bodies) + deletes

        def after(batch: _Batch, results: Sequence[models.ItemResult]) -> None:
            synced: dict[str, str | None] = {}
            written: dict[str, int] = {}
            for key, result in zip(batch.external_ids, results, strict=True):
                if result.status == "rejected":
                    self._reject(key, result)
                    self.counts["rejected"] += 1
                    continue
                if key in ads:
                    synced[key] = ads[key].digest
                    if result.status in ("created", "updated"):
                        written[key] = int(time.time())
                    renewed = key in renewals.bodies and result.status == "updated"
                    self.counts["renewed" if renewed else result.status] += 1
                else:  # `deleted`, or `unchanged` when it was gone already: gone either way
                    synced[key] = None
                    self.counts["deleted"] += 1
            log.record({"synced": batch.number, "ads": synced, "written": written})

        self._send(
            "sending",
            keys,
            items,
            lambda batch: self._fitted(self._batch_ads, batch.items),
            log,
            after,
        )
        self._count()

    def _batch_ads(self, items: list[dict[str, Any]]) -> list[models.ItemResult]:
        for attempt in range(1, BATCH_RETRY.attempts + 1):
            try:
                return self.client.batch_ads(items).results
            except RETRIED_ERRORS:
                if attempt == BATCH_RETRY.attempts:
                    raise
                time.sleep(BATCH_RETRY.backoff(attempt))
        raise AssertionError("unreachable")

    # --- replace --------------------------------------------------------------------

    def settle_session(self, log: StateLog, *, keep_open: bool) -> None:
        """A session left by an interrupted run: adopt it if it was committed, keep it
        for --replace while it is open, close it otherwise."""
        session = log.state.session
        if session is None:
            return
        try:
            status = self.client.get_sync_session(session.id)
        except NotFound:
            status = None
        if status is not None and status.status == "committed":
            self.progress.note(f"the interrupted run's sync session {session.id} was committed")
            log.record({"committed": session.id, "unknown": self._rejected_at_commit(session)})
            return
        still_open = (
            status is not None and status.status == "open" and status.expires_at > datetime.now(UTC)
        )
        if still_open and keep_open:
            return
        if still_open:
            self.client.abort_sync_session(session.id)
        self.progress.note(f"closed the interrupted run's sync session {session.id}")
        log.record({"closed": session.id})

    def _rejected_at_commit(self, session: OpenSession) -> list[str]:
        """The ads an interrupted run's commit rejected (a currency gone since staging,
        say), from the commit's answer asked for again. Recorded as synced, they would
        be sent again only once they change. A directory that kept no answer (a session
        committed before it did) leaves every staged ad to be looked at again."""
        try:
            result = self.client.commit_sync_session(session.id)
        except Conflict:
            return sorted(session.staged)
        return self._rejected_by(result)

    def _rejected_by(self, commit: models.CommitResult) -> list[str]:
        """The ads a commit rejected, reported; their ids, to be recorded as unknown."""
        for item in commit.rejected_items:
            self._reject(item.external_id, item)
        return [item.external_id for item in commit.rejected_items if item.external_id is not None]

    def replace(self, log: StateLog) -> None:
        ads, kept = self.source.ads, self.source.kept
        known = log.state.ads
        renewals = self._renewals(
            log.state, (key for key, ad in ads.items() if known.get(key) == ad.digest)
        )
        self._record_look(log, renewals)
        session = log.state.session
        if session is not None and set(session.staged) - set(ads) - kept:
            # Staged ads are applied at commit and cannot be unstaged: the input changed
            # since, so the session is of no use any more.
            self.client.abort_sync_session(session.id)
            log.record({"closed": session.id})
            self.progress.note(f"aborted sync session {session.id}: the input changed since")
            session = None
        if session is None:
            opened = self.client.open_sync_session()
            log.record({"session": str(opened.id)})
            session = log.state.session
        else:
            self.progress.note(f"resuming sync session {session.id}")
        staged = session.staged
        keys = [key for key, ad in ads.items() if staged.get(key) != ad.digest]
        # Every kept id, even one staged UNKNOWN: that may be an unanswered batch's ad, and
        # staging it again as KEEP_AS_IT_WAS replaces whatever that batch staged.
        keys += sorted(kept)
        items = [
            {
                "external_id": key,
                "ad": msgspec.Raw(renewals.bodies.get(key, ads[key].body))
                if key in ads
                else KEEP_AS_IT_WAS,
            }
            for key in keys
        ]
        # What this run stages of the renewals (a resumed session may hold some already).
        renewing = {key for key in keys if key in renewals.bodies}
        self.progress.note(
            f"staging {len(keys):,} ads in sync session {session.id} "
            f"({len(staged):,} staged before; {len(renewing):,} to renew)"
        )
        refused: set[str] = set()

        def after(batch: _Batch, results: Sequence[models.ItemResult]) -> None:
            recorded: dict[str, str] = {}
            for key, result in zip(batch.external_ids, results, strict=True):
                if result.status == "staged":
                    recorded[key] = ads[key].digest
                else:
                    recorded[key] = UNKNOWN
                    refused.add(key)
                    if key in ads:
                        self._reject(key, result)
                self.counts[result.status] += 1
            log.record({"staged": recorded, "batch": batch.number})

        self._send(
            "staging",
            keys,
            items,
            lambda batch: self._fitted(
                lambda items: self.client.stage_sync_items(session.id, items).results,
                batch.items,
                # An ad left unstaged would be deleted by the commit.
                keep_too_large=True,
            ),
            log,
            after,
        )
        self.progress.note(f"committing sync session {session.id}")
        result = self.client.commit_sync_session(session.id)
        unknown = self._rejected_by(result)
        renewed = renewing - refused - set(unknown)
        committed_at = int(time.time())
        log.record(
            {
                "committed": session.id,
                "unknown": unknown,
                "written": dict.fromkeys(sorted(renewed), committed_at),
            }
        )
        # The commit counts a renewal as an update, and making a missing ad again as a
        # creation, which it is.
        renewed -= renewals.missing
        self.report.created = result.created
        self.report.updated = max(result.updated - len(renewed), 0)
        self.report.renewed = len(renewed)
        self.report.unchanged = result.unchanged
        self.report.deleted = result.deleted

    def _fitted(
        self,
        call: Callable[[list[dict[str, Any]]], Sequence[models.ItemResult]],
        items: list[dict[str, Any]],
        *,
        keep_too_large: bool = False,
    ) -> list[models.ItemResult]:
        """`call(items)`, sent again in halves while the directory answers 413 (its
        request limit is below MAX_BATCH_BYTES). An item too large on its own is rejected
        here; with `keep_too_large`, KEEP_AS_IT_WAS is staged in its place."""
        try:
            return list(call(items))
        except ApiError as error:
            if error.status != 413:
                raise
            too_large = error
        if len(items) > 1:
            half = len(items) // 2
            return [
                *self._fitted(call, items[:half], keep_too_large=keep_too_large),
                *self._fitted(call, items[half:], keep_too_large=keep_too_large),
            ]
        (item,) = items
        if keep_too_large:
            call([{"external_id": item["external_id"], "ad": KEEP_AS_IT_WAS}])
        size = len(_ENCODER.encode(item))
        reason = f"{size:,} bytes as JSON, more than the directory takes in a request"
        return [
            models.ItemResult(
                index=0,
                external_id=item["external_id"],
                status="rejected",
                id=None,
                version=None,
                etag=None,
                error=too_large.code,
                errors={"ad": [f"{reason} ({too_large})"]},
            )
        ]

    # --- dry run --------------------------------------------------------------------

    def plan_dry(self, state: SyncState, *, replace: bool) -> None:
        """What a run would change, from the state file and the directory's list of the
        portal's external ids (whether an ad is new there); nothing is written."""
        # Settled as a run settles it first: the ads of a batch an interrupted run sent
        # and never heard back about may be in the directory (UNKNOWN), so one that left
        # the input is a delete. On a copy: a dry run writes nothing.
        state = copy.deepcopy(state)
        state.settle_pending()
        own = {ad.external_id: ad for ad in self.client.iter_own_ads()}
        ads, report = self.source.ads, self.report
        if replace:
            upserts = list(ads)
            deletes = sorted(own.keys() - set(ads) - self.source.kept)
            renewals = self._renewals(
                state, (key for key, ad in ads.items() if state.ads.get(key) == ad.digest), own
            )
        else:
            self._untracked(state, own)
            upserts, deletes = self._incremental_plan(state)
            deletes = [key for key in deletes if key in own]
            sending = set(upserts)
            renewals = self._renewals(state, (key for key in ads if key not in sending), own)
            report.unchanged = len(ads) - len(upserts) - len(renewals.bodies)
            upserts += [key for key in renewals.bodies if key in renewals.missing]
        report.would_create = [key for key in upserts if key not in own]
        report.would_update = [key for key in upserts if key in own and key not in renewals.bodies]
        report.would_renew = [key for key in renewals.bodies if key in own]
        report.would_delete = deletes

    # --- sending --------------------------------------------------------------------

    def _send(
        self,
        action: str,
        keys: list[str],
        items: list[dict[str, Any]],
        call: Callable[[_Batch], Sequence[models.ItemResult]],
        log: StateLog,
        after: Callable[[_Batch, Sequence[models.ItemResult]], None],
    ) -> None:
        """Send `items` in batches, up to `concurrency` at a time, each marked in `log`
        before it is sent; `after` records an answer, in this thread, in order of answers."""
        batches = (
            _Batch(number, keys[start:end], items[start:end])
            for number, (start, end) in enumerate(self._cut(items), start=1)
        )
        self.progress.start(action, len(items))
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="directory-sync") as pool:
            running: dict[Future, _Batch] = {}
            try:
                for batch in _then_none(batches):
                    if batch is not None:
                        log.record({"sending": batch.number, "ids": batch.external_ids})
                        running[pool.submit(call, batch)] = batch
                    while running and (batch is None or len(running) >= self.concurrency):
                        done, _ = wait(running, return_when=FIRST_COMPLETED)
                        for future in done:
                            answered = running.pop(future)
                            after(answered, future.result())
                            self.report.sent += len(answered.items)
                            self.progress.advance(len(answered.items), self.counts)
            finally:
                for future in running:
                    future.cancel()
        self.progress.finish()

    def _cut(self, items: list[dict[str, Any]]) -> Iterator[tuple[int, int]]:
        """Where batches start and end: at most `batch_size` items and MAX_BATCH_BYTES
        (an item larger than that goes alone)."""
        start, size = 0, 0
        for index, item in enumerate(items):
            item_size = len(_ENCODER.encode(item)) + 1  # and a comma
            if index > start and (
                index - start == self.batch_size or size + item_size > MAX_BATCH_BYTES
            ):
                yield start, index
                start, size = index, 0
            size += item_size
        if start < len(items):
            yield start, len(items)

    def _reject(self, external_id: str | None, result: models.ItemResult) -> None:
        # The directory names an item's fields under "ad"; a row has them at its top.
        paths = {
            path.removeprefix("ad."): messages
            for path, messages in flatten_field_errors(result.errors or {}).items()
        }
        reason = "; ".join(
            # "_schema" is the item as a whole (the portal's limit, say): no field to name.
            " ".join(messages) if path == "_schema" else f"{path}: {' '.join(messages)}"
            for path, messages in paths.items()
        )
        self.report.rejected.append(
            Rejection(
                self.source.line_of(external_id),
                external_id,
                reason or "rejected by the directory",
                paths,
                result.error,
            )
        )

    def _count(self) -> None:
        report, counts = self.report, self.counts
        report.created = counts["created"]
        report.updated = counts["updated"]
        report.renewed = counts["renewed"]
        report.unchanged = counts["unchanged"]
        report.deleted = counts["deleted"]


_ENCODER = msgspec.json.Encoder()  # an item as it is sent (its ad is msgspec.Raw already)
_SORTED_ENCODER = msgspec.json.Encoder(order="sorted")  # an ad's fields, as read_input does


def _with_expiry(body: bytes, expires_at: datetime) -> bytes:
    """An ad's fields, encoded by read_input, with an expires_at of their own."""
    return _SORTED_ENCODER.encode(msgspec.json.decode(body) | {"expires_at": expires_at})


def _then_none(items: Iterable[Any]) -> Iterator[Any]:
    """The items, then None: the signal to wait for everything still running."""
    yield from items
    yield None
