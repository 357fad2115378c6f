"""Each processing rule against its contract (rules.py's docstring), for any input hypothesis
finds, and its parameters refused by name. Regression examples of bugs found are marked."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from incentive.data_models.rules import (
    DIRECTIVES,
    HOST_ZONES,
    RULE_TYPES,
    Concatenate,
    DateFormat,
    Default,
    FenToYuan,
    Lookup,
    Mask,
    Rename,
    Rule,
    RuleFailed,
)

RULE: TypeAdapter[Any] = TypeAdapter(Rule)
ZONES = sorted(available_timezones() - HOST_ZONES)
# text a model may hold: no control characters, no lone surrogates (kit.text.Line)
line = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=20)
finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), finite, line)


def rule(**raw: Any) -> Any:
    return RULE.validate_python(raw)


def refused(raw: dict[str, Any], param: str) -> str:
    """The message of the error on ``param``: the rule is refused naming it."""
    with pytest.raises(ValidationError) as caught:
        RULE.validate_python(raw)
    errors = caught.value.errors()
    named = [e for e in errors if e["loc"][1:2] == (param,)]
    assert named, errors
    return str(named[0]["msg"])


def text_of(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value.isoformat() if isinstance(value, datetime) else str(value)


# --------------------------------------------------------------------------- fen_to_yuan


@given(st.integers() | st.integers(min_value=-(10**400), max_value=10**400))
@example(10**30 + 1)  # regression: a Decimal rounded to 28 digits gave "1000…000.00"
@example(-1)
@example(-(2**63))
def test_fen_to_yuan_is_exact_for_any_integer(fen: int) -> None:
    text = FenToYuan(type="fen_to_yuan").apply(fen, {}, {})
    assert re.fullmatch(r"-?(0|[1-9][0-9]*)\.[0-9]{2}", text), text
    with localcontext() as ctx:
        ctx.prec = len(text) + 5
        assert Decimal(text) * 100 == fen
    assert text.startswith("-") == (fen < 0)


@pytest.mark.parametrize("value", [True, 1.5, "100", Decimal(1), [1]])
def test_fen_to_yuan_takes_integers_only(value: Any) -> None:
    with pytest.raises(RuleFailed):
        FenToYuan(type="fen_to_yuan").apply(value, {}, {})


def test_fen_to_yuan_of_null_and_of_too_many_digits() -> None:
    assert FenToYuan(type="fen_to_yuan").apply(None, {}, {}) is None
    with pytest.raises(RuleFailed):  # regression: ValueError of the int-to-text limit
        FenToYuan(type="fen_to_yuan").apply(10**5000, {}, {})


# --------------------------------------------------------------------------- date_format

directive = st.sampled_from(sorted(DIRECTIVES)).map(lambda d: "%" + d)
literal = line.map(lambda t: t.replace("%", ""))
formats = (
    st.lists(directive | literal, min_size=1, max_size=8)
    .map("".join)
    .filter(lambda f: 1 <= len(f) <= 64)
)


def reference(local: datetime, fmt: str) -> str:
    """The format computed from the ISO text and the calendar, not by strftime."""
    iso = local.isoformat(timespec="microseconds")
    offset = local.utcoffset() or timedelta(0)
    sign, left = ("-", -offset) if offset < timedelta(0) else ("+", offset)
    minutes, seconds = divmod(int(left.total_seconds()), 60)
    zone = f"{sign}{minutes // 60:02d}{minutes % 60:02d}"
    if seconds or left.microseconds:
        zone += f"{seconds:02d}" + (f".{left.microseconds:06d}" if left.microseconds else "")
    year, week, weekday = local.isocalendar()
    parts = {
        "Y": iso[0:4],
        "m": iso[5:7],
        "d": iso[8:10],
        "H": iso[11:13],
        "M": iso[14:16],
        "S": iso[17:19],
        "f": iso[20:26],
        "z": zone,
        "j": f"{(local.date() - date(local.year, 1, 1)).days + 1:03d}",
        "G": f"{year:04d}",
        "V": f"{week:02d}",
        "u": str(weekday),
        "w": str(weekday % 7),
        "%": "%",
    }
    return re.sub("%(.)", lambda m: parts[m.group(1)], fmt)


@given(
    value=st.datetimes(timezones=st.none() | st.timezones()),
    fmt=formats,
    zone=st.sampled_from(ZONES),
)
@example(datetime(1, 1, 1), "%Y-%G", "UTC")  # noqa: DTZ001  (naive: read as UTC); was "1-1"
@example(datetime(1, 1, 1, tzinfo=UTC), "%Y", "America/New_York")  # regression: Overflow
@example(datetime(9999, 12, 31, 23, tzinfo=UTC), "%Y", "Asia/Shanghai")
@example(datetime(1900, 1, 1, tzinfo=UTC), "%z", "Asia/Shanghai")  # +080543, local mean time
def test_date_format_equals_the_reference(value: datetime, fmt: str, zone: str) -> None:
    made = DateFormat(type="date_format", format=fmt, time_zone=zone)
    instant = value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        local = instant.astimezone(ZoneInfo(zone))
    except OverflowError:
        with pytest.raises(RuleFailed):
            made.apply(value, {}, {})
        return
    got = made.apply(value, {}, {})
    assert got == reference(local, fmt)
    assert made.apply(value.isoformat(), {}, {}) == got  # ISO-8601 text reads the same
    if local.year >= 1000 and fmt.isascii():  # where the C library agrees
        assert got == local.strftime(fmt)


@pytest.mark.parametrize("value", ["yesterday", "2024-13-01", 1700000000, 1.5, date(2024, 1, 1)])
def test_date_format_refuses_what_is_no_date_and_time(value: Any) -> None:
    with pytest.raises(RuleFailed):
        DateFormat(type="date_format").apply(value, {}, {})
    assert DateFormat(type="date_format").apply(None, {}, {}) is None


@pytest.mark.parametrize(
    "fmt", ["%c", "%x", "%X", "%a", "%A", "%b", "%B", "%p", "%Z", "%-d", "%Y%", "%", "%%%"]
)
def test_date_format_refuses_directives_beyond_its_set_by_name(fmt: str) -> None:
    message = refused({"type": "date_format", "format": fmt}, "format")
    assert "directives not allowed" in message


@pytest.mark.parametrize("fmt", ["a\x00b%Y", "%Y\n", "\ud800%Y", "", "%Y" * 33])
def test_date_format_refuses_control_characters_and_bad_lengths(fmt: str) -> None:
    # regression: a NUL cut the text there ("a\x00b%Y" gave "a"); a line break was taken
    refused({"type": "date_format", "format": fmt}, "format")


@given(st.text(max_size=64).filter(lambda z: z not in ZONES))
@example("localtime")  # regression: the host's zone, not an IANA name
@example("posixrules")
@example("../etc/passwd")
@example("zone.tab")
@example("America")
def test_date_format_refuses_unknown_zones_by_name(zone: str) -> None:
    refused({"type": "date_format", "time_zone": zone}, "time_zone")


# --------------------------------------------------------------------------- enum_map


@given(
    mapping=st.dictionaries(line, scalars, min_size=1, max_size=5),
    value=scalars,
    default=scalars,
    strict=st.booleans(),
)
def test_enum_map_maps_known_values_and_defaults_or_fails_on_others(
    mapping: dict[str, Any], value: Any, default: Any, strict: bool
) -> None:
    made = rule(type="enum_map", mapping=mapping, default=default, strict=strict)
    if value is None:  # no value: the default, never a failure
        assert made.apply(value, {}, {}) == default
    elif text_of(value) in mapping:
        assert made.apply(value, {}, {}) == mapping[text_of(value)]
    elif strict:
        with pytest.raises(RuleFailed):
            made.apply(value, {}, {})
    else:
        assert made.apply(value, {}, {}) == default


def test_enum_map_reads_booleans_and_numbers_as_their_text() -> None:
    made = rule(type="enum_map", mapping={"true": "Y", "false": "N", "1": "one"}, strict=True)
    assert [made.apply(v, {}, {}) for v in (True, False, 1)] == ["Y", "N", "one"]


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ({"mapping": {}}, "mapping"),
        ({"mapping": {str(i): i for i in range(1001)}}, "mapping"),
        ({"mapping": {"x" * 201: 1}}, "mapping"),
        ({"mapping": {"a": float("nan")}}, "mapping"),  # regression: NaN is no JSON
        ({"mapping": {"a": 1}, "default": float("inf")}, "default"),
        ({"mapping": {"a": 1}, "strict": "yes"}, "strict"),
        ({"mapping": {"a": 1}, "strict": 1}, "strict"),
        ({"mapping": {"a": [1]}}, "mapping"),
    ],
)
def test_enum_map_parameters_are_refused_by_name(raw: dict[str, Any], param: str) -> None:
    refused({"type": "enum_map", **raw}, param)


# --------------------------------------------------------------------------- mask


@given(
    value=st.text(max_size=80) | st.integers(),
    keep_start=st.integers(0, 32),
    keep_end=st.integers(0, 32),
    char=st.sampled_from("*#xX•"),
)
def test_mask_keeps_length_and_the_kept_ends_and_reveals_no_more(
    value: Any, keep_start: int, keep_end: int, char: str
) -> None:
    text = str(value)
    out = Mask(type="mask", keep_start=keep_start, keep_end=keep_end, char=char).apply(
        value, {}, {}
    )
    assert len(out) == len(text)
    if len(text) <= keep_start + keep_end:
        assert out == char * len(text)
    else:
        middle = len(text) - keep_start - keep_end
        assert out == text[:keep_start] + char * middle + text[len(text) - keep_end :]
    assert sum(a == b != char for a, b in zip(out, text, strict=True)) <= keep_start + keep_end


def test_mask_of_null_bools_and_json_values() -> None:
    made = Mask(type="mask", keep_start=1, keep_end=1)
    assert made.apply(None, {}, {}) is None
    assert made.apply(True, {}, {}) == "t**e"
    # regression: a JSON value was masked as Python's repr ("{'a': 1}")
    assert made.apply({"b": 1, "a": [2]}, {}, {}) == "{" + "*" * len('"a":[2],"b":1') + "}"


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ({"keep_start": -1}, "keep_start"),
        ({"keep_start": 33}, "keep_start"),
        ({"keep_start": True}, "keep_start"),
        ({"keep_start": "1"}, "keep_start"),
        ({"keep_end": 1.0}, "keep_end"),
        ({"keep_end": 33}, "keep_end"),
        ({"char": ""}, "char"),
        ({"char": "**"}, "char"),
        ({"char": "\x00"}, "char"),  # regression: PostgreSQL stores no NUL
        ({"char": "\n"}, "char"),
    ],
)
def test_mask_parameters_are_refused_by_name(raw: dict[str, Any], param: str) -> None:
    refused({"type": "mask", **raw}, param)


# --------------------------------------------------------------------------- default


@given(value=scalars | st.just(""), fallback=scalars)
def test_default_fills_null_and_empty_text_only(value: Any, fallback: Any) -> None:
    got = Default(type="default", value=fallback).apply(value, {}, {})
    assert got == (fallback if value is None or value == "" else value)


def test_default_needs_a_finite_value() -> None:
    refused({"type": "default"}, "value")
    refused({"type": "default", "value": float("nan")}, "value")


# --------------------------------------------------------------------------- concatenate

names = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)


@given(
    value=scalars,
    record=st.dictionaries(names, scalars, max_size=6),
    fields=st.lists(names, min_size=1, max_size=10),
    separator=line.filter(lambda s: len(s) <= 10),
)
def test_concatenate_joins_the_texts_skipping_nulls(
    value: Any, record: dict[str, Any], fields: list[str], separator: str
) -> None:
    made = Concatenate(type="concatenate", fields=fields, separator=separator)
    parts = [value, *(record.get(f) for f in fields)]
    assert made.apply(value, record, {}) == separator.join(
        text_of(p) for p in parts if p is not None
    )
    assert made.reads() == tuple(fields)


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ({"fields": []}, "fields"),
        ({"fields": [f"f{i}" for i in range(11)]}, "fields"),
        ({"fields": ["Bad-Name"]}, "fields"),
        ({"fields": ["a"], "separator": "\n"}, "separator"),
        ({"fields": ["a"], "separator": "x" * 11}, "separator"),
    ],
)
def test_concatenate_parameters_are_refused_by_name(raw: dict[str, Any], param: str) -> None:
    refused({"type": "concatenate", **raw}, param)


# --------------------------------------------------------------------------- lookup, rename


@given(
    related=st.dictionaries(st.tuples(st.just("coupon"), line), st.dictionaries(names, scalars)),
    value=st.none() | line | st.integers(),
)
def test_lookup_reads_the_related_records_field_or_null(
    related: dict[tuple[str, str], dict[str, Any]], value: Any
) -> None:
    made = Lookup(type="lookup", source="coupon", field="state")
    expected = None if value is None else related.get(("coupon", str(value)), {}).get("state")
    assert made.apply(value, {}, related) == expected
    assert made.looks_up() == ("coupon", "state")


@given(scalars)
def test_rename_keeps_the_value(value: Any) -> None:
    assert Rename().apply(value, {}, {}) == value


@pytest.mark.parametrize("type_", RULE_TYPES)
def test_unknown_parameters_are_refused_by_name(type_: str) -> None:
    message = refused({"type": type_, "surplus": 1}, "surplus")
    assert "not permitted" in message


def test_an_unknown_rule_type_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        RULE.validate_python({"type": "eval"})
    assert caught.value.errors()[0]["type"] == "union_tag_invalid"
