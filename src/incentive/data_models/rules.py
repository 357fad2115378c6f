"""Processing rules: the declared, pure transforms a data model's field applies to its value.

Each rule is a model tagged by ``type`` whose parameters are validated when the model is
defined (a 422 naming ``fields.<i>.rule.<param>``), and whose ``apply`` is a pure function of
the field's value, the whole source record (``concatenate`` reads other fields) and the
related records loaded beforehand (``lookup``). A value the rule cannot take raises
``RuleFailed``: that record fails alone, with the field and the rule recorded.

- ``rename``: the value as it is (the field's ``mapped_field`` is the new name).
- ``fen_to_yuan``: integer fen → decimal yuan string with two places (``1234`` → ``"12.34"``).
- ``date_format``: a datetime (or ISO-8601 text; naive is UTC) → text in ``format``
  (strftime directives from a fixed set, the same text on every host) at ``time_zone`` (IANA
  name; not the host's ``localtime``). An instant the calendar cannot show there fails.
- ``enum_map``: the value looked up in ``mapping`` (text keys); unknown → ``default``, or a
  failure when ``strict``.
- ``mask``: text (a JSON value's canonical JSON) with all but ``keep_start`` first and
  ``keep_end`` last characters replaced by ``char``.
- ``default``: ``value`` when the field is null or empty text.
- ``concatenate``: the text of the field's value, then of ``fields`` (other source fields, in
  order), joined by ``separator`` (nulls skipped).
- ``lookup``: the ``field`` of the record of source ``source`` whose key is the value (null
  when there is none).
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from incentive.data_models.records import canonical_json
from incentive.kit.text import Line

#: related records a ``lookup`` reads, by (source, key)
Lookups = Mapping[tuple[str, str], Mapping[str, Any]]
#: a finite float: NaN and infinities have no JSON (nor a canonical hash)
Scalar = (
    Annotated[Line, Field(max_length=1000)]
    | Annotated[int, Field(strict=True, ge=-(2**63), le=2**63 - 1)]
    | Annotated[float, Field(allow_inf_nan=False)]
    | bool
    | None
)
FieldName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
#: the directives ``date_format`` accepts (no locale-dependent names, no %c/%x/%X), each
#: formatted here rather than by the C library: the same text on every host and locale
#: (glibc writes year 1 as ``1``, not ``0001``), literal text passed through untouched.
_FORMATS: dict[str, Callable[[datetime], str]] = {
    "Y": lambda d: f"{d.year:04d}",
    "m": lambda d: f"{d.month:02d}",
    "d": lambda d: f"{d.day:02d}",
    "H": lambda d: f"{d.hour:02d}",
    "M": lambda d: f"{d.minute:02d}",
    "S": lambda d: f"{d.second:02d}",
    "f": lambda d: f"{d.microsecond:06d}",
    "z": lambda d: d.strftime("%z"),
    "j": lambda d: f"{d.timetuple().tm_yday:03d}",
    "G": lambda d: f"{d.isocalendar().year:04d}",
    "u": lambda d: str(d.isocalendar().weekday),
    "V": lambda d: f"{d.isocalendar().week:02d}",
    "w": lambda d: str(d.isoweekday() % 7),
    "%": lambda d: "%",
}
DIRECTIVES = frozenset(_FORMATS)
_DIRECTIVE = re.compile(r"%(.?)", re.DOTALL)
#: names the zone database answers that are the host's settings, not IANA zones
HOST_ZONES = frozenset({"localtime", "posixrules"})


class RuleFailed(Exception):
    """A value the rule cannot take; ``detail`` says why."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @abstractmethod
    def apply(self, value: Any, record: Mapping[str, Any], lookups: Lookups) -> Any:
        """The field's value after this rule (``RuleFailed`` when it cannot take it)."""

    def reads(self) -> tuple[str, ...]:
        """Source fields this rule reads besides its own."""
        return ()

    def looks_up(self) -> tuple[str, str] | None:
        """(source, field) of the related records this rule reads."""
        return None


class Rename(_Rule):
    type: Literal["rename"] = "rename"

    def apply(self, value: Any, record: Mapping[str, Any], lookups: Lookups) -> Any:
        return value


class FenToYuan(_Rule):
    type: Literal["fen_to_yuan"]

    def apply(self, value: Any, record: Mapping[str, Any], lookups: Lookups) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise RuleFailed(f"fen must be an integer, not {type(value).__name__}")
        whole, cents = divmod(abs(value), 100)
        try:  # exact at any size (a Decimal rounds to its context's 28 digits)
            return f"{'-' if value < 0 else ''}{whole}.{cents:02d}"
        except ValueError:  # beyond the interpreter's integer-to-text limit
            raise RuleFailed("fen has too many digits") from None


