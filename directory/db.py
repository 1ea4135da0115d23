"""Database plumbing: the declarative base, the engine and the unit of work."""

from __future__ import annotations

import select
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from decimal import Decimal

import orjson
import psycopg
from sqlalchemy import MetaData, create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

# Named constraints make migrations reviewable and let a 409 name what was violated.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# The namespaces of our advisory locks (the first of their two keys), arbitrary numbers
# kept in one place so that no two uses share one.
PORTAL_WRITE_LOCK_NAMESPACE = 0x41D5  # services/ads.py lock_portal_writes
AD_COUNT_LOCK_NAMESPACE = 0x41D6  # services/ads.py lock_and_count_ads, the limit on ads
OPEN_CONVERSATION_LOCK_NAMESPACE = 0xC0A7  # services/relay.py lock_member_openings
OPENINGS_WITH_ONE_MEMBER_LOCK_NAMESPACE = 0xC0A8  # services/relay.py _lock_openings
IDEMPOTENCY_KEY_LOCK_NAMESPACE = 0xC0A9  # services/relay.py post_messages, a portal's keys
WEBSITE_CHECK_LOCK_NAMESPACE = 0x5173  # services/websites.py check_slot
WEBHOOK_TEST_LOCK_NAMESPACE = 0x5174  # services/webhook_tests.py test_slot
INDEXING_LOCK_NAMESPACE = 0x5EA7  # search/indexing.py, a writer per index
REBUILD_LOCK_NAMESPACE = 0x5EA8  # search/indexing.py, one rebuild at a time
MIGRATE_LOCK_NAMESPACE = 0x316A  # `directory migrate`, one at a time


# A database that takes a connection and says nothing (a host gone behind a firewall
# that drops packets, a server stuck starting) is given up on after this long, per host
# address: libpq waits for ever by default, and held every command, /readyz and the
# worker with it. A URL's own ?connect_timeout= is kept.
CONNECT_TIMEOUT_S = 10


def make_engine(
    database_url: str,
    *,
    pool_size: int = 5,
    statement_timeout_ms: int = 60_000,
    options: str = "",
    autocommit: bool = False,
) -> Engine:
    engine = create_engine(
        with_connect_timeout(database_url),
        pool_size=pool_size,
        max_overflow=pool_size,
        # A statement's values are messages, member handles, key digests: a failing
        # statement is logged with its SQL and without them.
        hide_parameters=True,
        **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}),
        connect_args={"options": f"-c statement_timeout={statement_timeout_ms} {options}".strip()},
    )
    event.listen(engine, "checkout", _replacing_connections_the_server_ended(engine.dialect))
    return engine


def _replacing_connections_the_server_ended(dialect):
    """In place of SQLAlchemy's pre-ping, a round trip on every checkout (a sixth of the
    relay's statements): a connection idle in the pool has nothing to read unless the
    server wrote to it. What it writes then is mostly the notice that it ended the
    session (restart, pg_terminate_backend), and only then is the connection pinged
    (the dialect's own ping): refused if the ping fails (the pool retries with a new
    one), kept if it was only a notice or a parameter change. A server that vanished
    without a word (a network cut) is found by the next statement instead, which then
    fails."""

    def on_checkout(dbapi_connection, _record, _proxy) -> None:
        if dbapi_connection.closed:
            raise DisconnectionError("the connection is closed")
        poller = select.poll()
        poller.register(dbapi_connection.pgconn.socket, select.POLLIN)
        if not poller.poll(0):
            return
        try:
            dialect.do_ping(dbapi_connection)
        except psycopg.Error as error:
            raise DisconnectionError(f"the server ended this connection: {error}") from error

    return on_checkout


@contextmanager
def first_free_advisory_lock(
    engine: Engine, namespace: int, keys: Iterable[int]
) -> Iterator[int | None]:
    """The first of `keys` whose session-level advisory lock (in `namespace`) was free,
    held while the block runs (None: every one was taken). Held by a connection outside
    any transaction, so for as long as need be, and let go by the server if the process
    dies."""
    with engine.connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        for key in keys:
            arguments = {"namespace": namespace, "key": key}
            if connection.scalar(text("SELECT pg_try_advisory_lock(:namespace, :key)"), arguments):
                break
        else:
            yield None
            return
        try:
            yield key
        finally:
            try:
                connection.execute(text("SELECT pg_advisory_unlock(:namespace, :key)"), arguments)
            except DBAPIError:
                connection.invalidate()  # the session is gone, and its lock with it


def with_connect_timeout(database_url: str) -> str:
    """The URL with ?connect_timeout=CONNECT_TIMEOUT_S unless it gives its own."""
    url = make_url(database_url)
    if "connect_timeout" in url.query:
        return database_url
    url = url.update_query_dict({"connect_timeout": str(CONNECT_TIMEOUT_S)})
    return url.render_as_string(hide_password=False)


def libpq_url(database_url: str) -> str:
    """The URL psycopg and libpq's tools take, from the SQLAlchemy one of the settings."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)


@contextmanager
def unit_of_work(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: committed when the block ends normally, rolled back otherwise."""
    session = session_factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def insert_rows(session: Session, *, table: str, rows: list[dict]) -> None:
    """Insert many rows (dicts with the same keys) in one statement. They travel as one
    JSON document that PostgreSQL unpacks itself with json_populate_recordset: per value,
    C in the server instead of Python adaptation in the client, which makes this several
    times cheaper for the API process than COPY or executemany. Columns left out get
    their defaults."""
    if not rows:
        return
    columns = ", ".join(rows[0])
    session.execute(
        text(
            f"INSERT INTO {table} ({columns}) SELECT {columns} "
            f"FROM json_populate_recordset(NULL::{table}, CAST(:rows AS json))"
        ),
        {"rows": orjson.dumps(rows, default=_json_default).decode()},
    )


def update_rows(session: Session, *, table: str, rows: list[dict]) -> None:
    """Update many rows by id (dicts with the same keys, `id` among them) in one
    statement, the rows travelling as JSON as in `insert_rows`; `updated_at` becomes now."""
    if not rows:
        return
    assignments = ", ".join(f"{column} = changed.{column}" for column in rows[0] if column != "id")
    session.execute(
        text(
            f"UPDATE {table} SET {assignments}, updated_at = now() "
            f"FROM json_populate_recordset(NULL::{table}, CAST(:rows AS json)) AS changed "
            f"WHERE {table}.id = changed.id"
        ),
        {"rows": orjson.dumps(rows, default=_json_default).decode()},
    )


def _json_default(value):
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot store a {type(value).__name__} as JSON")


def add_unique(session: Session, row: Base, *, conflicts: dict[str, Exception]) -> None:
    """Insert `row`, raising the conflict of the unique constraint it breaks (named as
    the keys of `conflicts`)."""
    with unique_conflicts(session, conflicts):
        session.add(row)


@contextmanager
def unique_conflicts(session: Session, conflicts: dict[str, Exception]) -> Iterator[None]:
    """The changes made inside, flushed in a savepoint: breaking one of the unique
    constraints named as the keys of `conflicts` raises its conflict. The constraint
    decides, not a look-up first: two requests can race."""
    from sqlalchemy.exc import IntegrityError

    try:
        with session.begin_nested():
            yield
            session.flush()
    except IntegrityError as error:
        conflict = conflicts.get(constraint_name(error))
        if conflict is None:
            raise
        raise conflict from None


def constraint_name(error) -> str | None:
    """The name of the constraint an IntegrityError broke, as PostgreSQL reports it."""
    return getattr(getattr(error.orig, "diag", None), "constraint_name", None)
