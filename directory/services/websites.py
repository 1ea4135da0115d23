"""A portal's website, proved to be its own, as ACME's http-01 challenge or a search
engine's site verification prove it: the portal publishes its verification token at
<website>/.well-known/commons-directory, and the directory looks.

Why: the website names the portal's ads everywhere (their global_id), and clients that
search several directories show one ad per global_id. Unproved, anyone could claim a
community's website: in another directory, to shadow its ads there with their own contact
and payment details; in this one, to keep the community from registering its own site.
So an ad has a global_id only while its portal's website is verified (RECORD_COLUMNS), any
number of portals may claim a website, and one of them at most is verified for it (the
partial unique index `uq_portals_website_identity`). A new website starts unverified
(services.portals gives it a new token).

A verification takes three steps, the fetch between two transactions: held open for up
to ten seconds of someone else's web server (webhooks.fetch), a transaction would hold a
database connection and, once it has written, the change feed (its readers wait for every
transaction that could still write before them).

A website verified by a fetch is looked for again by the worker every few days
(claim_recheck, why_token_missing, record_recheck): a domain lost, sold or rebuilt without
the token would otherwise keep naming the portal's ads for good, and keep the site's new
owner from verifying it here. A verification whose token stays missing for a grace period
is withdrawn, provided the directory is seen to reach the web (another website's token
found lately): a directory cut off from the network must not withdraw them all. Websites
an operator vouched for are never looked at again."""

from __future__ import annotations

import enum
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from sqlalchemy import case, exists, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from directory.db import WEBSITE_CHECK_LOCK_NAMESPACE, unique_conflicts
from directory.errors import Conflict
from directory.models import Portal
from directory.services.ads import global_id_prefix
from directory.services.portals import republish_public_ads
from directory.services.slots import held as held_slot
from directory.services.slots import take_turn
from directory.webhooks.fetch import TOTAL_TIMEOUT_S, FetchFailed, fetch_file

# RFC 8615's place for site-wide metadata, below the website as the portal gave it (its
# path included): what is verified is exactly the prefix of the ads' global ids.
WELL_KNOWN_PATH = "/.well-known/commons-directory"
# Characters a URL keeps as they are; others (a path's non-ASCII letters) are escaped.
URL_SAFE = ":/?#[]@!$&'()*+,;=%~"
# A portal's website is fetched at most once in this long, from the start of its last
# check, so one at a time: a check holds an API process meanwhile, and the directory must
# not become a way to send a stream of requests to someone else's site. Twice as long as
# a fetch may last (TOTAL_TIMEOUT_S): the directory checks few websites at once, and a
# portal whose site kept each check waiting the whole timeout, checking again the moment
# it ended, held a slot for good (with the default one, every other portal's checks were
# refused as busy). So it leaves the slot free at least as long as it held it.
CHECK_INTERVAL = timedelta(seconds=2 * TOTAL_TIMEOUT_S)
# Portal.website_recheck_failure's length.
RECHECK_FAILURE_CHARS = 1000


class VerificationState(enum.StrEnum):
    UNVERIFIED = "unverified"
    VERIFIED = "verified"


class VerifiedBy(enum.StrEnum):
    FETCH = "fetch"  # the token was found at the website; looked for again now and then
    OPERATOR = "operator"  # vouched for by the directory's operator; never looked at again


class RecheckResult(enum.StrEnum):
    CONFIRMED = "confirmed"  # the token is still there
    FAILING = "failing"  # not found, for less than the grace period so far
    WITHDRAWN = "withdrawn"  # not found for the whole grace period: the verification ends
    # Not found for the whole grace period, but no other website's token was found lately
    # either: the directory may be the one cut off from the web. Kept, and looked at daily.
    HELD = "held"
    CHANGED = "changed"  # the website or its verification changed meanwhile: nothing recorded


# While a verified website's token is missing, it is looked for daily rather than weekly.
RECHECK_WHILE_FAILING = timedelta(days=1)
# A withdrawal needs proof that the directory itself reaches the web: another website's
# token found within this long. Otherwise a directory cut off from the network for the
# grace period would withdraw every website it verified by a fetch.
REACHED_THE_WEB_WITHIN = timedelta(days=1)


@dataclass(frozen=True)
class WebsiteVerification:
    """Where a portal stands with its website, as its profile shows it."""

    state: VerificationState
    token: str
    url: str  # where the token must be published
    verified_at: datetime | None
    verified_by: VerifiedBy | None
    # Re-checks that have not found the token: since when, and why (they survive a
    # withdrawal, which they explain).
    failing_since: datetime | None
    last_failure: str | None


@dataclass(frozen=True)
class Challenge:
    """What one verification looks for, read before the fetch and checked again after it."""

    portal_id: int
    website: str
    website_identity: str
    token: str
    url: str


def verification_url(website: str | None) -> str | None:
    """Where the portal of `website` publishes its token: below its normalised form."""
    prefix = global_id_prefix(website)
    if prefix is None:
        return None
    return quote(prefix.removesuffix("#"), safe=URL_SAFE) + WELL_KNOWN_PATH


