"""The rebate kind's rules: integers only for money and rates, errors name the field path."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from incentive.campaigns.kinds import parse_rules, stored_rules
from incentive.errors import InvalidField
from incentive.rebates.kind import RebateRules
from tests.campaigns.conftest import RULES

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
    assert stored_rules(rules.model_dump(mode="json")) == rules


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
