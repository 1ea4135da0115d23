from __future__ import annotations

from marshmallow import Schema, fields

from directory.services.portal_blocks import MAX_BLOCKS_PER_PORTAL


class BlockedPortalSchema(Schema):
    """A portal the calling portal blocks."""

    slug = fields.String(metadata={"description": "The blocked portal's slug"})
    name = fields.String(metadata={"description": "The blocked community's name"})
    blocked_at = fields.DateTime(metadata={"description": "When it was first blocked"})


class BlockedPortalListSchema(Schema):
    blocked_portals = fields.List(
        fields.Nested(BlockedPortalSchema),
        metadata={
            "description": "The latest blocked first; all of them (at most "
            f"{MAX_BLOCKS_PER_PORTAL:,})"
        },
    )
