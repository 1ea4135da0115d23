"""The published category taxonomy (its rows come from migrations)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from directory.errors import InvalidInput
from directory.models import Category


@dataclass
class CategoryNode:
    code: str
    domain: str
    name: str
    children: list[CategoryNode] = field(default_factory=list)


def category_tree(session: Session) -> list[CategoryNode]:
    groups: dict[str, CategoryNode] = {}
    children: list[Category] = []
    for category in session.scalars(select(Category).order_by(Category.position)):
        if category.parent_code is None:
            groups[category.code] = CategoryNode(category.code, category.domain, category.name)
        else:
            children.append(category)
    for child in children:
        groups[child.parent_code].children.append(
            CategoryNode(child.code, child.domain, child.name)
        )
    return list(groups.values())


def category_codes(session: Session) -> set[str]:
    return set(session.scalars(select(Category.code)))


def require_known_category(
    codes: set[str], code: str, *, field: str = "category", location: str = "json"
) -> None:
    if code not in codes:
        groups = sorted(c for c in codes if "." not in c)
        raise InvalidInput(
            f"unknown category {code!r}; use a code from GET /v1/categories, "
            f"a group ({', '.join(groups)}) or one of its children such as food.produce",
            field=field,
            code="unknown_category",
            details={"location": location},
        )


def expand_categories(codes: frozenset[str], requested: tuple[str, ...]) -> tuple[str, ...]:
    """The codes a search for `requested` matches: a group stands for itself and its
    children (an ad may be filed under a group directly)."""
    expanded: dict[str, None] = {}
    for code in requested:
        expanded.update(dict.fromkeys(_matched_by(codes, code)))
    return tuple(expanded)


# Cached: every search by category asks, and finding a group's children scanned the
# whole taxonomy each time. An unknown code raises, which is not cached.
@functools.lru_cache(maxsize=512)
def _matched_by(codes: frozenset[str], code: str) -> tuple[str, ...]:
    require_known_category(codes, code, location="query")
    if "." in code:
        return (code,)
    return (code, *sorted(c for c in codes if c.startswith(code + ".")))
