"""Alembic environment: the URL comes from settings (or from the caller's config), and
every migration runs with short lock and statement timeouts so that a migration that
would queue behind live traffic fails fast instead of stalling the service.

Each migration commits on its own: in one transaction for a whole upgrade, every lock a
migration took (the moment of ACCESS EXCLUSIVE its header promises) was held until the
last migration ended, and the requests on that table queued behind all of them; and one
migration failing undid the others. Each revision is a schema a release serves on, so an
upgrade stopped halfway is resumed by running it again."""

from alembic import context
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

import directory.models  # noqa: F401  (registers every table on the metadata)
from directory.db import Base
from directory.settings import Settings

LOCK_TIMEOUT = "5s"
STATEMENT_TIMEOUT = "15min"

config = context.config
url = config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url


def include_object(obj, name, type_, reflected, compare_to):
    # PostGIS owns these tables; they are not ours to migrate.
    return not (type_ == "table" and name == "spatial_ref_sys")


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        include_object=include_object,
        compare_type=True,
        compare_server_default=False,
        transaction_per_migration=True,
    )
    # For the session, as each migration has a transaction of its own: the connection is
    # this upgrade's alone (migrations/env.py's own, or `directory migrate`'s).
    connection.execute(text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
    connection.execute(text(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'"))
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
