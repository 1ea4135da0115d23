"""Readiness: the database answers and its schema is at the head migration."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import Session

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


@cache
def head_revision() -> str | None:
    # Imported here: alembic takes a second to import, paid by each API process at start.
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(session: Session) -> str | None:
    try:
        with session.begin_nested():
            return session.scalar(text("SELECT version_num FROM alembic_version"))
    except ProgrammingError:
        return None  # no alembic_version table: never migrated


def readiness(session: Session) -> dict:
    current = current_revision(session)
    expected = head_revision()
    status = "ok" if current == expected else "migrations pending"
    return {
        "status": status,
        "database": "ok",
        "migration": current,
        "expected_migration": expected,
    }
