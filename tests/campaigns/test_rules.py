"""The rules parser: typed per registered kind, errors name the field path."""

from __future__ import annotations

import pytest

from incentive.campaigns.kinds import get_kind, kind_names, parse_rules
from incentive.errors import InvalidField
from tests.campaigns.conftest import ASSETS, RULES


@pytest.mark.parametrize("kind", kind_names())
def test_every_kind_has_rules_sample_and_budget_asset(kind: str) -> None:
    rules = parse_rules(kind, RULES[kind])
    assert rules.kind == kind
    assert get_kind(kind).budget_asset(rules) == ASSETS[kind]


def test_all_errors_listed_with_paths() -> None:
    with pytest.raises(InvalidField) as caught:
        parse_rules("flash_sale", {"sku": "", "price_fen": 0})
    fields = {e["field"] for e in caught.value.extra["errors"]}
    assert {"rules.sku", "rules.price_fen", "rules.item_name", "rules.total_stock"} <= fields
