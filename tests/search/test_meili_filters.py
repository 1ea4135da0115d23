"""Hostile values in the Meilisearch engine's filters, read back as Meilisearch reads
them: whatever a client sends stays one value inside its condition, and means itself.

Tags are the one free text among the search's filters (any single line of up to 40
characters); the others are refused by the API unless they have a plain shape (slugs,
currency codes, language tags, known categories). Every filter is checked with the same
hostile values anyway, so a looser validation later cannot open a way out.

`read_condition` follows Meilisearch's filter parser from v1.4 on (its
filter-parser/src/value.rs): a quoted value ends at the first quote that no backslash
escapes, then each \\" becomes ", then the `unescaper` crate resolves the remaining
escapes (\\\\ -> \\; it refuses any it does not know, and so does this reader). Before
v1.4 (and in 1.3.x before 1.3.4) the last step did not exist: a value holding a
backslash reached Meilisearch with it doubled (meilisearch/meilisearch#4034, #4038).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from directory.geo import Point
from directory.models import AdKind
from directory.search import PriceRange, SearchQuery, Sort, SortKey, meili

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r", "0": "\0"}

HOSTILE = [
    '"',
    "\\",
    '\\"',
    "ends with a backslash \\",
    '"] OR portal IN ["',
    '") OR (has_location = false',
    'x" OR expires_at_ts > 0 OR tags = "y',
    "' OR 1 = 1 OR '",
    "\\u{41}",
    "\\n",
    "AND",
    "NOT",
    "_geoRadius(0, 0, 1)",
    "[a, b]",
    "tab\tand space",
    "ünïcödé ✓",
]


def read_value(text: str, start: int) -> tuple[str, int]:
    """The double-quoted value starting at text[start] (a quote), as Meilisearch reads
    it, and the index after its closing quote."""
    assert text[start] == '"'
    index = start + 1
    while True:
        if index >= len(text):
            raise AssertionError(f"no closing quote in {text!r}")
        if text[index] == "\\":
            if index + 1 >= len(text):
                raise AssertionError(f"a lone backslash ends {text!r}")
            index += 2
            continue
        if text[index] == '"':
            break
        index += 1
    raw = text[start + 1 : index].replace('\\"', '"')
    value, position = [], 0
    while position < len(raw):
        if raw[position] == "\\":
            escaped = raw[position + 1 : position + 2]
            if escaped not in ESCAPES:
                raise AssertionError(f"Meilisearch refuses the escape \\{escaped} in {text!r}")
            value.append(ESCAPES[escaped])
            position += 2
        else:
            value.append(raw[position])
            position += 1
    return "".join(value), index + 1


def read_condition(condition: str) -> tuple[str, list[str]]:
    """The condition with each quoted value replaced by $, and the values."""
    skeleton, values, index = [], [], 0
    while index < len(condition):
        if condition[index] == '"':
            value, index = read_value(condition, index)
            skeleton.append("$")
            values.append(value)
        else:
            assert condition[index] not in "'\\", f"unquoted {condition[index]} in {condition!r}"
            skeleton.append(condition[index])
            index += 1
    return "".join(skeleton), values


def filter_of(**query) -> list[str]:
    built = meili.query_filter(SearchQuery(**query), now=NOW)
    return built[1:]  # less the expiry, which every search has


@pytest.mark.parametrize("value", HOSTILE)
def test_a_quoted_value_reads_back_as_itself(value):
    assert read_condition(meili.quote(value)) == ("$", [value])


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize(
    ("field", "attribute"),
    [
        ("tags", "tags"),
        ("categories", "category"),
        ("currencies", "currencies"),
        ("portals", "portal"),
    ],
)
def test_a_hostile_list_value_stays_one_value_of_its_condition(field, attribute, value):
    # Two values, so that one could also try to close the list early.
    (condition,) = filter_of(**{field: (value, "plain")})

    expected = [value.lower(), "plain"] if field == "tags" else [value, "plain"]
    assert read_condition(condition) == (f"{attribute} IN [$, $]", expected)


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_language_stays_in_both_of_its_conditions(value):
    (condition,) = filter_of(languages=(value,))

    skeleton, values = read_condition(condition)
    if "-" in value:
        assert (skeleton, values) == ("language IN [$]", [value])
    else:
        assert skeleton == "(language IN [$] OR language_primary IN [$])"
        assert values == [value, value]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_price_currency_stays_one_value(value):
    conditions = filter_of(price=PriceRange(value, Decimal("1"), Decimal("2.5")))

    assert [read_condition(condition) for condition in conditions] == [
        ("price_currency = $", [value]),
        ("price_amount >= 1", []),
        ("price_amount <= 2.5", []),
    ]


def test_every_condition_of_a_full_query_reads_back_with_only_its_own_values():
    """All filters at once, each with a hostile value: the skeleton holds no client text."""
    query = {
        "point": Point(50.85, 4.35),
        "radius_km": 10.0,
        "kinds": (AdKind.OFFER,),
        "categories": (HOSTILE[4],),
        "tags": (HOSTILE[5],),
        "currencies": (HOSTILE[6],),
        "languages": (HOSTILE[7],),
        "portals": (HOSTILE[2],),
        "has_price": True,
        "payable": False,
        "price": PriceRange(HOSTILE[1], None, Decimal("3")),
    }
    skeletons, values = [], []
    for condition in filter_of(**query):
        skeleton, found = read_condition(condition)
        skeletons.append(skeleton)
        values += found

    assert skeletons == [
        "has_location = true",
        skeletons[1],  # the radius: numbers only
        "kind IN [$]",
        "category IN [$]",
        "tags IN [$]",
        "currencies IN [$]",
        "(language IN [$] OR language_primary IN [$])",
        "portal IN [$]",
        "has_price = true",
        "payable = false",
        "price_currency = $",
        "price_amount <= 3",
    ]
    assert re.fullmatch(r"_geoRadius\(50\.85, 4\.35, [0-9.]+\)", skeletons[1])
    assert values == [
        "offer",
        HOSTILE[4],
        HOSTILE[5].lower(),
        HOSTILE[6],
        HOSTILE[7],
        HOSTILE[7],
        HOSTILE[2],
        HOSTILE[1],
    ]


@pytest.mark.parametrize(
    ("sort", "value"),
    [
        (Sort.RECENT, "2026-11-20T08:30:00.123456+00:00"),
        (Sort.DISTANCE, 1234.5),
        (Sort.DISTANCE, 1e308),  # a cursor made up by a client: still plain numbers
    ],
)
def test_cursor_conditions_hold_numbers_only(sort, value):
    """A cursor is the client's to send back, and to alter: its values reach the filter
    only as numbers (an ISO time turned into microseconds, metres, an id's parts)."""
    point = Point(50.85, 4.35)
    key = SortKey(value, uuid.UUID("ffffffff-ffff-7fff-bfff-ffffffffffff"))
    if sort is Sort.RECENT:
        extra = [meili.recent_after(key)]
    else:
        extra = meili.nearest_after(point, key, Point(50.86, 4.36))
    params = meili.search_params(
        SearchQuery(point=point, sort=sort), now=NOW, after=extra, limit=21
    )

    for condition in params["filter"]:
        assert read_condition(condition)[1] == []
        assert re.fullmatch(r"[\w\s().,=<>\-\[\]]+", condition), condition
        assert "e+" not in condition and "inf" not in condition.lower()
