"""The `directory` command: serve, migrate, worker, reindex, portals, demo, openapi, localdb,
localredis."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from directory.cores import usable_cores
from directory.db import MIGRATE_LOCK_NAMESPACE
from directory.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[1]
# The API is CPU-bound (JSON and validation): one process per core it may use plus one to
# cover a process waiting on the database. Measured with bench/ingest.py on 2 cores: 3
# workers 8,450 ads/s, 5 workers (gunicorn's 2n+1 for I/O-bound apps) 6,750 ads/s.
DEFAULT_WORKERS = usable_cores() + 1
# How long gunicorn lets its workers finish their requests once told to stop (SIGTERM);
# docker-compose.yml's stop_grace_period for the API is longer.
GRACEFUL_TIMEOUT_S = 20


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


@contextmanager
def _database_errors():
    """A database that cannot be reached (or fails) stops the command with its reason,
    not a traceback."""
    from psycopg.errors import UndefinedColumn, UndefinedTable
    from sqlalchemy.exc import OperationalError, ProgrammingError

    try:
        yield
    except OperationalError as error:
        raise click.ClickException(f"database error: {error.orig or error}") from None
    except ProgrammingError as error:
        # The code was upgraded and `migrate` not run yet (or the URL names another
        # database): say so, rather than show SQL.
        if not isinstance(error.orig, UndefinedTable | UndefinedColumn):
            raise
        first_line = str(error.orig).splitlines()[0]
        raise click.ClickException(
            f"the database's tables are not this release's ({first_line}): run "
            "`directory migrate` first, or check DIRECTORY_DATABASE_URL"
        ) from None


@contextmanager
def _wiring():
    """The app's wiring for one command; its connections are closed when it ends."""
    import directory

    wiring = directory.build_wiring(_settings())
    try:
        with _database_errors():
            yield wiring
    finally:
        wiring.close()


@contextmanager
def _transaction():
    from directory.db import unit_of_work

    with _wiring() as wiring, unit_of_work(wiring.session_factory) as session:
        yield session


@click.group()
def cli() -> None:
    """Commons Directory: the offers-and-wants directory for mutual-credit communities.

    Configuration comes from DIRECTORY_* environment variables (see README)."""
    _output_any_character()


