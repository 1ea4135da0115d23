"""Portals, their keys and currencies, the category taxonomy, ads, their change log
and sync sessions.

Revision ID: 0001
Revises:
Created: 2026-11-25

Lock safety: creates new tables only; no existing table is locked.
Backward compatibility: first revision; nothing earlier to stay compatible with.
"""

from collections.abc import Sequence

import geoalchemy2
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# The published taxonomy: (code, domain, name, [(child code, child name), ...]).
# Changing it later is a new migration, so every database agrees on the codes.
TAXONOMY = [
    (
        "food",
        "goods",
        "Food and drink",
        [
            ("produce", "Fruit and vegetables"),
            ("baked", "Bread and baking"),
            ("preserves", "Preserves and honey"),
            ("meals", "Prepared meals"),
            ("drinks", "Drinks"),
        ],
    ),
    (
        "clothing",
        "goods",
        "Clothing and textiles",
        [
            ("clothes", "Clothes"),
            ("shoes", "Shoes"),
            ("accessories", "Accessories"),
            ("textiles", "Fabric and yarn"),
        ],
    ),
    (
        "household",
        "goods",
        "Household",
        [
            ("furniture", "Furniture"),
            ("appliances", "Appliances"),
            ("kitchenware", "Kitchenware"),
            ("decor", "Decoration"),
        ],
    ),
    (
        "garden",
        "goods",
        "Garden",
        [
            ("plants", "Plants and seedlings"),
            ("seeds", "Seeds"),
            ("tools", "Garden tools"),
            ("firewood", "Firewood"),
        ],
    ),
    (
        "electronics",
        "goods",
        "Electronics",
        [
            ("computers", "Computers"),
            ("phones", "Phones and tablets"),
            ("audio-video", "Audio and video"),
        ],
    ),
    (
        "media",
        "goods",
        "Books and media",
        [
            ("books", "Books"),
            ("music", "Music"),
            ("films", "Films"),
            ("games", "Games"),
        ],
    ),
    (
        "kids",
        "goods",
        "Children",
        [
            ("toys", "Toys"),
            ("baby-gear", "Baby gear"),
            ("kids-clothes", "Children's clothes"),
        ],
    ),
    (
        "sports",
        "goods",
        "Sports and outdoors",
        [
            ("bikes", "Bicycles"),
            ("outdoor", "Camping and outdoor"),
            ("fitness", "Fitness gear"),
        ],
    ),
    (
        "crafts",
        "goods",
        "Arts and crafts",
        [
            ("handmade", "Handmade goods"),
            ("art", "Art"),
            ("supplies", "Craft supplies"),
        ],
    ),
    (
        "care",
        "services",
        "Care",
        [
            ("childcare", "Childcare"),
            ("eldercare", "Elder care"),
            ("petcare", "Pet care"),
            ("companionship", "Companionship"),
        ],
    ),
    (
        "wellbeing",
        "services",
        "Health and wellbeing",
        [
            ("massage", "Massage"),
            ("therapy", "Therapies"),
            ("coaching", "Coaching"),
            ("beauty", "Hair and beauty"),
        ],
    ),
    (
        "education",
        "services",
        "Learning",
        [
            ("tutoring", "Tutoring"),
            ("languages", "Languages"),
            ("music-lessons", "Music lessons"),
            ("workshops", "Workshops"),
        ],
    ),
    (
        "home",
        "services",
        "Home and building",
        [
            ("repairs", "Repairs and DIY"),
            ("cleaning", "Cleaning"),
            ("gardening", "Gardening work"),
            ("moving", "Moving help"),
            ("building", "Building and renovation"),
        ],
    ),
    (
        "tech",
        "services",
        "Digital and creative",
        [
            ("it-support", "IT support"),
            ("web", "Websites"),
            ("design", "Design"),
            ("photo-video", "Photo and video"),
        ],
    ),
    (
        "transport",
        "services",
        "Transport",
        [
            ("rides", "Rides"),
            ("delivery", "Deliveries"),
            ("vehicle-repair", "Vehicle repair"),
        ],
    ),
    (
        "professional",
        "services",
        "Professional help",
        [
            ("accounting", "Accounting"),
            ("legal", "Legal help"),
            ("translation", "Translation"),
            ("writing", "Writing and editing"),
            ("admin", "Office and admin"),
        ],
    ),
    (
        "hospitality",
        "services",
        "Hospitality",
        [
            ("accommodation", "Accommodation"),
            ("events", "Events"),
            ("cooking", "Cooking"),
        ],
    ),
    (
        "space",
        "other",
        "Space",
        [
            ("rooms", "Rooms"),
            ("storage", "Storage"),
            ("workspace", "Workspace"),
            ("land", "Land"),
        ],
    ),
    (
        "lending",
        "other",
        "Lending and sharing",
        [
            ("tool-lending", "Tool lending"),
            ("vehicle-sharing", "Vehicle sharing"),
            ("equipment", "Equipment hire"),
        ],
    ),
    (
        "community",
        "other",
        "Community",
        [
            ("volunteering", "Volunteering"),
            ("swaps", "Swaps"),
            ("misc", "Other"),
        ],
    ),
]


