"""Portal keys: a recognisable, self-checking format, and only their SHA-256 digest is
ever stored (checked against a full pg_dump of the database)."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from directory.db import libpq_url, unit_of_work
from directory.services import portals
from directory.services.portals import (
    BASE62,
    KEY_LENGTH,
    KEY_PREFIX,
    generate_key,
    key_digest,
    looks_like_key,
)

PG_DUMP = "/usr/lib/postgresql/15/bin/pg_dump"
PG_DUMP_TIMEOUT_S = 120


def _with_char_replaced(key: str, position: int) -> str:
    replacement = next(char for char in BASE62 if char != key[position])
    return key[:position] + replacement + key[position + 1 :]


def test_generated_key_has_the_prefix_and_a_fixed_length():
    key = generate_key()

    assert key.startswith("cdir_")
    assert len(key) == KEY_LENGTH == 51
    assert all(char in BASE62 for char in key[len(KEY_PREFIX) :])


def test_generated_keys_are_well_formed_and_distinct():
    keys = {generate_key() for _ in range(200)}

    assert len(keys) == 200
    assert all(looks_like_key(key) for key in keys)


def test_checksum_detects_any_single_changed_character():
    key = generate_key()

    for position in range(len(KEY_PREFIX), len(key)):
        assert not looks_like_key(_with_char_replaced(key, position)), position


@pytest.mark.parametrize(
    "mangle",
    [
        lambda key: key[:-1],
        lambda key: key + "0",
        lambda key: "cdix_" + key[5:],
        lambda key: key[:20] + "!" + key[21:],
        lambda key: key.upper(),
        lambda key: key[:20] + "\u0663" + key[21:],  # an Arabic-Indic digit three
        lambda key: key[:20] + "\u00e9" + key[21:],
        lambda key: key[:-1] + "\n",
        lambda key: key + "\n",
    ],
    ids=[
        "truncated",
        "extended",
        "other-prefix",
        "non-base62",
        "case-changed",
        "non-ascii-digit",
        "non-ascii-letter",
        "newline-for-last",
        "newline-after",
    ],
)
def test_looks_like_key_refuses_malformed_keys(mangle):
    assert not looks_like_key(mangle(generate_key()))


def test_key_digest_is_the_sha256_hex_of_the_key():
    key = generate_key()

    assert key_digest(key) == hashlib.sha256(key.encode()).hexdigest()


def test_database_dump_holds_key_digests_but_never_keys(wiring, make_portal, migrated):
    first = make_portal()
    second = make_portal()
    with unit_of_work(wiring.session_factory) as session:
        rotated = portals.issue_key(session, portal_slug=first.slug, label="rotation")
        revoked = portals.issue_key(session, portal_slug=second.slug)
        portals.revoke_key(session, portal_slug=second.slug, key_id=revoked.id)
    issued = [first.key, second.key, rotated.key, revoked.key]

    dump = subprocess.run(
        [PG_DUMP, "--no-owner", libpq_url(migrated.database_url)],
        capture_output=True,
        text=True,
        check=True,
        timeout=PG_DUMP_TIMEOUT_S,
    ).stdout

    for key in issued:
        assert key_digest(key) in dump
        assert key not in dump
        # Nor the part after the stored hint (the hint is the key's first 12 characters).
        assert key[12:] not in dump