def _output_any_character() -> None:
    """A character the terminal's encoding lacks (a Latin-1 terminal, a portal's Greek
    name or website) is written as an escape (\\u03b1): it stopped a command with a
    traceback halfway, `portals create` after the portal was made and before its key,
    shown that once, was printed."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


@cli.command()
@click.option("--bind", default="127.0.0.1:8000", show_default=True)
@click.option(
    "--workers",
    default=DEFAULT_WORKERS,
    type=click.IntRange(min=1),
    show_default=True,
    help="gunicorn worker processes (default: one per core this process may use, by its "
    "CPU affinity and its cgroup's CPU quota, plus one)",
)
def serve(bind: str, workers: int) -> None:
    """Serve the API under gunicorn.

    Its sync workers read one request at a time: anything reachable by others belongs
    behind a buffering proxy (deploy/nginx.conf.template), or a few slow clients hold
    every worker."""
    _settings()  # fail fast, before gunicorn starts its workers
    os.execvp(
        sys.executable,
        [
            sys.executable, "-m", "gunicorn",
            "--bind", bind,
            "--workers", str(workers),
            "--graceful-timeout", str(GRACEFUL_TIMEOUT_S),
            # A sync-session commit of a few hundred thousand ads takes tens of seconds.
            "--timeout", "300",
            # Request lines as long as nginx's 8k header buffers let through (its maximum):
            # longer ones nginx refuses in the API's JSON (deploy/nginx.conf.template),
            # where gunicorn's own refusal of a line over its default 4,094 is an HTML page.
            "--limit-request-line", "8190",
            # Header fields: gunicorn's default of 100 refused more in HTML, past nginx. About
            # as many as nginx's buffers hold (more headers it refuses in JSON) but not
            # gunicorn's maximum of 32,768: with 8 KiB each, one request could hold 256 MiB.
            "--limit-request-fields", "8192",
            # Unused, and by default one path in the user's home for all their gunicorns.
            "--no-control-socket",
            "directory.wsgi:app",
        ],
    )  # fmt: skip


MIGRATE_LOCK = {"namespace": MIGRATE_LOCK_NAMESPACE, "key": 0}


@cli.command()
@click.option("--revision", default="head", show_default=True)
def migrate(revision: str) -> None:
    """Upgrade the database schema to the latest migration (or to --revision).

    One migration runs at a time: a second `migrate` (two deployments starting together)
    waits for the first, then finds nothing left to do."""
    from alembic import command
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError
    from psycopg.errors import LockNotAvailable, QueryCanceled
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.pool import NullPool

    from directory.db import with_connect_timeout

    database_url = _settings().database_url
    config = alembic_config(database_url)
    scripts = ScriptDirectory.from_config(config)
    engine = create_engine(with_connect_timeout(database_url), poolclass=NullPool)
    try:
        with _database_errors(), engine.connect() as connection:
            # Held by this connection's session until it closes, so by a process that
            # dies too; migrations run on the same connection (migrations/env.py).
            if not connection.scalar(
                text("SELECT pg_try_advisory_lock(:namespace, :key)"), MIGRATE_LOCK
            ):
                click.echo("another `directory migrate` is running: waiting for it", err=True)
                connection.execute(text("SELECT pg_advisory_lock(:namespace, :key)"), MIGRATE_LOCK)
            before = _revision_of(connection)
            if before is not None and before not in {s.revision for s in scripts.walk_revisions()}:
                # A later release migrated it first; this one serves on that schema
                # (each migration is backward compatible), as /readyz says.
                if revision != "head":
                    raise click.ClickException(
                        f"the database is at {before}, a later release's migration that this "
                        f"release does not know: it cannot migrate it to {revision}"
                    )
                click.echo(
                    f"database at {before}, a later release's migration (this release's "
                    f"latest is {scripts.get_current_head()}): nothing to do"
                )
                return
            config.attributes["connection"] = connection
            try:
                command.upgrade(config, revision)
            except CommandError as error:
                raise click.ClickException(f"cannot migrate to {revision!r}: {error}") from None
            except OperationalError as error:
                if not isinstance(error.orig, LockNotAvailable | QueryCanceled):
                    raise
                connection.rollback()
                raise click.ClickException(_stopped_upgrade(scripts, connection, error)) from None
            after = _revision_of(connection)
    finally:
        engine.dispose()
    _check_feed_order()
    if _short_of(scripts, revision, after):
        raise click.ClickException(
            f"the database is at {after or 'base'}, past {revision}: `migrate` only upgrades "
            "(nothing was changed)"
        )
    click.echo(f"database at {revision}" + (f" ({after})" if after != revision else ""))


def _stopped_upgrade(scripts, connection, error) -> str:
    """What an upgrade stopped by its timeouts (migrations/env.py) did and what to do: the
    migrations before the one stopped are done (each commits on its own)."""
    from psycopg.errors import LockNotAvailable

    reached = _revision_of(connection)
    stopped = next(
        (s.revision for s in scripts.walk_revisions() if s.down_revision == reached), "?"
    )
    if isinstance(error.orig, LockNotAvailable):
        why = (
            "could not lock a table in time: a transaction holds it (see pg_stat_activity "
            "for one that has run long)"
        )
    else:
        why = "ran past its statement timeout"
    return (
        f"migration {stopped} {why}; it was undone, and the database is at "
        f"{reached or 'base'}, the migrations before it done: run `directory migrate` again"
    )


def _revision_of(connection) -> str | None:
    from sqlalchemy.orm import Session

    from directory.services.health import current_revision

    with Session(bind=connection) as session:
        revision = current_revision(session)
    connection.commit()  # out of the transaction the read began: the lock stays
    return revision


def _short_of(scripts, revision: str, reached: str | None) -> bool:
    """Whether the database, at `reached`, is not at the revision asked for: alembic's
    upgrade to an earlier one leaves it as it is, without a word."""
    from alembic.util import CommandError

    try:
        script = scripts.get_revision(revision)
    except CommandError:  # relative ("+1"): whatever alembic made of it
        return False
    return (None if script is None else script.revision) != reached


def _check_schema() -> None:
    """Stops a command that would work on the database for long (the worker) while its
    schema is behind this release's: each of its jobs would fail at the first statement
    naming what a pending migration adds, and again at each retry. A later release's
    schema is fine, as for /readyz: migrations are backward compatible."""
    from directory.services.health import readiness

    with _transaction() as session:
        state = readiness(session)
    if state["status"] != "ok":
        raise click.ClickException(
            f"the database is at migration {state['migration'] or '(none)'}, and this release "
            f"needs {state['expected_migration']}: run `directory migrate` first, or check "
            "DIRECTORY_DATABASE_URL"
        )


def _check_feed_order() -> None:
    """Stops a command on a database whose change feed this cluster cannot continue
    (restored into a new cluster: services.feed.transaction_ids_gone_back)."""
    from directory.services.feed import transaction_ids_gone_back

    with _transaction() as session:
        problem = transaction_ids_gone_back(session)
    if problem is not None:
        raise click.ClickException(problem)


def alembic_config(database_url: str):
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


@cli.command()
@click.option("--once", is_flag=True, help="One round, then exit")
def worker(once: bool) -> None:
    """Run the background worker: relay deliveries, housekeeping, website re-checks and,
    with Meilisearch, search indexing."""
    from directory import configure_logging
    from directory import worker as worker_module

    settings = _settings()
    configure_logging(settings.log_level)
    _check_schema()
    _check_feed_order()
    with _wiring() as wiring:
        succeeded = worker_module.run(wiring, once=once)
    if not succeeded:
        raise click.ClickException("the worker's last round failed; see the log above")


@cli.command()
def reindex() -> None:
    """Rebuild the Meilisearch index from the database and swap it in (searches go on
    meanwhile, on the old index); the worker then keeps it up to date."""
    from meilisearch.errors import MeilisearchError

    from directory import configure_logging
    from directory.search import indexing
    from directory.search.meili import IndexingError

    settings = _settings()
    if settings.search_engine != "meilisearch":
        raise click.ClickException(
            f"reindex rebuilds the Meilisearch index, but DIRECTORY_SEARCH_ENGINE is "
            f"{settings.search_engine!r}: the PostgreSQL engine searches the database "
            "itself and has no index to rebuild"
        )
    configure_logging(settings.log_level)
    _check_schema()
    with _wiring() as wiring:
        try:
            count = indexing.rebuild(wiring, progress=True)
        except (MeilisearchError, IndexingError) as error:
            raise click.ClickException(f"reindex failed: {error}") from None
    click.echo(f"search index rebuilt: {count} ads")


@cli.group()
def portals() -> None:
    """Manage portals and their keys."""


@portals.command("create")
@click.argument("slug")
@click.option("--name", required=True)
@click.option("--website", help="Unverified until the portal proves it is its own")
@click.option(
    "--trust-website",
    is_flag=True,
    help="Mark the website verified without a check: you vetted it by other means",
)
@click.option("--contact", help="How the operators reach the portal's team")
@click.option("--currency", "currencies", multiple=True, help="Default currency (repeatable)")
def portals_create(slug, name, website, trust_website, contact, currencies) -> None:
    """Register a portal and print its first key (shown once)."""
    from directory.services import portals as service
    from directory.services import websites

    if trust_website and website is None:
        raise click.UsageError("--trust-website needs --website")
    with _transaction() as session:
        portal, key = _domain(
            service.create_portal,
            session,
            slug=slug,
            name=name,
            website=website,
            contact=contact,
            default_currencies=list(currencies),
        )
        if trust_website:
            _domain(websites.trust_website, session, portal_id=portal.id)
    if trust_website:
        click.echo(f"website {website} marked verified without a check (--trust-website)")
    elif website is not None:
        click.echo(
            f"website {website} unverified: its ads have no global_id until the portal "
            "publishes its token (GET /v1/portals/me) and verifies it"
        )
    click.echo(f"portal {portal.slug} created; its key (shown once, store it now):")
    click.echo(key.key)


@portals.command("list")
@click.option("--json", "as_json", is_flag=True)
def portals_list(as_json: bool) -> None:
    """List portals with their status, ads and the most they may store, live keys and
    website verification."""
    from directory.services import portals as service
    from directory.services.ads import ad_limit
    from directory.services.websites import website_verification

    max_ads = _settings().portal_max_ads
    with _transaction() as session:
        rows = [
            (portal, website_verification(portal), ads, ad_limit(portal, max_ads=max_ads), keys)
            for portal, ads, keys in service.list_portals(session)
        ]
    if as_json:
        click.echo(json.dumps([
            {"slug": p.slug, "name": p.name, "status": p.status.value, "ads": ads,
             "ads_limit": limit, "max_ads": p.max_ads, "keys": keys,
             "website": p.website, "website_state": v and v.state.value,
             "website_verified_by": v and v.verified_by and v.verified_by.value,
             "website_failing_since": v and v.failing_since and v.failing_since.isoformat()}
            for p, v, ads, limit, keys in rows
        ], indent=2))  # fmt: skip
        return
    click.echo(
        f"{'SLUG':<24} {'STATUS':<10} {'ADS':>8} {'MAX ADS':>11} {'KEYS':>5}  {'WEBSITE':<10}  NAME"
    )
    for portal, verification, ads, limit, keys in rows:
        website = "-" if verification is None else verification.state.value
        if verification is not None and verification.verified_by and verification.failing_since:
            website = "failing"  # verified, but its token has not been found again lately
        # "*": the portal's own limit (portals set-max-ads), else DIRECTORY_PORTAL_MAX_ADS.
        own = "*" if portal.max_ads is not None else " "
        click.echo(
            f"{portal.slug:<24} {portal.status.value:<10} {ads:>8} {limit:>10}{own} {keys:>5}  "
            f"{website:<10}  {portal.name}"
        )
    if any(portal.max_ads is not None for portal, *_ in rows):
        click.echo(
            "* set for the portal (portals set-max-ads); the others: DIRECTORY_PORTAL_MAX_ADS"
        )


class _MaxAds(click.ParamType):
    """A limit on a portal's ads: a whole number, or `default` (None)."""

    name = "max_ads"

    def convert(self, value, param, ctx):
        from directory.services.portals import MAX_ADS_CEILING

        if value == "default":
            return None
        if not (value.isascii() and value.isdigit()) or int(value) > MAX_ADS_CEILING:
            self.fail(
                f"{value!r} is not a whole number from 0 to {MAX_ADS_CEILING}, nor 'default'",
                param,
                ctx,
            )
        return int(value)


