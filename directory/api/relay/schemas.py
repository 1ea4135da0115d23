from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from directory.api.fields import (
    HANDLE,
    IDEMPOTENCY_KEY,
    BoundedList,
    PerItemList,
    Text,
    WholeNumber,
    validate_display_name,
    validate_member_handle,
)
from directory.api.loading import FastNested
from directory.models import DeliveryState, Role
from directory.models.relay import MAX_MESSAGE_CHARS, MAX_NAME_CHARS, MAX_SEQ
from directory.services.relay import MAX_BATCH_MESSAGES

MAX_ACK_IDS = 1000


def _member_field(description: str, **kwargs) -> fields.String:
    return fields.String(
        validate=validate_member_handle,
        metadata={"description": description, "pattern": HANDLE.pattern, "example": "m-4821"},
        **kwargs,
    )


def _name_field(description: str, **kwargs) -> Text:
    return Text(
        validate=[validate.Length(1, MAX_NAME_CHARS), validate_display_name],
        metadata={"description": description, "example": "Anna"},
        **kwargs,
    )


def _body_field() -> Text:
    return Text(
        required=True,
        multiline=True,
        validate=validate.Length(1, MAX_MESSAGE_CHARS),
        metadata={"description": "The member's own words; passed on unchanged"},
    )


def _idempotency_field() -> fields.String:
    return fields.String(
        load_default=None,
        validate=IDEMPOTENCY_KEY,
        metadata={
            "description": "The portal's own id for this message: sending again with the "
            "same key (after a timeout, say) returns the message already made instead of "
            "making another; the key sent with another message (its words, member or "
            "name) is refused with 409 idempotency_key_reused. 1 to 128 letters, digits, "
            "'.', '_', ':' or '-'."
        },
    )


class ContactSchema(Schema):
    """A member of the calling portal writes to the advertiser."""

    member = _member_field("The calling portal's handle of the member writing", required=True)
    name = _name_field(
        "The name the member shows the other party (never an email address or a phone number)",
        required=True,
    )
    body = _body_field()
    idempotency_key = _idempotency_field()


class MessagePostSchema(Schema):
    """A party writes in the conversation."""

    member = _member_field(
        "The calling portal's handle of the member writing (one of the two parties)",
        required=True,
    )
    name = _name_field(
        "Sets the name the member shows the other party; absent: as before",
        load_default=None,
    )
    body = _body_field()
    idempotency_key = _idempotency_field()


class BatchMessageSchema(MessagePostSchema):
    """One message of a batch: a party writes in a conversation (conversation_id), as
    with postMessage, or a member opens one with an ad's advertiser (ad_id and name), as
    with contactAdvertiser."""

    conversation_id = fields.UUID(
        load_default=None,
        metadata={"description": "The conversation to write in; or ad_id, not both"},
    )
    ad_id = fields.UUID(
        load_default=None,
        metadata={
            "description": "The ad whose advertiser the member writes to, opening a new "
            "conversation (name is then required); or conversation_id, not both"
        },
    )

    @validates_schema
    def _one_target(self, data, **kwargs):
        if data.get("conversation_id") is not None and data.get("ad_id") is not None:
            raise ValidationError(
                "give conversation_id or ad_id, not both: a message goes into a "
                "conversation or opens one",
                "ad_id",
            )
        if data.get("conversation_id") is None and data.get("ad_id") is None:
            raise ValidationError(
                "give conversation_id (a message in a conversation) or ad_id (a new "
                "conversation with the ad's advertiser)",
                "conversation_id",
            )
        if data.get("ad_id") is not None and data.get("name") is None:
            raise ValidationError(
                "required to open a conversation (with ad_id): the name the member shows "
                "the advertiser",
                "name",
            )


class MessageBatchSchema(Schema):
    items = PerItemList(
        FastNested(BatchMessageSchema),
        required=True,
        validate=validate.Length(1, MAX_BATCH_MESSAGES),
        metadata={
            "description": f"1 to {MAX_BATCH_MESSAGES} messages, taken in this order, each "
            "as postMessage (or contactAdvertiser, for an opening) would take it alone"
        },
    )


class BlockSchema(Schema):
    member = _member_field("The calling portal's handle of the party blocking", required=True)


class ConversationArgsSchema(Schema):
    after = WholeNumber(
        load_default=0,
        validate=validate.Range(min=0, max=MAX_SEQ),
        metadata={"description": "Messages after this seq (next_after of the previous page)"},
    )
    limit = WholeNumber(load_default=50, validate=validate.Range(1, 100))


class ConversationListArgsSchema(Schema):
    member = _member_field(
        "Only this member's conversations (the calling portal's handle)", load_default=None
    )
    ad_id = fields.UUID(
        load_default=None,
        metadata={
            "description": "Only the conversations about this ad (none once it is deleted: "
            "its conversations then have no ad id)"
        },
    )
    cursor = fields.String(
        load_default=None,
        validate=validate.Length(1, 200),
        metadata={"description": "next_cursor of the previous page"},
    )
    limit = WholeNumber(load_default=20, validate=validate.Range(1, 100))


