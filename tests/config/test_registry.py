"""The key registry: typed, constrained, defaults validated, definitions unique."""

from __future__ import annotations

from typing import Annotated

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import Field

from incentive.config import keys, live_config, register_key
from incentive.config.cli import parse_value
from incentive.config.errors import InvalidConfigValue, UnknownConfigKey
from incentive.config.registry import get_key
from incentive.flash_sales.keys import flash_sale_flow_open


def test_catalogue_defaults() -> None:
    assert live_config.get("flash_sale.buckets") == 16
    assert live_config.get(keys.POINTS_FILE_BATCH_SIZE) == 5_000
    assert live_config.get("points_file.workers") == 4
    assert live_config.get("flash_sale.flow_control") == {}
    assert flash_sale_flow_open("any-campaign") is True


@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [
        ("flash_sale.buckets", 0, "greater_than_equal"),
        ("flash_sale.buckets", 1025, "less_than_equal"),
        ("flash_sale.buckets", "16", "int_type"),
        ("flash_sale.buckets", True, "int_type"),
        ("flash_sale.buckets", 1.5, "int_type"),
        ("points_file.batch_size", 99, "greater_than_equal"),
        ("points_file.batch_size", 50_001, "less_than_equal"),
        ("points_file.workers", 65, "less_than_equal"),
        ("flash_sale.flow_control", {"c1": "yes"}, "bool_type"),
        ("flash_sale.flow_control", [1], "dict_type"),
    ],
)
def test_invalid_values_name_the_rule(name: str, value: object, rule: str) -> None:
    with pytest.raises(InvalidConfigValue) as info:
        get_key(name).validate(value)
    assert info.value.rule == rule
    assert info.value.field.startswith("value")


def test_unknown_key() -> None:
    with pytest.raises(UnknownConfigKey):
        live_config.get("nope.nothing")


def test_register_is_idempotent_and_rejects_conflicts() -> None:
    first = register_key("test_registry.limit", Annotated[int, Field(ge=1)], 3, "a limit")
    again = register_key("test_registry.limit", Annotated[int, Field(ge=1)], 3, "a limit")
    assert again is first
    with pytest.raises(ValueError, match="another definition"):
        register_key("test_registry.limit", int, 4, "other")
    with pytest.raises(ValueError, match="default"):
        register_key("test_registry.bad_default", Annotated[int, Field(ge=1)], 0, "bad")
    with pytest.raises(ValueError, match="lower_snake_case"):
        register_key("NoDots", int, 1, "bad name")


def test_tuple_key_accepts_json_arrays() -> None:
    key = register_key("test_registry.pair", tuple[int, int], (1, 2), "a pair")
    assert key.validate([3, 4]) == (3, 4)
    assert key.dump((3, 4)) == [3, 4]


@given(st.one_of(st.integers(), st.booleans(), st.none(), st.lists(st.integers(), max_size=3)))
def test_cli_parses_json_values(value: object) -> None:
    import json

    assert parse_value(json.dumps(value)) == value


@given(st.text(alphabet="abcxyz_-", min_size=1))
def test_cli_falls_back_to_plain_strings(text: str) -> None:
    assert parse_value(text) == text
