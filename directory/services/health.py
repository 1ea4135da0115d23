"""Readiness: the database answers and its schema is at the head migration, or at a
later one: during a rollout the new release migrates first, and the release still
serving goes on doing so (each migration is written backward compatible)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import Session

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


@cache
def _scripts():
    # Imported here: alembic takes a second to import, paid by each API process at start.
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


@cache
def head_revision() -> str | None:
    return _scripts().get_current_head()


@cache
def known_revisions() -> frozenset[str]:
    return frozenset(script.revision for script in _scripts().walk_revisions())


def current_revision(session: Session) -> str | None:
    try:
        with session.begin_nested():
            return session.scalar(text("SELECT version_num FROM alembic_version"))
    except ProgrammingError:
        return None  # no alembic_version table: never migrated


def readiness(session: Session) -> dict:
    current = current_revision(session)
    expected = head_revision()
    # A revision this release does not know is a later release's: it has migrated first.
    later = current is not None and current not in known_revisions()
    status = "ok" if current == expected or later else "migrations pending"
    return {
        "status": status,
        "database": "ok",
        "migration": current,
        "expected_migration": expected,
    }
