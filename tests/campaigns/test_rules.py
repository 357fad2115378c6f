"""The rules parser: typed per kind, integers only for money, errors name the field path."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from incentive.campaigns.schemas import KINDS, RebateRules, rules_adapter
from incentive.campaigns.service import parse_rules
from incentive.errors import InvalidField
from tests.campaigns.conftest import ASSETS, RULES

bp = st.integers(min_value=0, max_value=10_000)
fen = st.integers(min_value=1, max_value=10**12)


@given(user=bp, merchant=bp, min_payment=fen, cap=fen)
def test_valid_rebate_rules_round_trip(
    user: int, merchant: int, min_payment: int, cap: int
) -> None:
    raw = {
        "user_rebate_bp": user,
        "merchant_rebate_bp": merchant,
        "min_payment_fen": min_payment,
        "max_rebate_fen": cap,
    }
    if user + merchant == 0:
        with pytest.raises(InvalidField):
            parse_rules("rebate", raw)
        return
    rules = parse_rules("rebate", raw)
    assert isinstance(rules, RebateRules)
    assert rules_adapter.validate_python(rules.model_dump(mode="json")) == rules


@given(
    field=st.sampled_from(["user_rebate_bp", "merchant_rebate_bp", "max_rebate_fen"]),
    value=st.one_of(
        st.floats(allow_nan=True),
        st.text(max_size=5),
        st.booleans(),
        st.integers(max_value=-1),
        st.integers(min_value=10**13),
        st.none(),
    ),
)
def test_non_integer_or_out_of_range_money_is_refused_by_name(field: str, value: Any) -> None:
    raw = {**RULES["rebate"], field: value}
    with pytest.raises(InvalidField) as caught:
        parse_rules("rebate", raw)
    assert caught.value.field == f"rules.{field}"


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_rules_sample_and_budget_asset(kind: str) -> None:
    rules = parse_rules(kind, RULES[kind])
    assert rules.kind == kind
    assert rules.budget_asset == ASSETS[kind]


def test_all_errors_listed_with_paths() -> None:
    with pytest.raises(InvalidField) as caught:
        parse_rules("flash_sale", {"sku": "", "price_fen": 0})
    fields = {e["field"] for e in caught.value.extra["errors"]}
    assert {"rules.sku", "rules.price_fen", "rules.item_name", "rules.total_stock"} <= fields
