"""The built-in search engine: PostGIS for places, full-text search and pg_trgm for words.

Every search is one SELECT over `ads` (plus one for facets), on the indexes of migration
0002: GiST on the geography point (radius, nearest first), GiST on its planar copy
(boxes), GIN on the words and on their trigrams, B-tree on (updated_at, id).

The SQL is written here as text with bound parameters rather than composed with
SQLAlchemy's expression language: composing and caching a statement of this size cost
more than 1 ms per search, as much as PostgreSQL takes to answer it. Values never
enter the text; only our own constants (column names, text search configurations) do.

Its connections plan every statement for its own values (plan_cache_mode): psycopg
prepares a statement after a few executions, and a generic plan chosen once for all
values made a radius + currency + text query 15 times slower."""

from __future__ import annotations

from datetime import datetime

import psycopg
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from directory.db import make_engine
from directory.search import (
    Facet,
    Facets,
    SearchHit,
    SearchPage,
    SearchQuery,
    Sort,
    SortKey,
    encode_cursor,
    query_words,
)

# The configurations whose stemming a query tries when it names no language: the
# languages most ads are written in. Words also always match as written and by prefix.
DEFAULT_QUERY_CONFIGS = ("english", "french", "german", "spanish", "italian", "portuguese", "dutch")
# And those of the scripts a query is written in, by their blocks: a body is indexed
# stemmed in its ad's language only, so a word written in another script than the
# default languages' was found, as written, in titles and tags and never in a body
# (q=книги missed "Продаю старые книги"). Stemming in every language instead cost a
# search 3 to 6 times as much; stemmers of other scripts leave a word as it is.
SCRIPT_CONFIGS = (
    (0x0370, 0x03FF, ("greek",)),
    (0x0400, 0x052F, ("russian", "serbian")),
    (0x0530, 0x058F, ("armenian",)),
    (0x0590, 0x05FF, ("yiddish",)),
    (0x0600, 0x06FF, ("arabic",)),
    (0x0750, 0x077F, ("arabic",)),
    (0x0900, 0x097F, ("hindi", "nepali")),
    (0x0B80, 0x0BFF, ("tamil",)),
    (0x1F00, 0x1FFF, ("greek",)),
)
# Greek writes a sigma at the end of a word in lower case as the final form ς (U+03C2),
# elsewhere and in capitals as U+03C3 and Σ. The query's words are case-folded, which
# makes every one U+03C3; an ad's words are folded by PostgreSQL's lower(), letter by
# letter, which keeps ς and turns Σ into U+03C3. So a query's word ending in a sigma is
# looked for under both spellings.
SIGMA, FINAL_SIGMA = "\u03c3", "\u03c2"
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
# The trigram word similarity from which a query counts as a typo of the title or tags
# (operator <%). pg_trgm's default, 0.6, missed one-letter typos of a 7-letter word:
# "bicyle" scores 0.57 against "bicycle", "bicylce" 0.5 (tests/search/test_contract.py).
TYPO_SIMILARITY = 0.5

# The columns of directory.services.ads.RECORD_COLUMNS, in its order.
RECORD_SELECT = """ads.id, portals.slug, ads.external_id, ads.kind, ads.title, ads.body,
    ads.category, ads.tags, ST_Y(ads.location_box), ST_X(ads.location_box), ads.privacy,
    ads.visibility, ads.currencies, ads.price_amount, ads.price_currency, ads.price_unit,
    ads.language, ads.images, ads.expires_at, ads.member, ads.ledger_account,
    ads.accepts_contact, ads.version, ads.created_at, ads.updated_at, portals.ledger_protocol,
    portals.ledger_url, portals.ledger_node,
    CASE WHEN portals.website_verified_at IS NOT NULL THEN portals.website END"""
RECORD_WIDTH = 29