class DateFormat(_Rule):
    type: Literal["date_format"]
    format: Annotated[Line, Field(min_length=1, max_length=64)] = "%Y-%m-%dT%H:%M:%S%z"
    time_zone: Annotated[str, Field(pattern=r"^[A-Za-z0-9_+\-/]{1,64}$")] = "UTC"

    @field_validator("format")
    @classmethod
    def _directives(cls, fmt: str) -> str:
        unknown = sorted({d for d in _DIRECTIVE.findall(fmt) if d not in DIRECTIVES})
        if unknown:
            raise ValueError(f"directives not allowed: {', '.join('%' + d for d in unknown)}")
        return fmt

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, name: str) -> str:
        try:
            if name in HOST_ZONES:
                raise ValueError
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {name!r}") from None
        return name

    def apply(self, value: Any, record: Mapping[str, Any], lookups: Lookups) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                raise RuleFailed("not an ISO-8601 date and time") from None
        if not isinstance(value, datetime):
            raise RuleFailed(f"a date and time is needed, not {type(value).__name__}")
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        try:
            local = value.astimezone(ZoneInfo(self.time_zone))
        except OverflowError:
            raise RuleFailed(f"out of the calendar's range at {self.time_zone}") from None
        return _DIRECTIVE.sub(lambda m: _FORMATS[m.group(1)](local), self.format)


class EnumMap(_Rule):
    type: Literal["enum_map"]
    mapping: Annotated[dict[Annotated[Line, Field(max_length=200)], Scalar], Field(min_length=1)]
    default: Scalar = None
    strict: StrictBool = False

    @field_validator("mapping")
    @classmethod
    def _bounded(cls, mapping: dict[str, Scalar]) -> dict[str, Scalar]:
        if len(mapping) > 1000:
            raise ValueError("at most 1,000 entries")
        return mapping

    def apply(self, value: Any, record: Mapping[str, Any], lookups: Lookups) -> Any:
        if value is None:
            return self.default
        key = _text(value)
        if key in self.mapping:
            return self.mapping[key]
        if self.strict:
            raise RuleFailed(f"{key[:50]!r} is not in the mapping")
        return self.default


class Mask(_Rule):
    type: Literal["mask"]
    keep_start: Annotated[int, Field(strict=True, ge=0, le=32)] = 0
    keep_end: Annotated[int, Field(strict=True, ge=0, le=32)] = 4
    char: Annotated[Line, Field(min_length=1, max_length=1)] = "*"

    def apply(self, value: Any, record: Mapping[str, Any], lookups: Lookups) -> Any:
        if value is None:
            return None
        text = _text(value)
        if len(text) <= self.keep_start + self.keep_end:
            return self.char * len(text)
        end = text[len(text) - self.keep_end :] if self.keep_end else ""
        return text[: self.keep_start] + self.char * (len(text) - self.keep_start - len(end)) + end


class Default(_Rule):
    type: Literal["default"]
    value: Scalar

    def apply(self, value: Any, record: Mapping[str, Any], lookups: Lookups) -> Any:
        return self.value if value is None or value == "" else value


class Concatenate(_Rule):
    type: Literal["concatenate"]
    fields: Annotated[list[FieldName], Field(min_length=1, max_length=10)]
    separator: Annotated[Line, Field(max_length=10)] = " "

    def reads(self) -> tuple[str, ...]:
        return tuple(self.fields)

    def apply(self, value: Any, record: Mapping[str, Any], lookups: Lookups) -> Any:
        parts = [value, *(record.get(f) for f in self.fields)]
        return self.separator.join(_text(p) for p in parts if p is not None)


class Lookup(_Rule):
    type: Literal["lookup"]
    source: FieldName
    field: FieldName

    def looks_up(self) -> tuple[str, str]:
        return self.source, self.field

    def apply(self, value: Any, record: Mapping[str, Any], lookups: Lookups) -> Any:
        if value is None:
            return None
        related = lookups.get((self.source, str(value)))
        return None if related is None else related.get(self.field)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return canonical_json(value)
    return str(value)


Rule = Annotated[
    Rename | FenToYuan | DateFormat | EnumMap | Mask | Default | Concatenate | Lookup,
    Field(discriminator="type"),
]
RULE_TYPES = ("rename", "fen_to_yuan", "date_format", "enum_map", "mask", "default",
              "concatenate", "lookup")  # fmt: skip
