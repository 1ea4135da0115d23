"""The contact relay: members of portals write to advertisers, anonymously, and portals
receive their members' messages by webhook or from their inbox."""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter

from flask.views import MethodView

from directory.api.auth import BEARER_AUTH, require_portal
from directory.api.blueprint import Blueprint
from directory.api.db import transaction, wiring
from directory.api.errors import RETRY_AFTER_HEADER, ErrorSchema
from directory.api.fields import ItemErrors, json_response
from directory.api.headers import LOCATION_HEADER, location_of
from directory.api.relay import rendering
from directory.api.relay.schemas import (
    AcknowledgedSchema,
    AcknowledgeSchema,
    BlockSchema,
    ContactSchema,
    ConversationArgsSchema,
    ConversationListArgsSchema,
    ConversationPageSchema,
    ConversationSchema,
    ConversationSummarySchema,
    InboxArgsSchema,
    InboxPageSchema,
    MessageBatchResultSchema,
    MessageBatchSchema,
    MessagePostSchema,
    RelayLimitsSchema,
    SentSchema,
)
from directory.errors import VALIDATION_ERROR, DirectoryError, NotFound, TooManyRequests
from directory.models.relay import MAX_MESSAGE_CHARS, MAX_NAME_CHARS
from directory.services import deliveries, relay

blp = Blueprint(
    "relay",
    __name__,
    url_prefix="/v1",
    description="Contact relay: anonymous conversations about ads, delivered to portals",
)

AD_ID = {
    "in": "path",
    "name": "ad_id",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
    "description": "The directory's id of the ad",
}
CONVERSATION_ID = {
    "in": "path",
    "name": "conversation_id",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}


def _uuid(value: str, *, field: str, what: str) -> uuid.UUID:
    """The id in the path; a malformed one names nothing, and is answered as an unknown
    one is, with the same code (`ad_not_found`, `conversation_not_found`)."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(
            f"no {what} with id {value!r}",
            field=field,
            code=f"{what}_not_found",
            details={"location": "path"},
        ) from None


def _sent(session, portal, sent: relay.Sent, *, headers: dict | None = None):
    """The answer to a message sent: 201 (with `headers`) when it was made now."""
    if sent.created:
        response = json_response(_sent_body(session, portal, sent), 201)
        response.headers.update(headers or {})
        return response
    return json_response(_sent_body(session, portal, sent))


def _sent_body(session, portal, sent: relay.Sent) -> dict:
    """{conversation, message}, as SentSchema dumps them (rendering.py: the relay's hot
    path): as made now, or for a replay as they are now."""
    if sent.created:
        conversation, message = sent.conversation, sent.message
    else:
        conversation = relay.get_conversation_summary(
            session,
            viewer=portal,
            conversation_id=sent.conversation_id,
            limits=wiring().relay_limits,
        )
        message = relay.get_message(session, viewer=portal, message_id=sent.message_id)
    return {
        "conversation": rendering.conversation_summary(conversation),
        "message": rendering.message(message),
    }


@blp.route("/relay/limits")
class Limits(MethodView):
    @blp.response(200, RelayLimitsSchema)
    @blp.doc(operationId="getRelayLimits")
    def get(self):
        """What the relay allows: the same for every portal

        So that a portal can tell its members before they are refused. How many
        messages a member has left in a conversation is in the conversation's view
        (`sending`)."""
        return {
            **dataclasses.asdict(wiring().relay_limits),
            "message_max_chars": MAX_MESSAGE_CHARS,
            "name_max_chars": MAX_NAME_CHARS,
            "retention_days": wiring().settings.relay_retention_days,
        }


@blp.route("/ads/<string:ad_id>/contact", parameters=[AD_ID])
class Contact(MethodView):
    @blp.arguments(ContactSchema)
    @blp.response(
        201, SentSchema, description="The conversation was opened", headers=LOCATION_HEADER
    )
    @blp.alt_response(
        200, schema=SentSchema, description="Sent before with this idempotency_key: as then"
    )
    @blp.alt_response(
        404, schema=ErrorSchema, description="No ad to contact (expired, deleted, not visible)"
    )
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="The advertiser turned contact off for this ad (contact_disabled), "
        "the advertiser's community blocks the member's or the reverse "
        "(community_blocked: the message says which), the advertiser blocked a "
        "conversation with this member, whichever of them opened it "
        "(blocked_by_advertiser), or the idempotency_key was used for another message "
        "(idempotency_key_reused)",
    )
    @blp.alt_response(
        429,
        schema=ErrorSchema,
        description="Too many new conversations: see Retry-After",
        headers=RETRY_AFTER_HEADER,
    )
    @blp.doc(operationId="contactAdvertiser", security=BEARER_AUTH)
    def post(self, contact, ad_id: str):
        """Open a conversation with an ad's advertiser

        On behalf of one of the calling portal's members. The advertiser's portal
        receives the message (webhook or inbox) with the sender's alias, chosen name
        and community; never the member's handle."""
        ad_uuid = _uuid(ad_id, field="ad_id", what="ad")
        with transaction() as session:
            portal = require_portal(session)
            sent = relay.open_conversation(
                session,
                sender=portal,
                ad_id=ad_uuid,
                member=contact["member"],
                name=contact["name"],
                body=contact["body"],
                idempotency_key=contact["idempotency_key"],
                limits=wiring().relay_limits,
            )
            # The conversation is what the first message creates.
            conversation = location_of(
                "relay.ConversationById", conversation_id=str(sent.conversation_id)
            )
            return _sent(session, portal, sent, headers=conversation)


