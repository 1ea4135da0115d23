from __future__ import annotations

from marshmallow import Schema, fields, validate

from directory.api.ads.schemas import AdItemField, ItemResultSchema, StageItemSchema
from directory.api.fields import PerItemList, StrictBoolean
from directory.models import SyncStatus
from directory.services.ads import MAX_BATCH_ITEMS


class SyncSessionSchema(Schema):
    id = fields.UUID()
    status = fields.Enum(SyncStatus, by_value=True)
    created_at = fields.DateTime()
    expires_at = fields.DateTime(metadata={"description": "Commit before this, or start again"})
    finished_at = fields.DateTime(allow_none=True)
    staged = fields.Integer(metadata={"description": "Ads staged so far"})
    rejected = fields.Integer(metadata={"description": "Ads rejected so far (kept as they are)"})


class StageSchema(Schema):
    items = PerItemList(
        AdItemField(StageItemSchema, ops=None),
        required=True,
        validate=validate.Length(1, MAX_BATCH_ITEMS),
        metadata={
            "description": f"1 to {MAX_BATCH_ITEMS} ads; an external id sent again in a "
            "later request replaces what was staged (twice in one request, the first stands)"
        },
    )


class StageResultSchema(Schema):
    results = fields.List(
        fields.Nested(ItemResultSchema),
        metadata={
            "description": "One per item, in order: staged, or rejected with its code "
            "(validation_error, invalid_input, unknown_category, unknown_currency or "
            "duplicate_external_id: see error) and errors; a rejected item's ad is kept as "
            "it is at commit"
        },
    )
    session = fields.Nested(SyncSessionSchema)


class CommitSchema(Schema):
    delete_all = StrictBoolean(
        load_default=False,
        metadata={
            "description": "Needed to commit a session in which nothing was staged while the "
            "portal has ads: the commit then deletes them all. Without it such a commit is "
            "refused (409 empty_resync), since an export that came out empty looks the same"
        },
    )


class CommitResultSchema(Schema):
    session = fields.Nested(SyncSessionSchema)
    created = fields.Integer()
    updated = fields.Integer()
    unchanged = fields.Integer()
    deleted = fields.Integer(metadata={"description": "Ads of the portal that were not staged"})
    kept_rejected = fields.Integer(metadata={"description": "Rejected ads, kept as they were"})
    rejected_items = fields.List(
        fields.Nested(ItemResultSchema),
        metadata={
            "description": "Staged ads the commit rejected, each kept as it was, with its "
            "code and errors: the rules are checked again at commit, and what changed "
            "since staging may break one (a currency deleted, the portal's default "
            "currencies changed, an expires_at passed: invalid_input, unknown_category or "
            "unknown_currency). Items rejected when staged are not repeated here"
        },
    )
