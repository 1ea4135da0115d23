"""The built-in search engine: PostGIS for places, full-text search and pg_trgm for words.

Every query is one SELECT over `ads` (plus one for facets), on the indexes of migration
0002: GiST on the geography point (radius, nearest first), GiST on its planar copy
(boxes), GIN on the words and on their trigrams, B-tree on (updated_at, id).

Its connections plan every statement for its own values (plan_cache_mode): psycopg
prepares a statement after a few executions, and a generic plan chosen once for all
values made a radius + currency + text query 15 times slower."""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import (
    Float,
    String,
    and_,
    cast,
    func,
    literal,
    or_,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.postgresql import REGCONFIG
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from directory.db import make_engine, make_session_factory
from directory.models import Ad, Portal, PortalStatus, Visibility
from directory.search import (
    Facet,
    Facets,
    SearchHit,
    SearchPage,
    SearchQuery,
    Sort,
    SortKey,
    encode_cursor,
)
from directory.services.ads import RECORD_COLUMNS, record_from_row

# The configurations whose stemming a query tries when it names no language: the
# languages most ads are written in. Words also always match as written and by prefix.
DEFAULT_QUERY_CONFIGS = ("english", "french", "german", "spanish", "italian", "portuguese", "dutch")
# Same table as migration 0002 (which keeps its own frozen copy).
TEXT_CONFIGS = {
    "ar": "arabic", "ca": "catalan", "da": "danish", "de": "german", "el": "greek",
    "en": "english", "es": "spanish", "eu": "basque", "fi": "finnish", "fr": "french",
    "ga": "irish", "hi": "hindi", "hu": "hungarian", "hy": "armenian", "id": "indonesian",
    "it": "italian", "lt": "lithuanian", "ne": "nepali", "nl": "dutch", "no": "norwegian",
    "nb": "norwegian", "nn": "norwegian", "pt": "portuguese", "ro": "romanian",
    "ru": "russian", "sr": "serbian", "sv": "swedish", "ta": "tamil", "tr": "turkish",
    "yi": "yiddish",
}  # fmt: skip
WORD = re.compile(r"\w+")
GEOGRAPHY_SRID = 4326


def make_search_engine(database_url: str, *, pool_size: int, statement_timeout_ms: int) -> Engine:
    return make_engine(
        database_url,
        pool_size=pool_size,
        statement_timeout_ms=statement_timeout_ms,
        options="-c plan_cache_mode=force_custom_plan -c default_transaction_read_only=on",
    )


class PostgresSearch:
    name = "postgres"

    def __init__(self, session_factory: sessionmaker[Session]):
        self._session_factory = session_factory

    @classmethod
    def from_engine(cls, engine: Engine) -> PostgresSearch:
        return cls(make_session_factory(engine))

    def search(self, query: SearchQuery) -> SearchPage:
        with self._session_factory() as session, session.begin():
            return search(session, query)


def search(session: Session, query: SearchQuery) -> SearchPage:
    statement = hits_statement(query)
    rows = session.execute(statement).all()
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    hits, keys = [], []
    width = len(RECORD_COLUMNS)
    for row in rows:
        hits.append(SearchHit(record_from_row(row[:width]), distance_m=row.distance_m))
        keys.append(SortKey(_key_value(query.sort, row.sort_value), row.id))
    cursor = encode_cursor(query, keys[-1]) if more and hits else None
    facets = facet_counts(session, query) if query.facets else None
    return SearchPage(hits=hits, next_cursor=cursor, facets=facets)


def _key_value(sort: Sort, value) -> float | str:
    if sort is Sort.RECENT:
        return value.isoformat()
    return float(value)


# --- the statement ----------------------------------------------------------------------


def _point(query: SearchQuery):
    return func.ST_GeogFromText(
        f"SRID={GEOGRAPHY_SRID};POINT({query.point.lon!r} {query.point.lat!r})"
    )


def text_query(text: str, languages: tuple[str, ...]):
    """Words as written, each also as a prefix ("garden" finds "gardening"), or stemmed
    in any of the query's languages ("gardens" finds "garden")."""
    words = WORD.findall(text.casefold())
    configs = {TEXT_CONFIGS.get(language.split("-")[0]) for language in languages} - {None}
    configs = sorted(configs) if languages else DEFAULT_QUERY_CONFIGS
    tsquery = func.to_tsquery(
        cast(literal("simple"), REGCONFIG),
        func.directory_unaccent(" & ".join(f"{word}:*" for word in words) if words else ""),
    )
    for config in configs:
        tsquery = tsquery.op("||")(
            func.plainto_tsquery(cast(literal(config), REGCONFIG), func.directory_unaccent(text))
        )
    return tsquery


def filters(query: SearchQuery) -> list[ColumnElement]:
    """Everything that selects ads, shared by the hits and the facets."""
    visible = Ad.visibility == Visibility.PUBLIC
    if query.viewer_portal_id is not None:
        visible = visible | (Ad.portal_id == query.viewer_portal_id)
    conditions: list[ColumnElement] = [
        visible,
        Ad.expires_at > func.now(),
        Portal.status == PortalStatus.ACTIVE,
    ]
    if not query.includes_hidden:
        conditions.append(Ad.location.is_not(None))
    if query.radius_km is not None:
        conditions.append(
            func.ST_DWithin(Ad.location, _point(query), query.radius_km * 1000.0, False)
        )
    if query.bbox is not None:
        box = query.bbox
        conditions.append(
            or_(
                *(
                    func.ST_Intersects(
                        Ad.location_box,
                        func.ST_MakeEnvelope(west, box.south, east, box.north, GEOGRAPHY_SRID),
                    )
                    for west, east in box.lon_ranges()
                )
            )
        )
    if query.text is not None:
        conditions.append(
            or_(
                Ad.search_vector.op("@@")(text_query(query.text, query.languages)),
                # Typos: the query is close to some run of words of the title or tags.
                literal(_folded(query.text)).op("<%")(Ad.search_words),
            )
        )
    if query.kinds:
        conditions.append(Ad.kind.in_(query.kinds))
    if query.categories:
        conditions.append(Ad.category.in_(query.categories))
    if query.tags:
        tag = func.unnest(Ad.tags).table_valued("value").render_derived(name="tag")
        conditions.append(
            select(1).select_from(tag).where(func.lower(tag.c.value).in_(query.tags)).exists()
        )
    if query.currencies:
        conditions.append(Ad.currencies.overlap(list(query.currencies)))
    if query.languages:
        language = func.lower(Ad.language)
        conditions.append(
            or_(
                language.in_(query.languages),
                func.split_part(language, "-", 1).in_(
                    [code for code in query.languages if "-" not in code] or [""]
                ),
            )
        )
    if query.portals:
        conditions.append(Portal.slug.in_(query.portals))
    if query.updated_since is not None:
        conditions.append(Ad.updated_at >= query.updated_since)
    if query.has_price is not None:
        conditions.append(
            Ad.price_amount.is_not(None) if query.has_price else Ad.price_amount.is_(None)
        )
    if query.price is not None:
        conditions.append(Ad.price_currency == query.price.currency)
        if query.price.minimum is not None:
            conditions.append(Ad.price_amount >= query.price.minimum)
        if query.price.maximum is not None:
            conditions.append(Ad.price_amount <= query.price.maximum)
    return conditions


def _folded(text: str) -> str:
    return " ".join(WORD.findall(text.casefold()))


def _relevance(query: SearchQuery):
    words = func.directory_unaccent(_folded(query.text))
    return cast(
        func.ts_rank_cd(Ad.search_vector, text_query(query.text, query.languages)), Float
    ) + cast(func.word_similarity(words, Ad.search_words), Float)


def hits_statement(query: SearchQuery):
    """One page of hits (one more than the limit, to know whether another follows)."""
    distance = (
        Ad.location.op("<->", return_type=Float)(_point(query)) if query.point is not None else None
    )
    if query.sort is Sort.DISTANCE:
        sort_value = distance
        order = [distance, Ad.id]
    elif query.sort is Sort.RELEVANCE:
        sort_value = _relevance(query)
        order = [sort_value.desc(), Ad.id]
    else:
        sort_value = Ad.updated_at
        order = [Ad.updated_at.desc(), Ad.id.desc()]
    conditions = filters(query)
    if query.after is not None:
        conditions.append(_after(query, sort_value))
    distance_column = distance if distance is not None else cast(literal(None), Float)
    return (
        select(
            *RECORD_COLUMNS,
            distance_column.label("distance_m"),
            sort_value.label("sort_value"),
        )
        .join(Portal, Portal.id == Ad.portal_id)
        .where(*conditions)
        .order_by(*order)
        .limit(query.limit + 1)
    )


def _after(query: SearchQuery, sort_value) -> ColumnElement:
    key = query.after
    if query.sort is Sort.DISTANCE:
        return tuple_(sort_value, Ad.id) > tuple_(literal(key.value, Float), key.ad_id)
    if query.sort is Sort.RELEVANCE:
        return or_(sort_value < key.value, and_(sort_value == key.value, Ad.id > key.ad_id))
    return tuple_(Ad.updated_at, Ad.id) < tuple_(datetime.fromisoformat(key.value), key.ad_id)


# --- facets -----------------------------------------------------------------------------


def facet_counts(session: Session, query: SearchQuery) -> Facets:
    """Counts over the whole result set, not just the page. A group's count includes its
    children's ads."""
    hits = (
        select(Ad.category, Ad.kind, Ad.currencies, Portal.slug)
        .join(Portal, Portal.id == Ad.portal_id)
        .where(*filters(query))
        .cte("hits")
        .prefix_with("MATERIALIZED")  # computed once, read by every count
    )
    parts = [select(literal("total"), literal(None, String), func.count()).select_from(hits)]
    columns = {Facet.KIND: hits.c.kind, Facet.CATEGORY: hits.c.category, Facet.PORTAL: hits.c.slug}
    for facet in query.facets:
        if facet is Facet.CURRENCY:
            each = select(func.unnest(hits.c.currencies).label("value")).subquery()
            value = each.c.value
        else:
            value = cast(columns[facet], String)
        parts.append(select(literal(facet.value), value, func.count()).group_by(value))
    counts: dict[Facet, dict[str, int]] = {facet: {} for facet in query.facets}
    total = 0
    for facet, value, count in session.execute(union_all(*parts)):
        if facet == "total":
            total = count
        else:
            counts[Facet(facet)][value] = count
    if Facet.CATEGORY in counts:
        categories = counts[Facet.CATEGORY]
        for code, count in list(categories.items()):
            group, dot, _ = code.partition(".")
            if dot:
                categories[group] = categories.get(group, 0) + count
    return Facets(
        total=total,
        counts={
            facet: dict(sorted(bucket.items(), key=lambda item: (-item[1], item[0])))
            for facet, bucket in counts.items()
        },
    )
