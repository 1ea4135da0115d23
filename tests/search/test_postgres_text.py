"""How the PostgreSQL engine reads the words of `q`."""

from __future__ import annotations

from directory.search import SearchQuery, Sort
from directory.search.postgres import facets_sql, hits_sql


def test_a_word_repeated_is_read_once():
    # Ranking grew steeply with repeated words: "d d d … d" (100 of them, within the
    # 200 characters q takes) held a database core for 50 s per anonymous request.
    once = SearchQuery(text="d pain", sort=Sort.RELEVANCE)
    repeated = SearchQuery(text=" ".join(["d D pain"] * 30), sort=Sort.RELEVANCE)

    for build in (hits_sql, facets_sql):
        (sql, params), (repeated_sql, repeated_params) = build(once), build(repeated)
        assert (repeated_sql, repeated_params) == (sql, params)