class InboxArgsSchema(Schema):
    since = fields.String(
        load_default=None,
        validate=validate.Length(1, 40),
        metadata={
            "description": "next_since of the previous page, or the id of any of the "
            "portal's events: the events after it. Absent, or an event no longer kept: from "
            "the oldest event not yet delivered"
        },
    )
    limit = WholeNumber(load_default=100, validate=validate.Range(1, 500))


class AcknowledgeSchema(Schema):
    ids = BoundedList(
        fields.String(validate=validate.Length(1, 64)),
        required=True,
        validate=validate.Length(1, MAX_ACK_IDS),
        metadata={"description": "Ids of inbox events (msg_... or end_...) the portal has stored"},
    )


# --- what is shown ----------------------------------------------------------------------


class PortalRefSchema(Schema):
    slug = fields.String()
    name = fields.String()


class SendingSchema(Schema):
    """Whether the party's member may write in the conversation now: what POST
    /v1/conversations/{id}/messages would answer at the moment of reading. A portal can
    offer or hide its compose box by it; the answer to the message itself decides."""

    allowed = fields.Boolean()
    refusal = fields.String(
        allow_none=True,
        metadata={
            "description": "The code the message would be refused with (409): "
            "conversation_blocked, party_erased, community_blocked, "
            "recipient_portal_suspended or awaiting_reply; null when allowed"
        },
    )
    messages_left = fields.Integer(
        metadata={
            "description": "How many more messages the member may send in a row before "
            "the other party answers (their answer gives the full number back)"
        }
    )


class PartySchema(Schema):
    role = fields.Enum(Role, by_value=True)
    alias = fields.String(metadata={"description": "The party's name in this conversation only"})
    name = fields.String(
        allow_none=True,
        metadata={
            "description": "The name they chose; null for the advertiser until their first "
            "reply, and once erased"
        },
    )
    portal = fields.Nested(PortalRefSchema, metadata={"description": "Their community"})
    member = fields.String(
        allow_none=True,
        metadata={"description": "The member's handle: only shown to their own portal"},
    )
    erased = fields.Boolean(
        metadata={
            "description": "Their portal erased them (eraseMember): no handle, no name and "
            "no messages any more, and no one can write in the conversation"
        }
    )
    sending = fields.Nested(
        SendingSchema,
        allow_none=True,
        metadata={
            "description": "Only for the calling portal's own member (null for the other "
            "party, and once erased): whether they may write now"
        },
    )


class DeliverySchema(Schema):
    """The message's way to the recipient's portal. The sender's portal sees only whether
    it arrived, to the minute: the rest is about how the other community takes its
    messages, which is its own business."""

    state = fields.Enum(DeliveryState, by_value=True)
    attempts = fields.Integer(
        allow_none=True,
        metadata={"description": "Webhook attempts so far: only shown to the recipient"},
    )
    delivered_at = fields.DateTime(
        allow_none=True,
        metadata={"description": "When it arrived: to the minute (rounded down) for the sender"},
    )
    delivered_via = fields.String(
        allow_none=True,
        metadata={"description": "webhook or inbox: only shown to the recipient"},
    )
    last_error = fields.String(
        allow_none=True,
        metadata={"description": "Why the last webhook failed: only shown to the recipient"},
    )


class MessageSchema(Schema):
    id = fields.UUID()
    seq = fields.Integer(metadata={"description": "1, 2, ... within the conversation"})
    sender = fields.Enum(Role, by_value=True)
    body = fields.String()
    sent_at = fields.DateTime()
    delivery = fields.Nested(DeliverySchema)


class AdRefSchema(Schema):
    id = fields.UUID(
        allow_none=True,
        metadata={"description": "None once the ad is deleted, or its advertiser erased"},
    )
    title = fields.String(
        allow_none=True, metadata={"description": "None once its advertiser was erased"}
    )


_AD_REF = AdRefSchema()  # built once: building a schema copies each of its fields


class ConversationSummarySchema(Schema):
    id = fields.UUID()
    ad = fields.Method("_ad", metadata={"type": "object"})
    your_roles = fields.List(
        fields.Enum(Role, by_value=True),
        metadata={"description": "Which parties are members of the calling portal"},
    )
    initiator = fields.Nested(PartySchema)
    recipient = fields.Nested(PartySchema)
    blocked_at = fields.DateTime(allow_none=True)
    blocked_by = fields.Enum(Role, by_value=True, allow_none=True)
    message_count = fields.Integer()
    created_at = fields.DateTime()
    last_message_at = fields.DateTime()

    def _ad(self, view) -> dict:
        return _AD_REF.dump({"id": view.ad_id, "title": view.ad_title})


