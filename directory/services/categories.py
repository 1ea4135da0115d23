"""The published category taxonomy (its rows come from migrations)."""

from __future__ import annotations

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


def expand_categories(codes: set[str], requested: tuple[str, ...]) -> tuple[str, ...]:
    """The codes a search for `requested` matches: a group stands for itself and its
    children (an ad may be filed under a group directly)."""
    expanded: dict[str, None] = {}
    for code in requested:
        require_known_category(codes, code, location="query")
        expanded[code] = None
        if "." not in code:
            expanded.update(dict.fromkeys(sorted(c for c in codes if c.startswith(code + "."))))
    return tuple(expanded)