def make_search_engine(database_url: str, *, pool_size: int, statement_timeout_ms: int) -> Engine:
    return make_engine(
        database_url,
        pool_size=pool_size,
        statement_timeout_ms=statement_timeout_ms,
        # No JIT: compiling a plan took ~100 ms, more than any search should take.
        options="-c plan_cache_mode=force_custom_plan -c default_transaction_read_only=on "
        f"-c jit=off -c pg_trgm.word_similarity_threshold={TYPO_SIMILARITY}",
        # A search is one or two SELECTs: no BEGIN/COMMIT, which were two of its five
        # round trips.
        autocommit=True,
    )


class PostgresSearch:
    name = "postgres"

    def __init__(self, engine: Engine):
        self._engine = engine

    def search(self, query: SearchQuery) -> SearchPage:
        # Straight on the pool's psycopg connection: SQLAlchemy's Result, set up anew for
        # each text statement's 27 columns, cost 0.2 ms a search (a third of the SQL at
        # 100k ads). Errors, connecting included, are wrapped as SQLAlchemy's, as
        # everywhere else (an unreachable database is a 503, not a 500).
        try:
            connection = self._engine.raw_connection()
            try:
                with connection.cursor() as cursor:
                    return search(cursor, query)
            finally:
                # A lost connection is dropped by the pool when it fails its reset here.
                connection.close()
        except psycopg.Error as error:
            raise DBAPIError.instance(
                None, None, error, psycopg.Error, hide_parameters=True
            ) from error


def search(db: psycopg.Cursor, query: SearchQuery) -> SearchPage:
    sql, params = hits_sql(query)
    db.execute(sql, params)
    rows = db.fetchall()
    more = len(rows) > query.limit
    hits = [SearchHit(row[:RECORD_WIDTH], row[RECORD_WIDTH]) for row in rows[: query.limit]]
    next_cursor = None
    if more and hits:
        last = rows[query.limit - 1]  # the page ends at its sort value and id
        key = SortKey(_key_value(query.sort, last[RECORD_WIDTH + 1]), last[0])
        next_cursor = encode_cursor(query, key)
    facets = None
    if query.facets:
        sql, params = facets_sql(query)
        db.execute(sql, params)
        facets = _facets(query, db.fetchall())
    return SearchPage(hits=hits, next_cursor=next_cursor, facets=facets)


def _key_value(sort: Sort, value) -> float | str:
    if sort is Sort.RECENT:
        return value.isoformat()
    return float(value)


# --- the statements ---------------------------------------------------------------------


class _Params(dict):
    """The parameters of one statement: binding a value returns its placeholder."""

    def __call__(self, value) -> str:
        name = f"p{len(self)}"
        self[name] = value
        return f"%({name})s"


def _planar_point(query: SearchQuery, bind: _Params) -> str:
    # Bound under fixed names: one pair of parameters however often the point is used.
    bind["lon"], bind["lat"] = query.point.lon, query.point.lat
    return "ST_SetSRID(ST_MakePoint(%(lon)s, %(lat)s), 4326)"


def _point(query: SearchQuery, bind: _Params) -> str:
    return f"{_planar_point(query, bind)}::geography"


def _folded(text: str) -> str:
    # Each word once: ranking grows steeply with repeated words, and the typo score does
    # not change (a word's trigrams form a set).
    return " ".join(query_words(text))


def _prefixes(bind: _Params, words: list[str]) -> str:
    """A tsquery of all these words, each as written and as a prefix ("" without words)."""
    if not words:
        return ""
    # Unaccented before each word is quoted as a lexeme: unaccent turns a few letters
    # into tsquery syntax (a parenthesised digit into "(1)", modifier letters into a
    # colon or a quote). All immutable: planned as the constant it comes to.
    unaccented = f"btrim(directory_unaccent({bind(' '.join(words))}))"
    escaped = rf"replace(replace({unaccented}, '\', '\\'), '''', '''''')"
    lexemes = f"'''' || regexp_replace({escaped}, ' +', ''':* & ''', 'g') || ''':*'"
    return f"to_tsquery('simple', {lexemes})"