@blp.route("/conversations")
class Conversations(MethodView):
    @blp.arguments(ConversationListArgsSchema, location="query")
    @blp.response(200, ConversationPageSchema)
    @blp.doc(operationId="listConversations", security=BEARER_AUTH)
    def get(self, args):
        """List the calling portal's conversations, newest activity first

        Paging follows the order as it stood: a conversation with new activity while the
        pages are read moves to the top, past the page being read, and is not shown
        again; none is shown twice, and none that stayed where it was is skipped. Read
        again from the first page to see what moved up."""
        with transaction() as session:
            portal = require_portal(session)
            page = relay.list_conversations(
                session,
                viewer=portal,
                member=args["member"],
                ad_id=args["ad_id"],
                cursor=args["cursor"],
                limit=args["limit"],
                limits=wiring().relay_limits,
            )
        return json_response(
            {
                "conversations": [
                    rendering.conversation_summary(view) for view in page.conversations
                ],
                "next_cursor": page.next_cursor,
            }
        )


@blp.route("/conversations/<string:conversation_id>", parameters=[CONVERSATION_ID])
class ConversationById(MethodView):
    @blp.arguments(ConversationArgsSchema, location="query")
    @blp.response(200, ConversationSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such conversation for this portal")
    @blp.doc(operationId="getConversation", security=BEARER_AUTH)
    def get(self, args, conversation_id: str):
        """Read a conversation and a page of its messages

        Only the portals of its two parties see it; each sees the other party as an
        alias, a chosen name and a community."""
        conversation_uuid = _uuid(conversation_id, field="conversation_id", what="conversation")
        with transaction() as session:
            portal = require_portal(session)
            view = relay.get_conversation(
                session,
                viewer=portal,
                conversation_id=conversation_uuid,
                limits=wiring().relay_limits,
                after=args["after"],
                limit=args["limit"],
            )
        return json_response(rendering.conversation(view))


@blp.route("/conversations/<string:conversation_id>/messages", parameters=[CONVERSATION_ID])
class ConversationMessages(MethodView):
    @blp.arguments(MessagePostSchema)
    @blp.response(201, SentSchema, description="The message was accepted for delivery")
    @blp.alt_response(
        200, schema=SentSchema, description="Sent before with this idempotency_key: as then"
    )
    @blp.alt_response(
        403, schema=ErrorSchema, description="The member is not a party to the conversation"
    )
    @blp.alt_response(404, schema=ErrorSchema, description="No such conversation for this portal")
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="The conversation was blocked (conversation_blocked), the other "
        "party was erased by their community (party_erased), one party's community blocks "
        "the other's (community_blocked: the message says which; the conversation goes on "
        "once unblocked), the other party's community "
        "is suspended (recipient_portal_suspended), the member has sent as many messages "
        "in a row as they may before the other party answers (awaiting_reply), or the "
        "idempotency_key was used for another message (idempotency_key_reused)",
    )
    @blp.doc(operationId="postMessage", security=BEARER_AUTH)
    def post(self, message, conversation_id: str):
        """Write in a conversation, on behalf of one of its parties

        Refused while the other party's community is suspended from the directory:
        nothing reaches it then, and nothing is stored. The conversation can still be
        read."""
        conversation_uuid = _uuid(conversation_id, field="conversation_id", what="conversation")
        with transaction() as session:
            portal = require_portal(session)
            sent = relay.post_message(
                session,
                sender=portal,
                conversation_id=conversation_uuid,
                member=message["member"],
                name=message["name"],
                body=message["body"],
                idempotency_key=message["idempotency_key"],
                limits=wiring().relay_limits,
            )
            return _sent(session, portal, sent)


@blp.route("/messages/batch")
class MessageBatch(MethodView):
    @blp.arguments(MessageBatchSchema)
    @blp.response(200, MessageBatchResultSchema)
    @blp.doc(operationId="postMessages", security=BEARER_AUTH)
    def post(self, batch):
        """Write up to 100 messages, in conversations or opening them, in one request

        For a portal that relays its members' messages in turns (from a queue, a cron
        job): each item is taken as postMessage (with conversation_id) or
        contactAdvertiser (with ad_id and name: a new conversation) would take it alone,
        in the order given, and gets its own result: created, sent_before (its
        idempotency_key's message, as it is now) or rejected with the code they would
        answer (`error`), its errors and, past a limit on new conversations,
        `retry_after_s`; the other items are sent all the same."""
        items = batch["items"]
        messages = [_batch_message(item) for item in items if not isinstance(item, ItemErrors)]
        with transaction() as session:
            portal = require_portal(session)
            outcomes = iter(
                relay.post_messages(
                    session, sender=portal, messages=messages, limits=wiring().relay_limits
                )
            )
            results = [
                _batch_result(session, portal, index, item, outcomes)
                for index, item in enumerate(items)
            ]
        return json_response(
            {"results": results, "counts": dict(Counter(r["status"] for r in results))}
        )