# Unknown options let through: a negative LIMIT is then refused as a LIMIT, not as an
# option "-5" that does not exist.
@portals.command("relay-report")
@click.option(
    "--days",
    type=click.IntRange(min=1, max=3650),
    default=30,
    show_default=True,
    help="Count the conversations opened in this many days",
)
@click.option("--json", "as_json", is_flag=True)
def portals_relay_report(days: int, as_json: bool) -> None:
    """How the conversations each portal's members opened with other communities lately
    were received: how many went unanswered and how many the other party blocked, and
    how many communities block the portal. The most blocked share first: a portal whose
    members send unwanted messages tops the list (then ask its team to act, or suspend
    it). Counts only, never a member or a message."""
    from directory.services.relay_report import relay_report

    with _transaction() as session:
        report = relay_report(session, days=days)
    if as_json:
        click.echo(json.dumps({
            "since": report.since.isoformat(),
            "portals": [
                {"slug": p.slug, "name": p.name, "status": p.status.value, "opened": p.opened,
                 "unanswered": p.unanswered, "blocked": p.blocked,
                 "blocked_share": p.blocked_share, "unanswered_share": p.unanswered_share,
                 "blocked_by_portals": p.blocked_by_portals}
                for p in report.portals
            ],
        }, indent=2))  # fmt: skip
        return
    click.echo(
        f"conversations opened with other communities since "
        f"{report.since:%Y-%m-%d %H:%M %Z} ({days} days), by the share the other party blocked"
    )
    click.echo(
        f"{'SLUG':<24} {'STATUS':<10} {'OPENED':>8} {'UNANSWERED':>12} {'BLOCKED':>12} "
        f"{'BLOCKED BY':>10}  NAME"
    )
    for p in report.portals:
        click.echo(
            f"{p.slug:<24} {p.status.value:<10} {p.opened:>8} "
            f"{_count_and_share(p.unanswered, p.unanswered_share):>12} "
            f"{_count_and_share(p.blocked, p.blocked_share):>12} "
            f"{p.blocked_by_portals:>10}  {p.name}"
        )
    if not report.portals:
        click.echo("(none: no portal's members opened a conversation with another community)")
    else:
        click.echo("BLOCKED BY: the communities that block the portal now")


