"""For a portal receiving the relay's webhooks: verify one (Standard Webhooks, with the
reference `standardwebhooks` package) and read it as a typed event.

    # The raw body, as received (Flask: request.get_data()), never the parsed JSON.
    event = verify_webhook(request.get_data(), request.headers, secrets=[secret, previous])
    store(event.id, event.data)   # event.id is stable across retries: drop repeats by it

During a secret rotation the directory signs with both secrets; pass both."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import msgspec
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook, WebhookVerificationError

# A signing secret as GET /v1/portals/me/webhook-secret gives it: "whsec_" and base64 (the
# reference package takes it without the prefix too). Checked here: the package decodes
# base64 leniently, dropping what is not of its alphabet, so a mangled secret would
# become another key and fail every webhook as forged, never as what it is.
SECRET = re.compile(r"(?:whsec_)?[A-Za-z0-9+/]+={0,2}")


class InvalidWebhook(Exception):
    """Not signed by any of the given secrets, too old or from the future (replays), or
    not a webhook of the directory."""


class _Body(msgspec.Struct, frozen=True):
    type: str
    timestamp: datetime
    data: dict[str, Any]


class WebhookEvent(msgspec.Struct, frozen=True, kw_only=True):
    # webhook-id: msg_ (a message) or end_ (a conversation's end) and 32 hex digits,
    # stable across retries, as the inbox shows it
    id: str
    type: str  # message.created or conversation.ended; ignore (and accept) others
    timestamp: datetime
    # message.created: message, conversation, to, from; conversation.ended: conversation,
    # to, ended (reason: blocked or party_erased; by: role and alias; at)
    data: dict[str, Any]


def verify_webhook(
    body: bytes | bytearray | memoryview | str,
    headers: Mapping[str, str],
    *,
    secrets: str | Iterable[str],
) -> WebhookEvent:
    """The event of a webhook whose `body` is the request's raw body, as received (the
    signature covers those bytes: JSON parsed, or parsed and encoded again, no longer
    verifies), signed by one of `secrets` (None or empty ones are left out, such as a
    previous secret that is not set). Raises InvalidWebhook for a webhook to refuse, and
    TypeError or ValueError, naming the argument, for a body or secret that cannot be used
    at all (a secret's value is never shown)."""
    webhooks = _webhooks(secrets)
    if not webhooks:
        raise ValueError("verify_webhook needs at least one secret")
    if not isinstance(body, bytes | bytearray | memoryview | str):
        raise TypeError(
            "body must be the request's raw body as received (bytes, such as Flask's "
            f"request.get_data()), not {type(body).__name__}: the signature covers the bytes "
            "as sent, which parsed JSON no longer has"
        )
    # Header names are case-insensitive; the package looks them up in lower case.
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        payload = body if isinstance(body, str) else bytes(body).decode()
    except UnicodeDecodeError as error:
        raise InvalidWebhook("the webhook's body is not UTF-8 text") from error
    for webhook in webhooks:
        try:
            # Not parsed here: the body is read below, where not being a directory event
            # is an InvalidWebhook. A malformed signature header raises ValueError.
            webhook.verify(payload, lowered, json_parse=False)
            break
        except (WebhookVerificationError, ValueError):
            continue
    else:
        raise InvalidWebhook(
            "the webhook's signature is malformed or matches none of the secrets, or its "
            "timestamp is more than 5 minutes away"
        )
    try:
        event = msgspec.json.decode(payload, type=_Body)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise InvalidWebhook(f"a signed body that is not a directory event: {error}") from error
    # The signature covers the id too, so the header's id is as trustworthy as the body.
    return WebhookEvent(
        id=lowered["webhook-id"], type=event.type, timestamp=event.timestamp, data=event.data
    )


def _webhooks(secrets: str | Iterable[str]) -> list[Webhook]:
    """A verifier for each secret given, each checked (spaces around it dropped, as a
    secret read from a file or the environment may end with a line break)."""
    if isinstance(secrets, str):
        secrets = [secrets]
    elif isinstance(secrets, bytes | bytearray):
        secrets = [secrets]  # refused below, named, rather than read as numbers
    checked = []
    for position, secret in enumerate(secrets):
        if secret is None or secret == "":
            continue
        text = secret.strip() if isinstance(secret, str) else None
        try:
            if text is None or SECRET.fullmatch(text) is None:
                raise ValueError("not whsec_ and base64")
            checked.append(Webhook(text))
        except (ValueError, EmptyWebhookSecretError):  # binascii.Error: bad base64 padding
            raise ValueError(
                f"secrets[{position}] is not a webhook secret: expected a string of whsec_ "
                "and base64, as GET /v1/portals/me/webhook-secret gives it (the value is "
                "not shown: it is a secret)"
            ) from None
    return checked
