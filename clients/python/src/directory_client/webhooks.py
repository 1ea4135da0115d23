"""For a portal receiving the relay's webhooks: verify one (Standard Webhooks, with the
reference `standardwebhooks` package) and read it as a typed event.

    event = verify_webhook(request.body, request.headers, secrets=[secret, previous])
    store(event.id, event.data)   # event.id is stable across retries: drop repeats by it

During a secret rotation the directory signs with both secrets; pass both."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import msgspec
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


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
    body: bytes | str, headers: Mapping[str, str], *, secrets: str | Iterable[str]
) -> WebhookEvent:
    if isinstance(secrets, str):
        secrets = [secrets]
    secrets = [secret for secret in secrets if secret]
    if not secrets:
        raise ValueError("verify_webhook needs at least one secret")
    # Header names are case-insensitive; the package looks them up in lower case.
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        payload = body.decode() if isinstance(body, bytes) else body
    except UnicodeDecodeError as error:
        raise InvalidWebhook("the webhook's body is not UTF-8 text") from error
    for secret in secrets:
        webhook = Webhook(secret)  # outside the try: a bad secret is the caller's error
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