def _count_and_share(count: int, share: float | None) -> str:
    return "-" if share is None else f"{count} {share:>4.0%}"


@portals.command("set-max-ads", context_settings={"ignore_unknown_options": True})
@click.argument("slug")
@click.argument("limit", type=_MaxAds())
def portals_set_max_ads(slug: str, limit: int | None) -> None:
    """Set the most ads a portal may store (LIMIT, 0 for no new ones), or give it the
    directory's own again (LIMIT `default`: DIRECTORY_PORTAL_MAX_ADS). A limit below what
    it stores deletes nothing: new ads are refused until it stores fewer."""
    from directory.services import portals as service
    from directory.services.ads import ad_limit, count_ads

    max_ads = _settings().portal_max_ads
    with _transaction() as session:
        portal = _domain(service.set_max_ads, session, portal_slug=slug, max_ads=limit)
        stored = count_ads(session, portal_id=portal.id)
        effective = ad_limit(portal, max_ads=max_ads)
    source = "" if limit is not None else " (the directory's, DIRECTORY_PORTAL_MAX_ADS)"
    click.echo(f"portal {slug} may store at most {effective} ads{source}; it stores {stored}")
    if stored > effective:
        click.echo(
            f"it stores {stored - effective} more than that: they stay, and new ads are "
            "refused until it stores fewer"
        )


