from __future__ import annotations

from marshmallow import Schema, fields

from directory.api.fields import HANDLE, validate_member_handle


class ErasureRequestSchema(Schema):
    member = fields.String(
        required=True,
        validate=validate_member_handle,
        metadata={
            "description": "The calling portal's handle of the member to erase",
            "pattern": HANDLE.pattern,
            "example": "m-4821",
        },
    )


class ErasureSchema(Schema):
    """What the erasure removed; all zero when the directory held nothing of the member
    (a handle it never saw, or erased before)."""

    ads_deleted = fields.Integer(metadata={"description": "The member's ads, now deleted"})
    conversations_ended = fields.Integer(
        metadata={
            "description": "Conversations the member was a party to: emptied of their "
            "messages, the member's handle and name; the other party's portal is told "
            "they ended (conversation.ended), reads so (erased: true), and writing in them "
            "is refused with 409 party_erased"
        }
    )
    messages_deleted = fields.Integer(
        metadata={"description": "Messages of those conversations, both parties', deleted"}
    )
    staged_ads_dropped = fields.Integer(
        metadata={
            "description": "The member's ads staged in the portal's open sync sessions, "
            "dropped: their commit will not publish them again"
        }
    )