def _batch_message(item: dict) -> relay.Opening | relay.Reply:
    if item["ad_id"] is not None:
        return relay.Opening(
            ad_id=item["ad_id"],
            member=item["member"],
            name=item["name"],
            body=item["body"],
            idempotency_key=item["idempotency_key"],
        )
    return relay.Reply(
        conversation_id=item["conversation_id"],
        member=item["member"],
        name=item["name"],
        body=item["body"],
        idempotency_key=item["idempotency_key"],
    )


def _batch_result(session, portal, index: int, item, outcomes) -> dict:
    """An item's result: its validation errors, or the next of the batch's outcomes."""
    if isinstance(item, ItemErrors):
        return _rejected(index, VALIDATION_ERROR, item.messages)
    outcome = next(outcomes)
    if isinstance(outcome, DirectoryError):
        return _rejected(
            index,
            outcome.code,
            outcome.by_field(),
            retry_after_s=outcome.retry_after_s if isinstance(outcome, TooManyRequests) else None,
        )
    return {
        "index": index,
        "status": "created" if outcome.created else "sent_before",
        **_sent_body(session, portal, outcome),
        "error": None,
        "errors": None,
        "retry_after_s": None,
    }


def _rejected(index: int, error: str, errors: dict, *, retry_after_s: int | None = None) -> dict:
    return {
        "index": index,
        "status": "rejected",
        "conversation": None,
        "message": None,
        "error": error,
        "errors": errors,
        "retry_after_s": retry_after_s,
    }


@blp.route("/conversations/<string:conversation_id>/block", parameters=[CONVERSATION_ID])
class BlockConversation(MethodView):
    @blp.arguments(BlockSchema)
    @blp.response(200, ConversationSummarySchema)
    @blp.alt_response(
        403, schema=ErrorSchema, description="The member is not a party to the conversation"
    )
    @blp.alt_response(404, schema=ErrorSchema, description="No such conversation for this portal")
    @blp.doc(operationId="blockConversation", security=BEARER_AUTH)
    def post(self, block, conversation_id: str):
        """Block a conversation: nobody can write in it any more

        On behalf of either party. The other party's portal is told
        (conversation.ended), unless it is the caller. Blocking again changes nothing."""
        conversation_uuid = _uuid(conversation_id, field="conversation_id", what="conversation")
        with transaction() as session:
            portal = require_portal(session)
            relay.block_conversation(
                session, caller=portal, conversation_id=conversation_uuid, member=block["member"]
            )
            view = relay.get_conversation_summary(
                session,
                viewer=portal,
                conversation_id=conversation_uuid,
                limits=wiring().relay_limits,
            )
        return json_response(rendering.conversation_summary(view))


@blp.route("/inbox")
class Inbox(MethodView):
    @blp.arguments(InboxArgsSchema, location="query")
    @blp.response(200, InboxPageSchema)
    @blp.doc(operationId="readInbox", security=BEARER_AUTH)
    def get(self, args):
        """Read the events that have not reached the calling portal yet

        Messages for its members, and the ends of their conversations (the other party
        blocked, or was erased). For portals without a public webhook URL, or beside it. Each event has the
        id its webhook carries (`webhook-id`) and the same `data`. Events stay until
        acknowledged (or delivered by webhook): store them, then acknowledge."""
        with transaction() as session:
            portal = require_portal(session)
            page = deliveries.inbox(
                session, portal_id=portal.id, since=args["since"], limit=args["limit"]
            )
        return {
            "events": [
                {
                    "id": event.webhook_id,
                    "type": event.payload["type"],
                    "data": event.payload["data"],
                    "delivery": {"state": event.state.value, "attempts": event.attempts},
                }
                for event in page.events
            ],
            "next_since": page.next_since,
        }


@blp.route("/inbox/ack")
class InboxAcknowledge(MethodView):
    @blp.arguments(AcknowledgeSchema)
    @blp.response(200, AcknowledgedSchema)
    @blp.doc(operationId="acknowledgeInbox", security=BEARER_AUTH)
    def post(self, acknowledgement):
        """Acknowledge inbox events: they are delivered and leave the inbox"""
        with transaction() as session:
            portal = require_portal(session)
            count = deliveries.acknowledge(
                session, portal_id=portal.id, webhook_ids=acknowledgement["ids"]
            )
        return {"acknowledged": count}
