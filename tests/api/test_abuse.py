"""Hostile requests are refused as normal ones are, never with a 500: a body over
LARGE_BODY_BYTES only once its key is known, a list by its length before its items, an
object of too many keys as a whole, a long value checked for contact details in one
pass. What each refusal costs, against what it cost before, is measured by
bench/hostile.py (tests assert no timings)."""

from __future__ import annotations

import io
import uuid

import pytest

from directory.api import LARGE_BODY_BYTES
from tests.api.test_validation import assert_refused
from tests.factories import ad_payload

# 50,000 characters, within LARGE_BODY_BYTES: read without a key. A check quadratic in the
# length spent about 15 s on it (an email-like pattern searched from every position of a
# value without an @).
LONG_TEXT = "a" * 50_000


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
    assert_refused(method(path, json=payload), field=field)


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
            "tags",
        ),
    ],
    ids=["tags", "currencies", "images", "default-currencies", "ack-ids", "batch-item-tags"],
)
def test_a_list_over_its_length_is_refused_before_its_items_are_read(
    client, portal, method, path, payload, field
):
    response = client.open(path, method=method, json=payload, headers=portal.headers)
    if path == "/v1/ads/batch":  # a batch answers per item
        [item] = response.get_json()["results"]
        assert (item["status"], list(item["errors"]["ad"])) == ("rejected", [field])
    else:
        assert_refused(response, field=field)
    assert len(response.get_data()) < 1000  # not an error for each item


@pytest.mark.parametrize(
    ("path", "document"),
    [
        ("/v1/ads/a-1", {f"k{n}": 0 for n in range(MANY)}),
        ("/v1/ads/batch", {"items": [{f"k{n}": 0 for n in range(MANY)}]}),
    ],
    ids=["ad", "batch-item"],
)
def test_an_object_with_a_million_keys_is_refused_at_once_without_naming_each(
    client, portal, path, document
):
    """Each unknown key was named in the answer: a body of 12 MB took 4.8 s to refuse, in
    an answer of 29 MB."""
    method = client.put if path.endswith("a-1") else client.post
    response = method(path, json=document, headers=portal.headers)
    body = assert_refused(response, error="too_many_keys", field="_schema")
    assert len(response.get_data()) < 1000, body


@pytest.mark.parametrize("key", [None, "cdir_" + "0" * 40], ids=["no key", "unknown key"])
@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", "/v1/ads/a-1"), ("POST", "/v1/ads/batch"), ("POST", "/v1/inbox/ack")],
)
def test_a_large_body_is_not_read_without_a_known_key(client, method, path, key):
    """Over LARGE_BODY_BYTES, the key comes first: this body is not even JSON, and the
    answer is about the key. Reading 16 MiB costs about a second, anyone's to make the
    API spend otherwise."""
    body = b"[" * (LARGE_BODY_BYTES + 1)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    response = client.open(path, method=method, data=body, headers=headers)
    assert_refused(response, 401)


def test_a_small_body_is_read_before_the_key_as_before(client):
    # The view checks its key; a body it cannot read is refused first, as it always was.
    response = client.put("/v1/ads/a-1", data=b"[", headers={"Content-Type": "application/json"})
    assert_refused(response, error="malformed_json")


def test_a_chunked_body_has_no_length_and_is_not_read_without_a_key(client):
    response = client.put(
        "/v1/ads/a-1",
        input_stream=io.BytesIO(b"["),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    assert_refused(response, 401)
