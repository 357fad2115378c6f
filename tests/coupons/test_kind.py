"""The coupon kind's rules: the sample is accepted, a broken rule is refused by name."""

from __future__ import annotations

import pytest

from incentive.campaigns.kinds import get_kind, parse_rules
from incentive.errors import InvalidField
from tests.campaigns.conftest import ASSETS, RULES


def test_sample_rules_parse_and_fund_the_right_asset() -> None:
    rules = parse_rules("coupon", RULES["coupon"])
    assert get_kind("coupon").budget_asset(rules) == ASSETS["coupon"]


def test_broken_rule_is_named() -> None:
    with pytest.raises(InvalidField) as caught:
        parse_rules("coupon", {**RULES["coupon"], **{"per_user_limit": 2000}})
    assert caught.value.field.startswith("rules")
