"""Opaque paging cursors: a version prefix ("f1.", "s1.", "c1.") and URL-safe base64 of
whatever the list needs to continue after, so that clients pass them back unchanged and
never build one. Each list decides what goes inside and how a bad one is reported."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime


def encode(prefix: str, raw: bytes) -> str:
    return prefix + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(prefix: str, cursor: str) -> bytes:
    """The bytes inside a cursor made by encode with this prefix; ValueError otherwise."""
    if not cursor.startswith(prefix):
        raise ValueError("not a cursor of this list")
    body = cursor[len(prefix) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except binascii.Error as error:  # a ValueError too; said plainly
        raise ValueError("not a cursor of this list") from error
    # Python's base64 drops characters outside its alphabet, takes "+" and "/" beside
    # "-" and "_", and reads padding: "f1.MS4y!!" would pass for "f1.MS4y". Only the
    # spelling encode writes is a cursor.
    if encode(prefix, raw) != cursor:
        raise ValueError("not a cursor of this list")
    return raw


def aware_time(value: object) -> datetime:
    """A time found inside a cursor: ISO 8601 text with its zone; ValueError otherwise
    (without its zone, PostgreSQL would read it in the session's)."""
    if not isinstance(value, str):
        raise ValueError("not a time")
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("a time without its zone")
    return moment
