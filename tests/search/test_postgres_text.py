"""How the PostgreSQL engine reads the words of `q`."""

from __future__ import annotations

from directory.search import SearchQuery, Sort
from directory.search.postgres import (
    DEFAULT_QUERY_CONFIGS,
    _default_configs,
    facets_sql,
    hits_sql,
)


def test_a_word_repeated_is_read_once():
    # Ranking grew steeply with repeated words: "d d d … d" (100 of them, within the
    # 200 characters q takes) held a database core for 50 s per anonymous request.
    once = SearchQuery(text="d pain", sort=Sort.RELEVANCE)
    repeated = SearchQuery(text=" ".join(["d D pain"] * 30), sort=Sort.RELEVANCE)

    for build in (hits_sql, facets_sql):
        (sql, params), (repeated_sql, repeated_params) = build(once), build(repeated)
        assert (repeated_sql, repeated_params) == (sql, params)


def test_a_query_is_stemmed_in_the_default_languages_and_those_of_its_scripts():
    # Stemming in every language cost a search 3 to 6 times as much: only the scripts
    # the query is written in add theirs.
    assert _default_configs("vélo garden") == DEFAULT_QUERY_CONFIGS
    assert _default_configs("старые книги") == (*DEFAULT_QUERY_CONFIGS, "russian", "serbian")
    assert _default_configs("βιβλία και книги") == (
        *DEFAULT_QUERY_CONFIGS,
        "greek",
        "russian",
        "serbian",
    )