class ConversationSchema(ConversationSummarySchema):
    messages = fields.List(fields.Nested(MessageSchema), metadata={"description": "A page"})
    next_after = fields.Integer(
        allow_none=True,
        metadata={"description": "Pass as after for the following messages; null: no more"},
    )


class SentSchema(Schema):
    conversation = fields.Nested(ConversationSummarySchema)
    message = fields.Nested(MessageSchema)


class MessageResultSchema(Schema):
    index = fields.Integer(metadata={"description": "The item's place in the request"})
    status = fields.String(
        metadata={
            "description": "created (postMessage's or contactAdvertiser's 201), "
            "sent_before (their 200: the idempotency_key's message, as it is now) or "
            "rejected",
            "enum": ["created", "sent_before", "rejected"],
        }
    )
    conversation = fields.Nested(
        ConversationSummarySchema, allow_none=True, metadata={"description": "null if rejected"}
    )
    message = fields.Nested(
        MessageSchema, allow_none=True, metadata={"description": "null if rejected"}
    )
    error = fields.String(
        allow_none=True,
        metadata={
            "description": "Why the item was rejected, as a stable machine code: the `error` "
            "postMessage would answer it with (validation_error, conversation_not_found, "
            "not_a_party, conversation_blocked, party_erased, community_blocked, "
            "recipient_portal_suspended, awaiting_reply, idempotency_key_reused) or, for "
            "an opening, contactAdvertiser would (ad_not_found, contact_disabled, "
            "blocked_by_advertiser, too_many_conversations, invalid_input...); null "
            "unless rejected",
            "example": "awaiting_reply",
        },
    )
    errors = fields.Dict(
        allow_none=True,
        metadata={"description": "For rejected items: messages by field path, for a person"},
    )
    retry_after_s = fields.Integer(
        allow_none=True,
        metadata={
            "description": "For an opening rejected as too_many_conversations: seconds "
            "until the limit lets it through (contactAdvertiser's Retry-After); else null"
        },
    )


class MessageBatchResultSchema(Schema):
    results = fields.List(fields.Nested(MessageResultSchema))
    counts = fields.Dict(
        keys=fields.String(), values=fields.Integer(), metadata={"description": "Items by status"}
    )


class ConversationPageSchema(Schema):
    conversations = fields.List(fields.Nested(ConversationSummarySchema))
    next_cursor = fields.String(allow_none=True)


class RelayLimitsSchema(Schema):
    """What the relay allows, the same for every portal: a portal can tell its members
    before they are refused."""

    conversations_per_member_per_hour = fields.Integer(
        metadata={"description": "New conversations one member may open in an hour (429)"}
    )
    conversations_per_portal_per_hour = fields.Integer(
        metadata={"description": "New conversations all of a portal's members may open in an hour"}
    )
    conversations_with_one_member_per_hour = fields.Integer(
        metadata={
            "description": "New conversations a portal's members may open with any one "
            "advertiser in an hour"
        }
    )
    messages_in_a_row = fields.Integer(
        attribute="unanswered_messages",
        metadata={
            "description": "Messages a party may send in a conversation before the other "
            "answers (409 awaiting_reply); a conversation's sending shows how many are left"
        },
    )
    message_max_chars = fields.Integer(metadata={"description": "The longest message body"})
    name_max_chars = fields.Integer(metadata={"description": "The longest display name"})
    retention_days = fields.Integer(
        metadata={
            "description": "Messages are deleted this many days after they were sent (one "
            "still being delivered when they are over, once it is delivered or has failed): "
            "a portal keeps what its members need longer"
        }
    )


class InboxEventSchema(Schema):
    id = fields.String(
        metadata={
            "description": "The id the webhook for it carries (webhook-id): msg_... for a "
            "message, end_... for a conversation's end"
        }
    )
    type = fields.String(
        metadata={
            "description": "message.created, or conversation.ended: the other party blocked "
            "the conversation, or was erased by their community. Ignore types you do not "
            "know (acknowledge them): more may come"
        }
    )
    data = fields.Dict(
        metadata={
            "description": "What a webhook would carry in its data. message.created: "
            "message, conversation, to, from. conversation.ended: conversation, to, and ended "
            "(reason: blocked or party_erased; by: the other party's role and alias; at)"
        }
    )
    delivery = fields.Dict(metadata={"description": "state (pending or failed) and attempts"})


class InboxPageSchema(Schema):
    events = fields.List(fields.Nested(InboxEventSchema))
    next_since = fields.String(
        allow_none=True,
        metadata={
            "description": "The id of this page's last event: pass as since for more; null: "
            "nothing more for now"
        },
    )


class AcknowledgedSchema(Schema):
    acknowledged = fields.Integer(
        metadata={"description": "Newly acknowledged (repeats and unknown ids count 0)"}
    )