def website_verification(portal: Portal) -> WebsiteVerification | None:
    """None when the portal has no website to verify."""
    url = verification_url(portal.website)
    if url is None or portal.website_verification_token is None:
        return None
    verified = portal.website_verified_at is not None
    return WebsiteVerification(
        state=VerificationState.VERIFIED if verified else VerificationState.UNVERIFIED,
        token=portal.website_verification_token,
        url=url,
        verified_at=portal.website_verified_at,
        verified_by=(
            None
            if not verified
            # Verified before verifications said how: as the operator's (migration 0009).
            else VerifiedBy(portal.website_verified_by or VerifiedBy.OPERATOR)
        ),
        failing_since=portal.website_recheck_failing_since,
        last_failure=portal.website_recheck_failure,
    )


def verification_challenge(session: Session, *, portal_id: int) -> Challenge:
    """Step 1: what to look for, and where; and the portal's turn to be checked
    (TooManyRequests within CHECK_INTERVAL of its last check, or while one runs)."""
    portal = session.get_one(Portal, portal_id)
    verification = website_verification(portal)
    if verification is None:
        raise _no_website()
    _take_turn(session, portal_id=portal_id)
    return _challenge(portal)


def _challenge(portal) -> Challenge:
    """The challenge of a Portal, or of a row of its columns."""
    return Challenge(
        portal_id=portal.id,
        website=portal.website,
        website_identity=portal.website_identity,
        token=portal.website_verification_token,
        url=verification_url(portal.website),
    )


def _take_turn(session: Session, *, portal_id: int) -> None:
    take_turn(
        session,
        portal_id=portal_id,
        taken_at=Portal.website_checked_at,
        interval=CHECK_INTERVAL,
        code="website_checked_recently",
        refusal=f"the website was checked less than {CHECK_INTERVAL.seconds} s ago (or is "
        "being checked now); try again when Retry-After says",
    )


def check_slot(engine: Engine, *, slots: int) -> AbstractContextManager[None]:
    """One of the directory's `slots` for a website check in an API process, for as long
    as the block runs; TooManyRequests `website_checks_busy` when all are taken. A check
    holds its API process for up to the fetch's 10 s: without a bound, a few portals
    pointing at websites that answer slowly could hold every process in turn, and the
    API would stop answering everyone."""
    return held_slot(
        engine,
        namespace=WEBSITE_CHECK_LOCK_NAMESPACE,
        slots=slots,
        code="website_checks_busy",
        refusal="other websites are being checked right now; try again when Retry-After says",
    )


def look_for_token(challenge: Challenge, *, allow_loopback: bool) -> None:
    """Step 2, outside any transaction: fetch the challenge's URL now and find the token
    on a line of its own; raise Conflict `website_not_verified`, saying why, otherwise.
    `allow_loopback`: settings.webhook_allow_loopback."""
    missing = why_token_missing(challenge, allow_loopback=allow_loopback)
    if missing is not None:
        raise _not_verified(missing)


def why_token_missing(challenge: Challenge, *, allow_loopback: bool) -> str | None:
    """Fetches the challenge's URL now: None when the token is there on a line of its
    own, else why not."""
    try:
        fetched = fetch_file(challenge.url, allow_loopback=allow_loopback)
    except FetchFailed as error:
        return str(error)
    text = fetched.body.decode("utf-8", errors="replace").removeprefix("\ufeff")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if challenge.token in lines:
        return None
    found = "is empty" if not lines else f"holds {len(lines)} other line(s)"
    content_type = (fetched.content_type or "").partition(";")[0].strip().lower()
    hint = ""
    if content_type and content_type != "text/plain":
        hint = (
            f" It was answered as {content_type}: a site that answers every path with a "
            "page of its own needs the file published as plain text."
        )
    return (
        f"{fetched.url} {found} but not this portal's token; publish {challenge.token} on a "
        f"line of its own at {challenge.url}.{hint}"
    )


def record_verification(session: Session, *, challenge: Challenge) -> Portal:
    """Step 3, once the token was found: the website is the portal's, unless another
    portal of this directory has verified it first (Conflict `website_taken`), or the
    portal's website changed meanwhile."""
    portal = session.get_one(Portal, challenge.portal_id, with_for_update=True)
    if not _still_challenged(portal, challenge):
        raise _not_verified(
            "the portal's website changed while it was being checked; verify it again"
        )
    return _verified(session, portal, by=VerifiedBy.FETCH)


def _still_challenged(portal: Portal, challenge: Challenge) -> bool:
    """Whether the portal's website and token are still those the challenge was made of
    (the fetch runs between two transactions)."""
    return (portal.website_identity, portal.website_verification_token) == (
        challenge.website_identity,
        challenge.token,
    )


def trust_website(session: Session, *, portal_id: int) -> Portal:
    """Verified without a fetch: for an operator who vetted the website by other means.
    A portal verified already stays as it is."""
    portal = session.get_one(Portal, portal_id, with_for_update=True)
    if website_verification(portal) is None:
        raise _no_website()
    if portal.website_verified_at is not None:
        return portal
    return _verified(session, portal, by=VerifiedBy.OPERATOR)


