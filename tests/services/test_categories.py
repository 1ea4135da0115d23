"""Which categories a search for a category matches."""

from __future__ import annotations

import pytest

from directory.errors import InvalidInput
from directory.services.categories import expand_categories

CODES = frozenset({"food", "food.baked", "food.produce", "foodstuff", "home", "home.repairs"})


def test_a_group_stands_for_itself_and_its_children_only():
    assert expand_categories(CODES, ("food",)) == ("food", "food.baked", "food.produce")
    assert expand_categories(CODES, ("food",)) == ("food", "food.baked", "food.produce")
    assert expand_categories(CODES, ("home.repairs", "home")) == ("home.repairs", "home")


def test_an_unknown_code_is_refused_every_time_not_once():
    for _ in range(2):
        with pytest.raises(InvalidInput) as refused:
            expand_categories(CODES, ("food", "caviar"))
        assert refused.value.field == "category"


def test_another_taxonomy_gets_its_own_answer():
    assert expand_categories(frozenset({"food"}), ("food",)) == ("food",)
