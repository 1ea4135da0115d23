"""The relay's views (conversations, messages) as JSON data, written out directly by its
routes. Dumped through their schemas (schemas.py, which document them), a batch of ten
messages, the relay's hot path, spent a fifth of its time in marshmallow. Each function
gives what its schema's dump gives (tests/api/test_relay_rendering.py holds them to it):
no field more, so nothing the schema leaves out (a party's portal id) is shown."""

from __future__ import annotations

from datetime import datetime

from directory.services.relay import (
    ConversationView,
    DeliveryView,
    MessageView,
    PartyView,
    Sending,
)


def conversation_summary(view: ConversationView) -> dict:
    """ConversationSummarySchema's dump."""
    return {
        "id": str(view.id),
        "ad": {"id": None if view.ad_id is None else str(view.ad_id), "title": view.ad_title},
        "your_roles": [role.value for role in view.your_roles],
        "initiator": _party(view.initiator),
        "recipient": _party(view.recipient),
        "blocked_at": _time(view.blocked_at),
        "blocked_by": None if view.blocked_by is None else view.blocked_by.value,
        "message_count": view.message_count,
        "created_at": _time(view.created_at),
        "last_message_at": _time(view.last_message_at),
    }


def conversation(view: ConversationView) -> dict:
    """ConversationSchema's dump: the summary, and a page of messages."""
    return {
        **conversation_summary(view),
        "messages": None if view.messages is None else [message(each) for each in view.messages],
        "next_after": view.next_after,
    }


def message(view: MessageView) -> dict:
    """MessageSchema's dump."""
    return {
        "id": str(view.id),
        "seq": view.seq,
        "sender": view.sender.value,
        "body": view.body,
        "sent_at": _time(view.sent_at),
        "delivery": _delivery(view.delivery),
    }


def _party(view: PartyView) -> dict:
    return {
        "role": view.role.value,
        "alias": view.alias,
        "name": view.name,
        "portal": {"slug": view.portal.slug, "name": view.portal.name},
        "member": view.member,
        "erased": view.erased,
        "sending": None if view.sending is None else _sending(view.sending),
    }


def _sending(sending: Sending) -> dict:
    return {
        "allowed": sending.allowed,
        "refusal": sending.refusal,
        "messages_left": sending.messages_left,
    }


def _delivery(view: DeliveryView) -> dict:
    return {
        "state": view.state.value,
        "attempts": view.attempts,
        "delivered_at": _time(view.delivered_at),
        "delivered_via": view.delivered_via,
        "last_error": view.last_error,
    }


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
