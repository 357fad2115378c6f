"""The referral kind's rules: the sample is accepted, a broken rule is refused by name."""

from __future__ import annotations

import pytest

from incentive.campaigns.kinds import get_kind, parse_rules
from incentive.errors import InvalidField
from tests.campaigns.conftest import ASSETS, RULES


def test_sample_rules_parse_and_fund_the_right_asset() -> None:
    rules = parse_rules("referral", RULES["referral"])
    assert get_kind("referral").budget_asset(rules) == ASSETS["referral"]


def test_broken_rule_is_named() -> None:
    with pytest.raises(InvalidField) as caught:
        parse_rules("referral", {**RULES["referral"], **{"referrer_reward_points": -1}})
    assert caught.value.field.startswith("rules")
