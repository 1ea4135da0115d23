"""Search: words, typo-tolerant words and a planar point kept on each ad, with the
indexes the built-in search engine queries.

Revision ID: 0002
Revises: 0001
Created: 2026-11-25

Lock safety: adding stored generated columns rewrites `ads` under an ACCESS EXCLUSIVE
lock, and the indexes are built inside that lock: writes and reads of ads wait for the
whole migration (about a minute per million ads on two cores). Run it in a quiet hour.
Backward compatibility: only adds columns the database fills itself; the previous
release neither reads nor writes them and keeps working.
"""

from collections.abc import Sequence

import geoalchemy2
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Ad language (ISO 639-1, the primary subtag of its BCP 47 tag) to the PostgreSQL text
# search configuration that stems it; anything else is indexed word for word ('simple').
TEXT_CONFIGS = {
    "ar": "arabic",
    "ca": "catalan",
    "da": "danish",
    "de": "german",
    "el": "greek",
    "en": "english",
    "es": "spanish",
    "eu": "basque",
    "fi": "finnish",
    "fr": "french",
    "ga": "irish",
    "hi": "hindi",
    "hu": "hungarian",
    "hy": "armenian",
    "id": "indonesian",
    "it": "italian",
    "lt": "lithuanian",
    "ne": "nepali",
    "nl": "dutch",
    "no": "norwegian",
    "nb": "norwegian",
    "nn": "norwegian",
    "pt": "portuguese",
    "ro": "romanian",
    "ru": "russian",
    "sr": "serbian",
    "sv": "swedish",
    "ta": "tamil",
    "tr": "turkish",
    "yi": "yiddish",
}


def upgrade() -> None:
    # Each function is a single expression of immutable parts, so that PostgreSQL inlines
    # it into the generated columns: not inlined (a run-time text-to-regconfig cast, a
    # merely stable array_to_string), filling the words cost ~280 µs per ad written
    # instead of ~46 µs (bench/search.py, 20,000 ads, identical vectors).
    cases = " ".join(
        f"WHEN '{code}' THEN '{config}'::regconfig" for code, config in TEXT_CONFIGS.items()
    )
    # IMMUTABLE wrappers: a generated column may only use immutable functions, and
    # unaccent() is merely stable because its dictionary could be changed.
    op.execute(
        "CREATE FUNCTION directory_unaccent(value text) RETURNS text "
        "LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE "
        "RETURN public.unaccent('public.unaccent'::regdictionary, value)"
    )
    # array_to_string is stable only because some element types print differently by
    # settings; text does not.
    op.execute(
        "CREATE FUNCTION directory_join_words(words text[]) RETURNS text "
        "LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN array_to_string(words, ' ')"
    )
    op.execute(
        "CREATE FUNCTION directory_text_config(language text) RETURNS regconfig "
        "LANGUAGE sql IMMUTABLE PARALLEL SAFE "
        f"RETURN CASE split_part(lower(language), '-', 1) {cases} ELSE 'simple'::regconfig END"
    )
    # Title words twice: stemmed in the ad's language, and as written so that prefixes
    # and names match in any language. Tags as written; the body stemmed only.
    op.execute(
        "CREATE FUNCTION directory_search_vector(language text, title text, tags text[], "
        "body text) RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN "
        "setweight(to_tsvector(directory_text_config(language), directory_unaccent(title)), 'A')"
        " || setweight(to_tsvector('simple'::regconfig, directory_unaccent(title)), 'A')"
        " || setweight(to_tsvector('simple'::regconfig, "
        "directory_unaccent(directory_join_words(tags))), 'B')"
        " || setweight(to_tsvector(directory_text_config(language), directory_unaccent(body)), 'C')"
    )
    op.execute(
        "CREATE FUNCTION directory_search_words(title text, tags text[]) RETURNS text "
        "LANGUAGE sql IMMUTABLE PARALLEL SAFE "
        "RETURN lower(directory_unaccent(title || ' ' || directory_join_words(tags)))"
    )
    op.add_column(
        "ads",
        sa.Column(
            "location_box",
            geoalchemy2.types.Geometry(
                geometry_type="POINT", srid=4326, spatial_index=False, from_text="ST_GeomFromEWKT"
            ),
            sa.Computed("location::geometry", persisted=True),
            nullable=True,
        ),
    )
    op.add_column(
        "ads",
        sa.Column(
            "search_vector",
            postgresql.TSVECTOR(),
            sa.Computed("directory_search_vector(language, title, tags, body)", persisted=True),
            nullable=True,
        ),
    )
    op.add_column(
        "ads",
        sa.Column(
            "search_words",
            sa.Text(),
            sa.Computed("directory_search_words(title, tags)", persisted=True),
            nullable=True,
        ),
    )
    op.create_index(
        "ix_ads_location_box", "ads", ["location_box"], postgresql_using="gist", unique=False
    )
    op.create_index("ix_ads_search_vector", "ads", ["search_vector"], postgresql_using="gin")
    op.create_index(
        "ix_ads_search_words",
        "ads",
        ["search_words"],
        postgresql_using="gin",
        postgresql_ops={"search_words": "gin_trgm_ops"},
    )
    op.create_index("ix_ads_updated_at_id", "ads", ["updated_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_ads_updated_at_id", table_name="ads")
    op.drop_index("ix_ads_search_words", table_name="ads")
    op.drop_index("ix_ads_search_vector", table_name="ads")
    op.drop_index("ix_ads_location_box", table_name="ads")
    op.drop_column("ads", "search_words")
    op.drop_column("ads", "search_vector")
    op.drop_column("ads", "location_box")
    for function in (
        "directory_search_words(text, text[])",
        "directory_search_vector(text, text, text[], text)",
        "directory_text_config(text)",
        "directory_join_words(text[])",
        "directory_unaccent(text)",
    ):
        op.execute(f"DROP FUNCTION {function}")