def _default_configs(text: str) -> tuple[str, ...]:
    """The configurations a query naming no language is stemmed in: the default
    languages', and those of the scripts it is written in (SCRIPT_CONFIGS)."""
    if text.isascii():
        return DEFAULT_QUERY_CONFIGS
    codes = {ord(character) for character in text}
    scripts = {
        config
        for first, last, configs in SCRIPT_CONFIGS
        if any(first <= code <= last for code in codes)
        for config in configs
    }
    return DEFAULT_QUERY_CONFIGS + tuple(sorted(scripts))


def _text_query(query: SearchQuery, bind: _Params) -> str:
    """Words as written, each also as a prefix ("garden" finds "gardening"), or stemmed
    in any of the query's languages ("gardens" finds "garden")."""
    words = query_words(query.text)
    if words:
        # A word that may end in either sigma matches under either spelling; the other
        # words all at once.
        terms = [_prefixes(bind, [word for word in words if not word.endswith(SIGMA)])]
        terms += [
            f"({_prefixes(bind, [word])} || {_prefixes(bind, [word[:-1] + FINAL_SIGMA])})"
            for word in words
            if word.endswith(SIGMA)
        ]
        prefixes = "(" + " && ".join(term for term in terms if term) + ")"
    else:
        prefixes = "to_tsquery('simple', '')"
    text = bind(" ".join(words))
    configs = {TEXT_CONFIGS.get(language.split("-")[0]) for language in query.languages}
    configs.discard(None)
    configs = sorted(configs) if query.languages else _default_configs(query.text)
    alternatives = [prefixes] + [
        f"plainto_tsquery('{config}', directory_unaccent({text}))" for config in configs
    ]
    return "(" + " || ".join(alternatives) + ")"


def _tag_fold(column: str) -> str:
    """A tag as tags are compared: case aside, and either sigma the same (FINAL_SIGMA)."""
    return f"translate(lower({column}), '{FINAL_SIGMA}', '{SIGMA}')"


