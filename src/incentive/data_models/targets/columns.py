"""JSON values to a SQL column's type, where that is a plain conversion.

A record's values are JSON (text, numbers, booleans, null, lists and objects). A column
takes them as:

- text (``VARCHAR``, ``TEXT``, ``CHAR``, enums): text as it is; anything else as its
  canonical JSON (``12``, ``true``, ``{"a":1}``);
- ``JSON`` / ``JSONB``: the value as it is (MariaDB's ``JSON`` is ``LONGTEXT``: text);
- integers: integers, integral numbers and text of an integer; booleans: booleans, 0 and 1,
  and ``true`` / ``false``; decimals and floats: numbers and text of a number;
- timestamps, dates and times: ISO-8601 text. A timestamp without a zone is UTC: a column
  with a zone (``timestamptz``) gets it, one without gets UTC wall-clock time;
- UUIDs: text of a UUID; any other type: the value as it is.

``null`` is ``NULL`` everywhere. A value that does not convert raises ``ValueError`` or
``TypeError`` naming what it is; the writer refuses the rows with the column's name.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Column
from sqlalchemy import types as sqltypes

from incentive.data_models.records import canonical_json

Converter = Callable[[Any], Any]


def _what(value: Any) -> str:
    return f"a JSON {type(value).__name__}"


def _same(value: Any) -> Any:
    return value


def _text(value: Any) -> Any:
    return value if isinstance(value, str) else canonical_json(value)


def _integer(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    raise ValueError(f"{_what(value)} that is not an integer")


def _boolean(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | str) and str(value).lower() in ("0", "1", "true", "false"):
        return str(value).lower() in ("1", "true")
    raise ValueError(f"{_what(value)} that is not a boolean")


def _decimal(value: Any) -> Any:
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            raise ValueError(f"{_what(value)} that is not a number") from None
        if number.is_finite():
            return number
    raise ValueError(f"{_what(value)} that is not a number")


def _float(value: Any) -> Any:
    return float(_decimal(value))


def _iso(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{_what(value)}, not ISO-8601 text")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{_what(value)} that is not ISO-8601") from None


def _timestamp(with_zone: bool) -> Converter:
    def convert(value: Any) -> Any:
        moment = _iso(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment if with_zone else moment.astimezone(UTC).replace(tzinfo=None)

    return convert


def _date(value: Any) -> Any:
    if isinstance(value, str) and len(value) == 10:
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{_what(value)} that is not an ISO-8601 date") from None
    return _iso(value).date()


def _time(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"{_what(value)}, not ISO-8601 text")
    try:
        return time.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{_what(value)} that is not an ISO-8601 time") from None


def _uuid(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"{_what(value)}, not a UUID")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ValueError(f"{_what(value)} that is not a UUID") from None


def _nullable(convert: Converter) -> Converter:
    def run(value: Any) -> Any:
        return None if value is None else convert(value)

    return run


def converter(column: Column[Any]) -> Converter:
    """The conversion of a JSON value for ``column`` (``None`` stays ``None``)."""
    kind = column.type
    found: Converter
    if isinstance(kind, sqltypes.JSON):
        return _same
    if isinstance(kind, sqltypes.Boolean):
        found = _boolean
    elif isinstance(kind, sqltypes.Integer):
        found = _integer
    elif isinstance(kind, sqltypes.Float):
        found = _float
    elif isinstance(kind, sqltypes.Numeric):
        found = _decimal
    elif isinstance(kind, sqltypes.DateTime):
        found = _timestamp(bool(kind.timezone))
    elif isinstance(kind, sqltypes.Date):
        found = _date
    elif isinstance(kind, sqltypes.Time):
        found = _time
    elif isinstance(kind, sqltypes.Uuid):
        found = _uuid
    elif isinstance(kind, sqltypes.String):
        found = _text
    else:
        return _same
    return _nullable(found)
