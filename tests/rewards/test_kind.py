"""The reward kind's rules: the sample is accepted, a broken rule is refused by name."""

from __future__ import annotations

import pytest

from incentive.campaigns.kinds import get_kind, parse_rules
from incentive.errors import InvalidField
from tests.campaigns.conftest import ASSETS, RULES


def test_sample_rules_parse_and_fund_the_right_asset() -> None:
    rules = parse_rules("reward", RULES["reward"])
    assert get_kind("reward").budget_asset(rules) == ASSETS["reward"]


def test_broken_rule_is_named() -> None:
    with pytest.raises(InvalidField) as caught:
        parse_rules("reward", {**RULES["reward"], **{"rewards": []}})
    assert caught.value.field.startswith("rules")