def upgrade() -> None:
    # PostGIS for locations; pg_trgm and unaccent for the built-in search engine.
    op.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute("CREATE EXTENSION IF NOT EXISTS unaccent")
    op.create_table(
        "categories",
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("parent_code", sa.String(length=64), nullable=True),
        sa.Column("domain", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "code ~ '^[a-z][a-z-]*(\\.[a-z][a-z-]*)?$'", name=op.f("ck_categories_code_format")
        ),
        sa.CheckConstraint(
            "domain IN ('goods', 'services', 'other')", name=op.f("ck_categories_domain")
        ),
        sa.ForeignKeyConstraint(
            ["parent_code"], ["categories.code"], name=op.f("fk_categories_parent_code_categories")
        ),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_categories")),
    )
    op.create_index(op.f("ix_categories_parent_code"), "categories", ["parent_code"], unique=False)
    categories = sa.table(
        "categories",
        sa.column("code", sa.String),
        sa.column("parent_code", sa.String),
        sa.column("domain", sa.String),
        sa.column("name", sa.String),
        sa.column("position", sa.Integer),
    )
    rows = []
    for group_position, (group, domain, group_name, children) in enumerate(TAXONOMY):
        rows.append(
            {
                "code": group,
                "parent_code": None,
                "domain": domain,
                "name": group_name,
                "position": group_position * 100,
            }
        )
        for child_position, (child, child_name) in enumerate(children, start=1):
            rows.append(
                {
                    "code": f"{group}.{child}",
                    "parent_code": group,
                    "domain": domain,
                    "name": child_name,
                    "position": group_position * 100 + child_position,
                }
            )
    op.bulk_insert(categories, rows)
    op.create_table(
        "portals",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("slug", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("website", sa.String(length=2048), nullable=True),
        sa.Column("contact", sa.String(length=320), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "default_currencies",
            sa.ARRAY(sa.String(length=64)),
            server_default="{}",
            nullable=False,
        ),
        sa.Column("webhook_url", sa.String(length=2048), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "active",
                "suspended",
                name="portal_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            server_default="active",
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "slug ~ '^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$'", name=op.f("ck_portals_slug_format")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portals")),
        sa.UniqueConstraint("slug", name=op.f("uq_portals_slug")),
    )
    op.create_table(
        "ad_changes",
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "txid",
            sa.BigInteger(),
            server_default=sa.text("(pg_current_xact_id()::text::bigint)"),
            nullable=False,
        ),
        sa.Column("ad_id", sa.Uuid(), nullable=False),
        sa.Column("portal_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "op",
            sa.Enum(
                "upsert",
                "delete",
                name="ad_change_op",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column(
            "changed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["portal_id"],
            ["portals.id"],
            name=op.f("fk_ad_changes_portal_id_portals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_ad_changes")),
    )
    op.create_index(op.f("ix_ad_changes_portal_id"), "ad_changes", ["portal_id"], unique=False)
    op.create_index(op.f("ix_ad_changes_txid_seq"), "ad_changes", ["txid", "seq"], unique=False)
    op.create_table(
        "ads",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("portal_id", sa.BigInteger(), nullable=False),
        sa.Column("external_id", sa.String(length=128), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "offer",
                "want",
                name="ad_kind",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=False),
        sa.Column("tags", sa.ARRAY(sa.String(length=40)), server_default="{}", nullable=False),
        sa.Column(
            "location",
            geoalchemy2.types.Geography(
                geometry_type="POINT",
                srid=4326,
                dimension=2,
                spatial_index=False,
                from_text="ST_GeogFromText",
                name="geography",
            ),
            nullable=True,
        ),
        sa.Column(
            "privacy",
            sa.Enum(
                "exact",
                "approximate",
                "area",
                "hidden",
                name="ad_privacy",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column(
            "visibility",
            sa.Enum(
                "public",
                "portal",
                name="ad_visibility",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("currencies", sa.ARRAY(sa.String(length=64)), nullable=False),
        sa.Column("price_amount", sa.Numeric(precision=14, scale=4), nullable=True),
        sa.Column("price_currency", sa.String(length=64), nullable=True),
        sa.Column(
            "price_unit",
            sa.Enum(
                "once",
                "item",
                "hour",
                "day",
                "week",
                "month",
                "kg",
                name="ad_price_unit",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=True,
        ),
        sa.Column("language", sa.String(length=35), nullable=True),
        sa.Column("images", sa.ARRAY(sa.String(length=2048)), server_default="{}", nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("member", sa.String(length=64), nullable=False),
        sa.Column("ledger_account", sa.String(length=128), nullable=True),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("content_hash", sa.String(length=32), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "(location IS NULL) = (privacy = 'hidden')",
            name=op.f("ck_ads_location_matches_privacy"),
        ),
        sa.CheckConstraint(
            "(price_amount IS NULL) = (price_currency IS NULL) AND (price_amount IS NULL) = (price_unit IS NULL)",
            name=op.f("ck_ads_price_complete"),
        ),
        sa.CheckConstraint(
            "cardinality(currencies) BETWEEN 1 AND 20", name=op.f("ck_ads_currencies_count")
        ),
        sa.CheckConstraint("cardinality(images) <= 10", name=op.f("ck_ads_images_count")),
        sa.CheckConstraint("cardinality(tags) <= 20", name=op.f("ck_ads_tags_count")),
        sa.CheckConstraint("char_length(body) <= 8000", name=op.f("ck_ads_body_length")),
        sa.CheckConstraint(
            "char_length(title) BETWEEN 1 AND 200", name=op.f("ck_ads_title_length")
        ),
        sa.CheckConstraint(
            "price_amount IS NULL OR price_amount >= 0", name=op.f("ck_ads_price_not_negative")
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_ads_version_positive")),
        sa.ForeignKeyConstraint(
            ["category"], ["categories.code"], name=op.f("fk_ads_category_categories")
        ),
        sa.ForeignKeyConstraint(
            ["portal_id"], ["portals.id"], name=op.f("fk_ads_portal_id_portals"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ads")),
        sa.UniqueConstraint("portal_id", "external_id", name=op.f("uq_ads_portal_id_external_id")),
    )
    op.create_index(
        op.f("ix_ads_location"), "ads", ["location"], unique=False, postgresql_using="gist"
    )
    op.create_table(
        "currencies",
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("portal_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("symbol", sa.String(length=8), nullable=True),
        sa.Column("value_hours", sa.Numeric(precision=12, scale=6), nullable=True),
        sa.Column("value_amount", sa.Numeric(precision=14, scale=4), nullable=True),
        sa.Column("value_currency", sa.String(length=3), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "code ~ '^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?:[A-Z][A-Z0-9]{1,11}$'",
            name=op.f("ck_currencies_code_format"),
        ),
        sa.CheckConstraint(
            "(value_amount IS NULL) = (value_currency IS NULL) AND (value_amount IS NULL OR value_amount > 0)",
            name=op.f("ck_currencies_value_pair"),
        ),
        sa.CheckConstraint(
            "value_hours IS NULL OR value_hours > 0",
            name=op.f("ck_currencies_value_hours_positive"),
        ),
        sa.ForeignKeyConstraint(
            ["portal_id"],
            ["portals.id"],
            name=op.f("fk_currencies_portal_id_portals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_currencies")),
    )
    op.create_index(op.f("ix_currencies_portal_id"), "currencies", ["portal_id"], unique=False)
    op.create_table(
        "portal_keys",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("portal_id", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("hint", sa.String(length=16), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["portal_id"],
            ["portals.id"],
            name=op.f("fk_portal_keys_portal_id_portals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_keys")),
        sa.UniqueConstraint("digest", name=op.f("uq_portal_keys_digest")),
    )
    op.create_index(op.f("ix_portal_keys_portal_id"), "portal_keys", ["portal_id"], unique=False)
    op.create_table(
        "sync_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("portal_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "open",
                "committed",
                "aborted",
                name="sync_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            server_default="open",
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["portal_id"],
            ["portals.id"],
            name=op.f("fk_sync_sessions_portal_id_portals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_sessions")),
    )
    op.create_index(
        op.f("ix_sync_sessions_portal_id_status"),
        "sync_sessions",
        ["portal_id", "status"],
        unique=False,
    )
    op.create_table(
        "sync_session_items",
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("external_id", sa.String(length=128), nullable=False),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sync_sessions.id"],
            name=op.f("fk_sync_session_items_session_id_sync_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", "external_id", name=op.f("pk_sync_session_items")),
    )


def downgrade() -> None:
    op.drop_table("sync_session_items")
    op.drop_index(op.f("ix_sync_sessions_portal_id_status"), table_name="sync_sessions")
    op.drop_table("sync_sessions")
    op.drop_index(op.f("ix_portal_keys_portal_id"), table_name="portal_keys")
    op.drop_table("portal_keys")
    op.drop_index(op.f("ix_currencies_portal_id"), table_name="currencies")
    op.drop_table("currencies")
    op.drop_index(op.f("ix_ads_location"), table_name="ads", postgresql_using="gist")
    op.drop_table("ads")
    op.drop_index(op.f("ix_ad_changes_txid_seq"), table_name="ad_changes")
    op.drop_index(op.f("ix_ad_changes_portal_id"), table_name="ad_changes")
    op.drop_table("ad_changes")
    op.drop_table("portals")
    op.drop_index(op.f("ix_categories_parent_code"), table_name="categories")
    op.drop_table("categories")