@portals.command("verify-website")
@click.argument("slug")
@click.option(
    "--trust",
    is_flag=True,
    help="Mark it verified without fetching: you vetted the site by other means",
)
def portals_verify_website(slug: str, trust: bool) -> None:
    """Check that a portal's website publishes its token, as the portal's own
    POST /v1/portals/me/website/verify does; verified, its ads have global ids."""
    from directory.db import unit_of_work
    from directory.services import portals as service
    from directory.services import websites

    with _wiring() as wiring:
        with unit_of_work(wiring.session_factory) as session:
            portal = _domain(service.get_portal, session, slug=slug)
            if trust:
                _domain(websites.trust_website, session, portal_id=portal.id)
            else:
                challenge = _domain(websites.verification_challenge, session, portal_id=portal.id)
        if trust:
            click.echo(
                f"website {portal.website} of {slug} marked verified without a check (--trust)"
            )
            return
        click.echo(f"looking for the token of {slug} at {challenge.url}")
        # Outside any transaction: the website may take seconds to answer.
        _domain(
            websites.look_for_token,
            challenge,
            allow_loopback=wiring.settings.webhook_allow_loopback,
        )
        with unit_of_work(wiring.session_factory) as session:
            _domain(websites.record_verification, session, challenge=challenge)
    click.echo(f"website {challenge.website} of {slug} verified: the token is there")


@portals.command("unverify-website")
@click.argument("slug")
def portals_unverify_website(slug: str) -> None:
    """Withdraw a portal's website verification (a domain it lost): its ads lose their
    global ids, and another portal may verify the website."""
    from directory.services import portals as service
    from directory.services import websites

    with _transaction() as session:
        portal = _domain(service.get_portal, session, slug=slug)
        _domain(websites.withdraw_verification, session, portal_id=portal.id)
    click.echo(f"website {portal.website} of {slug} is unverified: its ads have no global_id")


@portals.command("suspend")
@click.argument("slug")
def portals_suspend(slug: str) -> None:
    """Suspend a portal: its keys are refused and its ads leave public view."""
    _set_status(slug, "suspended")


@portals.command("activate")
@click.argument("slug")
def portals_activate(slug: str) -> None:
    """Reactivate a suspended portal."""
    _set_status(slug, "active")