def _where(query: SearchQuery, bind: _Params) -> str:
    """Everything that selects ads, shared by the hits and the facets."""
    visible = "ads.visibility = 'public'"
    if query.viewer_portal_id is not None:
        visible = f"({visible} OR ads.portal_id = {bind(query.viewer_portal_id)})"
    # Portals as arrays computed once per statement, not a join: joined, the planner
    # sorted all ads in a radius before taking the nearest, instead of reading them
    # nearest first and stopping at the page's end. Suspended portals are few, and
    # `<> ALL` keeps the planner from scanning an index for the many active ones.
    conditions = [
        visible,
        "ads.expires_at > now()",
        "ads.portal_id <> ALL(ARRAY(SELECT id FROM portals WHERE status <> 'active'))",
    ]
    if query.viewer_portal_id is not None:
        # The communities a block stands between the viewer's and, either way: their
        # members cannot talk (services/relay.py), so their ads are no finds for it.
        viewer = bind(query.viewer_portal_id)
        conditions.append(
            "ads.portal_id <> ALL(ARRAY("
            f"SELECT blocked_portal_id FROM portal_blocks WHERE blocker_portal_id = {viewer} "
            "UNION ALL "
            f"SELECT blocker_portal_id FROM portal_blocks WHERE blocked_portal_id = {viewer}))"
        )
    if query.portals:
        conditions.append(
            "ads.portal_id = ANY(ARRAY(SELECT id FROM portals "
            f"WHERE slug = ANY({bind(list(query.portals))})))"
        )
    if not query.includes_hidden:
        conditions.append("ads.location IS NOT NULL")
    if query.radius_km is not None:
        conditions.append(
            f"ST_DWithin(ads.location, {_point(query, bind)}, {bind(query.radius_km * 1000.0)}, false)"
        )
    if query.bbox is not None:
        south, north = bind(query.bbox.south), bind(query.bbox.north)
        boxes = [
            f"ST_Intersects(ads.location_box, "
            f"ST_MakeEnvelope({bind(west)}, {south}, {bind(east)}, {north}, 4326))"
            for west, east in query.bbox.lon_ranges()
        ]
        conditions.append("(" + " OR ".join(boxes) + ")")
    if query.text is not None:
        # Typos: the query is close to some run of words of the title or tags.
        conditions.append(
            f"(ads.search_vector @@ {_text_query(query, bind)} "
            f"OR directory_unaccent({bind(_folded(query.text))}) <%% ads.search_words)"
        )
    if query.kinds:
        conditions.append(f"ads.kind = ANY({bind([kind.value for kind in query.kinds])})")
    if query.categories:
        conditions.append(f"ads.category = ANY({bind(list(query.categories))})")
    if query.tags:
        # lower() makes a capital sigma the medial one (U+03C3), where lower case ends a
        # word with the final one (U+03C2): both sides take U+03C3 for either, so that a
        # tag in capitals and the same in lower case are one tag, as the words of q are.
        conditions.append(
            f"EXISTS (SELECT 1 FROM unnest(ads.tags) AS tag WHERE {_tag_fold('tag')} = ANY(ARRAY("
            f"SELECT {_tag_fold('wanted')} "
            f"FROM unnest({bind(list(query.tags))}::text[]) AS wanted)))"
        )
    if query.currencies:
        conditions.append(f"ads.currencies && {bind(list(query.currencies))}::varchar[]")
    if query.languages:
        primary = [code for code in query.languages if "-" not in code]
        conditions.append(
            f"(lower(ads.language) = ANY({bind(list(query.languages))}) "
            f"OR split_part(lower(ads.language), '-', 1) = ANY({bind(primary)}))"
        )
    if query.updated_since is not None:
        conditions.append(f"ads.updated_at >= {bind(query.updated_since)}")
    if query.has_price is not None:
        conditions.append(f"ads.price_amount IS {'NOT ' if query.has_price else ''}NULL")
    if query.payable is not None:
        # Payable: an account on the ad, and a ledger registered by its portal.
        payable = (
            "(ads.ledger_account IS NOT NULL AND ads.portal_id = ANY(ARRAY("
            "SELECT id FROM portals WHERE ledger_url IS NOT NULL)))"
        )
        conditions.append(payable if query.payable else f"NOT {payable}")
    if query.price is not None:
        conditions.append(f"ads.price_currency = {bind(query.price.currency)}")
        if query.price.minimum is not None:
            conditions.append(f"ads.price_amount >= {bind(query.price.minimum)}")
        if query.price.maximum is not None:
            conditions.append(f"ads.price_amount <= {bind(query.price.maximum)}")
    return "\n  AND ".join(conditions)


def hits_sql(query: SearchQuery) -> tuple[str, dict]:
    """One page of hits (one more than the limit, to know whether another follows),
    each with its distance (or NULL) and its sort value."""
    bind = _Params()
    where = _where(query, bind)
    distance = f"(ads.location <-> {_point(query, bind)})" if query.point is not None else None
    after = query.after
    nearest = ""
    if query.sort is Sort.DISTANCE:
        sort_value = distance
        order = f"{distance}, ads.id"
        if after is not None:
            where += (
                f"\n  AND ({distance}, ads.id) > ({bind(after.value)}::float8, {bind(after.ad_id)})"
            )
        nearest, within = _within_nearest(query, bind, where)
        where += within
    elif query.sort is Sort.RELEVANCE:
        sort_value = (
            f"(ts_rank_cd(ads.search_vector, {_text_query(query, bind)})::float8 "
            f"+ word_similarity(directory_unaccent({bind(_folded(query.text))}), "
            "ads.search_words)::float8)"
        )
        order = f"{sort_value} DESC, ads.id"
        if after is not None:
            value = bind(after.value)
            where += (
                f"\n  AND ({sort_value} < {value}::float8 "
                f"OR ({sort_value} = {value}::float8 AND ads.id > {bind(after.ad_id)}))"
            )
    else:
        sort_value = "ads.updated_at"
        order = "ads.updated_at DESC, ads.id DESC"
        if after is not None:
            moment = bind(datetime.fromisoformat(after.value))
            where += f"\n  AND (ads.updated_at, ads.id) < ({moment}, {bind(after.ad_id)})"
    sql = (
        f"{nearest}SELECT {RECORD_SELECT},\n  {distance or 'NULL::float8'}, {sort_value}\n"
        "FROM ads JOIN portals ON portals.id = ads.portal_id\n"
        f"WHERE {where}\n"
        f"ORDER BY {order}\n"
        f"LIMIT {bind(query.limit + 1)}"
    )
    return sql, bind