def withdraw_verification(session: Session, *, portal_id: int) -> Portal:
    """Unverified again, by an operator: for a portal that lost its domain, whose new
    owner's portal could not verify it meanwhile (website_taken). Its ads lose their
    global ids; it may verify the website again (with the same token) if it is its own."""
    portal = session.get_one(Portal, portal_id, with_for_update=True)
    if portal.website_verified_at is None:
        return portal
    portal.website_recheck_failing_since = None
    portal.website_recheck_failure = None
    return _unverified(session, portal)


def _unverified(session: Session, portal: Portal) -> Portal:
    portal.website_verified_at = None
    portal.website_verified_by = None
    portal.updated_at = datetime.now(UTC)
    # Followers of the feed (search indexes, mirrors) must drop the global ids.
    republish_public_ads(session, portal_id=portal.id, payable_only=False)
    session.flush()
    return portal


def _verified(session: Session, portal: Portal, *, by: VerifiedBy) -> Portal:
    newly = portal.website_verified_at is None
    now = datetime.now(UTC)
    with unique_conflicts(session, _website_taken(portal.website)):
        portal.website_verified_at = now
        portal.website_verified_by = by
        portal.website_recheck_failing_since = None
        portal.website_recheck_failure = None
        portal.updated_at = now
        if by is VerifiedBy.FETCH:
            portal.website_token_seen_at = now
    if newly:
        # Its ads gain their global ids: followers of the feed (search indexes, mirrors)
        # must learn them.
        republish_public_ads(session, portal_id=portal.id, payable_only=False)
    session.flush()
    return portal


def claim_recheck(session: Session, *, interval: timedelta) -> Challenge | None:
    """Step 1 of a re-check: the website verified by a fetch that was checked longest
    ago, if its turn has come (its last check `interval` ago, or RECHECK_WHILE_FAILING
    while its token is missing), and the turn taken (website_checked_at), so that
    workers running at once take different ones. None when no website is due."""
    due = (
        select(Portal.id)
        .where(
            Portal.website_verified_by == VerifiedBy.FETCH,
            Portal.website_verified_at.is_not(None),
            or_(
                Portal.website_checked_at.is_(None),
                Portal.website_checked_at
                <= func.now()
                - case(
                    (Portal.website_recheck_failing_since.is_(None), interval),
                    else_=RECHECK_WHILE_FAILING,
                ),
            ),
        )
        .order_by(Portal.website_checked_at.asc().nulls_first())
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    row = session.execute(
        update(Portal)
        .where(Portal.id == due)
        .values(website_checked_at=func.now())
        .returning(
            Portal.id, Portal.website, Portal.website_identity, Portal.website_verification_token
        )
    ).one_or_none()
    return None if row is None else _challenge(row)


def record_recheck(
    session: Session, *, challenge: Challenge, failure: str | None, grace: timedelta
) -> RecheckResult:
    """Step 3 of a re-check: `failure` None when the token was found, else why not.
    Missing for `grace` since the first re-check that missed it, the verification is
    withdrawn (its ads lose their global ids); the failure stays on the profile to
    explain it. A website changed or unverified meanwhile is left as it is."""
    portal = session.get_one(Portal, challenge.portal_id, with_for_update=True)
    if portal.website_verified_at is None or not _still_challenged(portal, challenge):
        return RecheckResult.CHANGED
    now = datetime.now(UTC)
    if failure is None:
        portal.website_recheck_failing_since = None
        portal.website_recheck_failure = None
        portal.website_token_seen_at = now
        return RecheckResult.CONFIRMED
    portal.website_recheck_failing_since = portal.website_recheck_failing_since or now
    portal.website_recheck_failure = failure[:RECHECK_FAILURE_CHARS]
    if now - portal.website_recheck_failing_since < grace:
        return RecheckResult.FAILING
    if not _reached_the_web_lately(session, other_than=portal.id, now=now):
        return RecheckResult.HELD
    _unverified(session, portal)
    return RecheckResult.WITHDRAWN


def _reached_the_web_lately(session: Session, *, other_than: int, now: datetime) -> bool:
    """Whether the directory found another portal's token within REACHED_THE_WEB_WITHIN."""
    return session.scalar(
        select(
            exists().where(
                Portal.id != other_than,
                Portal.website_token_seen_at > now - REACHED_THE_WEB_WITHIN,
            )
        )
    )


def _no_website() -> Conflict:
    return Conflict(
        "the portal has no website to verify; set one first (PATCH /v1/portals/me "
        '{"website": "https://…"})',
        code="no_website",
    )


def _not_verified(reason: str) -> Conflict:
    return Conflict(f"the website was not verified: {reason}", code="website_not_verified")


def _website_taken(website: str) -> dict[str, Exception]:
    site = (global_id_prefix(website) or "").removesuffix("#")
    return {
        "uq_portals_website_identity": Conflict(
            f"another portal of this directory has verified this website ({site}); a "
            "website names its portal's ads everywhere (their global_id), so one portal "
            "of a directory at most may verify it",
            code="website_taken",
        )
    }