@portals.command("close")
@click.argument("slug")
@click.option("--yes", is_flag=True, help="Close it without asking first")
def portals_close(slug: str, yes: bool) -> None:
    """Close a suspended portal for good: a community leaving the directory. Its ads,
    resyncs, keys and profile go, and its members are erased from every conversation
    (as eraseMember does for one); only its slug and name stay, for the other side of
    those conversations. It cannot be reactivated."""
    from directory.services import closing

    if not yes:
        click.confirm(
            f"Close portal {slug} for good, deleting its ads and its members' conversations?",
            abort=True,
        )
    with _wiring() as wiring:
        from directory.db import unit_of_work

        with unit_of_work(wiring.session_factory) as session:
            closed = _domain(
                closing.close_portal, session, portal_slug=slug, lifetimes=wiring.lifetimes
            )
    if closed.already_closed:
        click.echo(f"portal {slug} was closed already: nothing changed")
        return
    click.echo(
        f"portal {slug} is closed: {closed.ads_deleted} ads deleted, "
        f"{closed.conversations_ended} conversations ended "
        f"({closed.messages_deleted} messages deleted), {closed.keys_revoked} keys revoked"
    )


@portals.command("erase-member")
@click.argument("slug")
@click.argument("member")
def portals_erase_member(slug: str, member: str) -> None:
    """Erase a member of a portal, as its POST /v1/portals/me/member-erasures does: for
    a suspended portal, whose keys are refused, when one of its members asks to be
    forgotten. Their ads go, and they leave every conversation."""
    from directory.api.fields import HANDLE
    from directory.db import unit_of_work
    from directory.services import members
    from directory.services import portals as service

    # A handle no portal could have given (a space, an email address) would erase
    # nothing and look done.
    if not HANDLE.fullmatch(member):
        raise click.BadParameter(
            f"{member!r} is not a member handle: 1 to 64 letters, digits, '.', '_', ':' or '-'",
            param_hint="MEMBER",
        )
    with _wiring() as wiring, unit_of_work(wiring.session_factory) as session:
        portal = _domain(service.get_portal, session, slug=slug)
        erased = members.erase_member(
            session, portal_id=portal.id, member=member, lifetimes=wiring.lifetimes
        )
    click.echo(
        f"member {member} of {slug} erased: {erased.ads_deleted} ads deleted, "
        f"{erased.conversations_ended} conversations ended ({erased.messages_deleted} "
        f"messages deleted), {erased.staged_ads_dropped} staged ads dropped"
    )


def _set_status(slug: str, status: str) -> None:
    from directory.models import PortalStatus
    from directory.services import portals as service

    with _transaction() as session:
        _domain(service.set_status, session, portal_slug=slug, status=PortalStatus(status))
    click.echo(f"portal {slug} is {status}")


@portals.command("rotate-key")
@click.argument("slug")
@click.option("--label", help="A note to tell keys apart")
def portals_rotate_key(slug: str, label: str | None) -> None:
    """Issue a new key; the old ones keep working until revoked."""
    from directory.services import portals as service

    with _transaction() as session:
        key = _domain(service.issue_key, session, portal_slug=slug, label=label)
    click.echo(f"new key {key.id} for {slug} (shown once, store it now):")
    click.echo(key.key)


@portals.command("keys")
@click.argument("slug")
def portals_keys(slug: str) -> None:
    """List a portal's keys (their first characters only)."""
    from directory.services import portals as service

    with _transaction() as session:
        keys = _domain(service.list_keys, session, portal_slug=slug)
    click.echo(f"{'ID':>5}  {'HINT':<14} {'CREATED':<20} {'LAST USED':<20} STATE")
    for key in keys:
        state = "revoked" if key.revoked_at else "live"
        last = key.last_used_at.strftime("%Y-%m-%d %H:%M") if key.last_used_at else "never"
        click.echo(
            f"{key.id:>5}  {key.hint + '…':<14} {key.created_at:%Y-%m-%d %H:%M}     "
            f"{last:<20} {state}  {key.label or ''}"
        )


@portals.command("revoke-key")
@click.argument("slug")
@click.argument("key_id", type=click.IntRange(min=1, max=2**63 - 1))  # a bigint
def portals_revoke_key(slug: str, key_id: int) -> None:
    """Revoke a key; it is refused from the very next request."""
    from directory.services import portals as service

    with _transaction() as session:
        _domain(service.revoke_key, session, portal_slug=slug, key_id=key_id)
    click.echo(f"key {key_id} of {slug} revoked")


def _domain(function, *args, **kwargs):
    from directory.errors import DirectoryError

    try:
        return function(*args, **kwargs)
    except DirectoryError as error:
        raise click.ClickException(error.message) from None


