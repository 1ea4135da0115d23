"""Hostile requests cost about what a normal one does: refused input is refused in time
proportional to its size (never worse), before any key is looked at, and never with a
500. Each bound below is far above what the request takes (milliseconds), and far below
what it took before it was fixed (seconds to minutes)."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.api.test_validation import assert_refused
from tests.factories import ad_payload

# Far above a refusal's cost on a busy machine; far below what a quadratic check takes.
REFUSAL_BUDGET_S = 1.0
# 50,000 characters: within the 16 MiB request limit many times over; a check that is
# quadratic in the length spent about 15 s on it (an email-like pattern searched from
# every position of a value without an @).
LONG_TEXT = "a" * 50_000


def timed(call):
    started = time.perf_counter()
    response = call()
    return response, time.perf_counter() - started


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/v1/ads/a-1", ad_payload(member=LONG_TEXT), "member"),
        ("/v1/ads/a-1", ad_payload(ledger_account=LONG_TEXT), "ledger_account"),
        (
            f"/v1/ads/{uuid.uuid4()}/contact",
            {"member": "m-1", "name": LONG_TEXT, "body": "Hello"},
            "name",
        ),
        (
            f"/v1/ads/{uuid.uuid4()}/contact",
            {"member": LONG_TEXT, "name": "Sam", "body": "Hello"},
            "member",
        ),
        (
            f"/v1/conversations/{uuid.uuid4()}/messages",
            {"member": "m-1", "name": LONG_TEXT, "body": "Hello"},
            "name",
        ),
    ],
    ids=["ad-member", "ad-ledger-account", "contact-name", "contact-member", "message-name"],
)
def test_a_long_value_checked_for_contact_details_is_refused_at_once_anonymously(
    client, path, payload, field
):
    method = client.put if path.startswith("/v1/ads/a-") else client.post
    response, elapsed_s = timed(lambda: method(path, json=payload))
    assert_refused(response, field=field)
    assert elapsed_s < REFUSAL_BUDGET_S, f"{elapsed_s:.2f} s to refuse {field}"


# A million items: what fits in a body a few MiB long. Loaded one by one before the list's
# length was checked, they took 2 to 9 s of CPU to refuse (longer still when each one was
# wrong: an error for each, in an answer of 30 MB).
MANY = 1_000_000


@pytest.mark.parametrize(
    ("method", "path", "payload", "field"),
    [
        ("PUT", "/v1/ads/a-1", ad_payload(tags=["x"] * MANY), "tags"),
        ("PUT", "/v1/ads/a-1", ad_payload(currencies=["EUR"] * MANY), "currencies"),
        ("PUT", "/v1/ads/a-1", ad_payload(images=["https://a.b/c"] * (MANY // 2)), "images"),
        ("PATCH", "/v1/portals/me", {"default_currencies": ["EUR"] * MANY}, "default_currencies"),
        ("POST", "/v1/inbox/ack", {"ids": ["msg_1"] * MANY}, "ids"),
        (
            "POST",
            "/v1/ads/batch",
            {
                "items": [
                    {"op": "upsert", "external_id": "a-1", "ad": ad_payload(tags=["x"] * MANY)}
                ]
            },
            "items",
        ),
    ],
    ids=["tags", "currencies", "images", "default-currencies", "ack-ids", "batch-item-tags"],
)
def test_a_list_over_its_length_is_refused_before_its_items_are_read(
    client, method, path, payload, field
):
    response, elapsed_s = timed(lambda: client.open(path, method=method, json=payload))
    if path == "/v1/ads/batch":  # a batch answers per item, and wants a key to do so
        assert response.status_code == 401, response.get_json()
    else:
        assert_refused(response, field=field)
    assert elapsed_s < REFUSAL_BUDGET_S, f"{elapsed_s:.2f} s to refuse {field}"


@pytest.mark.parametrize(
    ("path", "document"),
    [
        ("/v1/ads/a-1", {f"k{n}": 0 for n in range(MANY)}),
        ("/v1/ads/batch", {"items": [{f"k{n}": 0 for n in range(MANY)}]}),
    ],
    ids=["ad", "batch-item"],
)
def test_an_object_with_a_million_keys_is_refused_at_once_without_naming_each(
    client, path, document
):
    """Each unknown key was named in the answer: a body of 12 MB took 4.8 s to refuse,
    anonymously, in an answer of 29 MB."""
    method = client.put if path.endswith("a-1") else client.post
    response, elapsed_s = timed(lambda: method(path, json=document))
    body = assert_refused(response, error="too_many_keys", field="_schema")
    assert len(response.get_data()) < 1000, body
    assert elapsed_s < 3 * REFUSAL_BUDGET_S, f"{elapsed_s:.2f} s to refuse"
