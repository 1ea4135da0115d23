"""Standard Webhooks signatures (https://www.standardwebhooks.com/), made by the reference
package so that any receiver following the specification verifies them.

A portal's secret rotates without a gap: for a while both the new and the previous secret
sign each webhook, and a receiver holding either accepts it."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime
from secrets import token_bytes

from standardwebhooks.webhooks import Webhook

SECRET_PREFIX = "whsec_"
# 256 bits: the HMAC-SHA256 key size; the specification asks for 24 to 64 bytes.
SECRET_BYTES = 32


def new_secret() -> str:
    """A fresh signing secret, as receivers' libraries expect it: "whsec_" + base64."""
    return SECRET_PREFIX + base64.b64encode(token_bytes(SECRET_BYTES)).decode("ascii")


def signed_headers(
    *, secrets: Sequence[str], webhook_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The headers of one webhook: its id (stable across retries, so that receivers can
    deduplicate), its timestamp in whole seconds, and one v1 signature per secret.

    `body` is the UTF-8 JSON exactly as sent: the signature covers these bytes."""
    if isinstance(secrets, str):
        # A string is a sequence too: each character would become a "secret".
        raise TypeError("secrets must be a list of secrets, not a single string")
    if not secrets:
        raise ValueError("at least one secret is needed to sign a webhook")
    if not webhook_id:
        raise ValueError("a webhook needs an id")
    if not isinstance(timestamp, int):
        # The signature covers whole seconds; a fraction in the header would not verify.
        raise TypeError(f"timestamp must be whole seconds (an int), not {timestamp!r}")
    signed_at = datetime.fromtimestamp(timestamp, tz=UTC)
    payload = body.decode("utf-8")
    signatures = [
        Webhook(secret).sign(msg_id=webhook_id, timestamp=signed_at, data=payload)
        for secret in dict.fromkeys(secrets)  # the same secret twice signs once
    ]
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
        "content-type": "application/json",
    }