@cli.command()
@click.option("--ads", "ad_count", default=3000, show_default=True, type=click.IntRange(min=0))
@click.option("--seed", default=20261125, show_default=True)
@click.option("--keys-file", type=click.Path(path_type=Path), help="Write the portals' keys here")
def demo(ad_count: int, seed: int, keys_file: Path | None) -> None:
    """Load reproducible demo data: portals in several countries and their ads (refused
    in production)."""
    from directory import demo as demo_module
    from directory.db import unit_of_work

    # Its portals would take real communities' slugs, with websites verified on trust,
    # and its made-up ads would reach every search and mirror.
    if _settings().environment == "production":
        raise click.ClickException(
            "demo loads fictional portals and ads, for development and tests: not into a "
            "production directory (DIRECTORY_ENVIRONMENT=production)"
        )
    # The keys are shown once (only their digests are stored): a file they cannot go
    # to is refused before any portal is created.
    if keys_file is not None:
        _check_writable(keys_file)
    with _wiring() as wiring, unit_of_work(wiring.session_factory) as session:
        summary = demo_module.load(
            session, ad_count=ad_count, seed=seed, lifetimes=wiring.lifetimes
        )
    click.echo(summary.describe())
    if keys_file and summary.keys:
        keys = json.dumps(summary.keys, indent=2)
        try:
            # Created readable by its owner alone, never for a moment by anyone else.
            with os.fdopen(
                os.open(keys_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w"
            ) as out:
                out.write(keys + "\n")
            if keys_file.is_file():  # an existing file keeps its mode through O_CREAT
                keys_file.chmod(0o600)
        except OSError as error:
            click.echo(keys)
            raise click.ClickException(
                f"could not write the keys to {keys_file} ({error.strerror or error}); they "
                "are printed above, store them now: they are shown only once"
            ) from None
        click.echo(f"portal keys written to {keys_file}")


def _check_writable(path: Path) -> None:
    if path.exists():
        writable = not path.is_dir() and os.access(path, os.W_OK)
    else:
        writable = path.parent.is_dir() and os.access(path.parent, os.W_OK)
    if not writable:
        raise click.ClickException(
            f"--keys-file {path} cannot be written (does its folder exist?); nothing was loaded"
        )


@cli.command()
@click.option("--output", type=click.Path(path_type=Path), default=ROOT / "openapi.yaml")
def openapi(output: Path) -> None:
    """Write the OpenAPI spec generated from the code."""
    from directory.openapi import render_spec

    output.write_text(render_spec())
    click.echo(f"wrote {output}")


@cli.group()
def localdb() -> None:
    """A private PostgreSQL + PostGIS cluster in a folder (for make run and tests)."""


@localdb.command("start")
@click.argument("folder", type=click.Path(path_type=Path), default=ROOT / ".data" / "pg")
def localdb_start(folder: Path) -> None:
    """Start it (creating it if needed) and print its database URL; when it runs
    already, only print its URL."""
    from directory import localdb as module

    try:
        cluster = module.start(folder)
    except module.LocalDbError as error:
        raise click.ClickException(str(error)) from None
    click.echo(cluster.url)


@localdb.command("stop")
@click.argument("folder", type=click.Path(path_type=Path), default=ROOT / ".data" / "pg")
def localdb_stop(folder: Path) -> None:
    """Stop it."""
    from directory import localdb as module

    try:
        module.stop(folder)
    except module.LocalDbError as error:
        raise click.ClickException(str(error)) from None


@cli.group()
def localredis() -> None:
    """A private Redis in a folder, the rate limits' shared store (for make run and tests)."""


@localredis.command("start")
@click.argument("folder", type=click.Path(path_type=Path), default=ROOT / ".data" / "redis")
def localredis_start(folder: Path) -> None:
    """Start it (or find it running) and print its URL."""
    from directory import localredis as module

    try:
        click.echo(module.start(folder).url)
    except module.LocalRedisError as error:
        raise click.ClickException(str(error)) from None


@localredis.command("stop")
@click.argument("folder", type=click.Path(path_type=Path), default=ROOT / ".data" / "redis")
def localredis_stop(folder: Path) -> None:
    """Stop it."""
    from directory import localredis as module

    module.stop(folder)


if __name__ == "__main__":
    cli()