def _within_nearest(query: SearchQuery, bind: _Params, where: str) -> tuple[str, str]:
    """Only ads as near as the page's farthest: a condition the GiST index answers.

    An index yields ads nearest first (KNN) only for ORDER BY distance alone, and ties
    must be broken by id (snapped ads share points). Ordered by (distance, id), the
    search read every matching ad and sorted them: 1.2 s for the nearest 20 of a
    million. So a WITH query (run once) first takes limit + 1 matching ads nearest
    first, and the largest of their distances bounds the page: the ads within it, ties
    included, are sorted by (distance, id).

    Any limit + 1 matching ads give a correct bound; the nearer they are, the fewer ads
    the page is sorted from. Within a radius they come from the geography index, whose
    scan the radius bounds. Worldwide they come from the planar index on the same
    points, whose KNN scan took 1 ms where the geography one took 20 ms at a million
    ads: planar order is not distance on the Earth, but the bound stays correct, only
    looser across the antimeridian and near the poles."""
    point = _point(query, bind)
    if query.radius_km is not None:
        nearest_first = f"ads.location <-> {point}"
    else:
        nearest_first = f"ads.location_box <-> {_planar_point(query, bind)}"
    nearest = (
        "WITH reach AS MATERIALIZED (\n"
        "  SELECT max(nearest.distance) AS distance FROM (\n"
        f"    SELECT ads.location <-> {point} AS distance FROM ads\n"
        f"    WHERE {where}\n"
        f"    ORDER BY {nearest_first} LIMIT {bind(query.limit + 1)}) AS nearest\n)\n"
    )
    # The millimetre covers rounding between the two ways of measuring; the second
    # condition is the exact one.
    within = (
        f"\n  AND ST_DWithin(ads.location, {point}, (SELECT distance FROM reach) + 0.001, false)"
        f"\n  AND (ads.location <-> {point}) <= (SELECT distance FROM reach)"
    )
    return nearest, within


# --- facets -----------------------------------------------------------------------------

FACET_COUNTS = {
    Facet.KIND: "SELECT 'kind', kind::text, count(*) FROM hits GROUP BY 2",
    Facet.CATEGORY: "SELECT 'category', category::text, count(*) FROM hits GROUP BY 2",
    Facet.PORTAL: "SELECT 'portal', slug::text, count(*) FROM hits GROUP BY 2",
    Facet.CURRENCY: "SELECT 'currency', currency::text, count(*) "
    "FROM hits, unnest(hits.currencies) AS currency GROUP BY 2",
}


def facets_sql(query: SearchQuery) -> tuple[str, dict]:
    """Counts over the whole result set, not just the page."""
    bind = _Params()
    counts = ["SELECT 'total', NULL::text, count(*) FROM hits"]
    counts += [FACET_COUNTS[facet] for facet in query.facets]
    sql = (
        # MATERIALIZED: the matching ads are found once and read by every count.
        "WITH hits AS MATERIALIZED (\n"
        "  SELECT ads.category, ads.kind, ads.currencies, portals.slug\n"
        "  FROM ads JOIN portals ON portals.id = ads.portal_id\n"
        f"  WHERE {_where(query, bind)}\n)\n" + "\nUNION ALL ".join(counts)
    )
    return sql, bind


def _facets(query: SearchQuery, rows) -> Facets:
    counts: dict[Facet, dict[str, int]] = {facet: {} for facet in query.facets}
    total = 0
    for facet, value, count in rows:
        if facet == "total":
            total = count
        else:
            counts[Facet(facet)][value] = count
    if Facet.CATEGORY in counts:
        # A group's count includes its children's ads.
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
