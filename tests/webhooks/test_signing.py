"""Our signatures, checked by the reference Standard Webhooks verifier."""

from __future__ import annotations

import base64
import json
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from directory.webhooks.signing import SECRET_PREFIX, new_secret, signed_headers

BODY = json.dumps({"type": "message.created", "text": "Grüße"}).encode()


def sign(*secrets: str, body: bytes = BODY, webhook_id: str = "msg_1") -> dict[str, str]:
    return signed_headers(
        secrets=list(secrets), webhook_id=webhook_id, timestamp=int(time.time()), body=body
    )


def test_new_secret_is_32_random_bytes_in_base64():
    secret = new_secret()
    assert secret.startswith(SECRET_PREFIX)
    assert len(base64.b64decode(secret.removeprefix(SECRET_PREFIX))) == 32
    assert new_secret() != secret


def test_headers_name_the_id_timestamp_and_content_type():
    headers = signed_headers(
        secrets=[new_secret()], webhook_id="msg_1", timestamp=1_764_000_000, body=BODY
    )
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == "1764000000"
    assert headers["content-type"] == "application/json"
    assert headers["webhook-signature"].startswith("v1,")


def test_reference_verifier_accepts_the_signed_body():
    secret = new_secret()
    assert Webhook(secret).verify(BODY, sign(secret)) == json.loads(BODY)


@pytest.mark.parametrize("holder", ["new", "previous"])
def test_during_rotation_a_receiver_holding_either_secret_verifies(holder):
    secrets = {"new": new_secret(), "previous": new_secret()}
    headers = sign(secrets["new"], secrets["previous"])
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(secrets[holder]).verify(BODY, headers) == json.loads(BODY)


def test_a_receiver_with_another_secret_refuses():
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, sign(new_secret()))


@pytest.mark.parametrize(
    ("header", "value"),
    [("webhook-id", "msg_2"), ("webhook-timestamp", str(int(time.time()) + 1))],
)
def test_a_changed_header_fails_verification(header, value):
    secret = new_secret()
    headers = sign(secret) | {header: value}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, headers)


def test_a_changed_body_fails_verification():
    secret = new_secret()
    headers = sign(secret)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"Gr", b"gr"), headers)


def test_signing_needs_a_secret():
    with pytest.raises(ValueError, match="at least one secret"):
        sign()


def test_one_string_is_not_taken_for_a_list_of_secrets():
    with pytest.raises(TypeError, match="not a single string"):
        signed_headers(secrets=new_secret(), webhook_id="msg_1", timestamp=0, body=BODY)
