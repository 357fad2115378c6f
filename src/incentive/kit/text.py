"""Text a caller may send: the characters refused everywhere, and the typed text fields.

PostgreSQL cannot store U+0000 in a text column nor ``\\u0000`` in JSON; the other control
characters are invisible in consoles and logs and forge line breaks in files we write. So:

- **Refused in every string** (each text field, query/path parameter, and every nested string
  and object key of a JSON body such as ``metadata``, ``rules`` or a config value):
  C0 controls except TAB, LF and CR (U+0000–U+0008, U+000B, U+000C, U+000E–U+001F), DEL and
  the C1 controls (U+007F–U+009F), and lone surrogates (U+D800–U+DFFF, which are not text and
  which no UTF-8 database can store).
- **Single-line text** (``Line``, ``Name``: names, usernames, references, keys) also refuses
  TAB, LF, CR and the Unicode line and paragraph separators (U+2028, U+2029).
- **Multi-line text** (``Prose``: descriptions, reasons) allows TAB, LF and CR.
- **A name a user chooses to be shown to others** (``ShownName``: display names) also refuses
  the bidirectional embedding, override and isolate controls (U+202A–U+202E, U+2066–U+2069):
  they reorder the text around them where it is shown (``\u202eresu`` reads "user"), which
  no one needs in a name and which lets a name pose as another.

Every request schema's string is one of these types or has a closed ``pattern`` of its own;
``tests/test_input.py`` walks the OpenAPI document so that an unchecked ``str`` cannot creep in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

# Character classes for documentation (JSON Schema / ECMAScript) and for Python's ``re``.
_EVERYWHERE = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_LINE = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
_SURROGATES = "\ud800-\udfff"

_BIDI = r"\u202a-\u202e\u2066-\u2069"

PROSE_PATTERN = f"^[^{_EVERYWHERE}]*$"
LINE_PATTERN = f"^[^{_LINE}]*$"
SHOWN_NAME_PATTERN = f"^[^{_LINE}{_BIDI}]*$"
TEXT_PATTERNS = frozenset({PROSE_PATTERN, LINE_PATTERN, SHOWN_NAME_PATTERN})

REFUSED_EVERYWHERE = re.compile(f"[{_EVERYWHERE}{_SURROGATES}]")
REFUSED_IN_LINE = re.compile(f"[{_LINE}{_SURROGATES}]")
REFUSED_IN_SHOWN_NAME = re.compile(f"[{_LINE}{_BIDI}{_SURROGATES}]")
BIDI_CONTROLS = re.compile(f"[{_BIDI}]")

CONTROL_CHARACTER = "control_character"
BLANK = "blank"


def refused_character(value: str, refused: re.Pattern[str] = REFUSED_EVERYWHERE) -> str | None:
    """``U+hhhh`` (hex code point) of the first refused character of ``value``, or None."""
    found = refused.search(value)
    return None if found is None else f"U+{ord(found.group()):04X}"


def escape_refused(value: str) -> str:
    """``value`` with each character refused in a line written as a ``\\u`` escape (to quote it)."""
    return REFUSED_IN_LINE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)


def refused_message(char: str) -> str:
    if BIDI_CONTROLS.match(chr(int(char[2:], 16))):
        return f"{char} is not allowed here (bidi override and isolate controls are refused)"
    return f"{char} is not allowed here (control characters and lone surrogates are refused)"


def _refusing(refused: re.Pattern[str]) -> Callable[[str], str]:
    def check(value: str) -> str:
        char = refused_character(value, refused)
        if char is not None:
            raise PydanticCustomError(CONTROL_CHARACTER, refused_message(char))
        return value

    return check


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError(BLANK, "must contain a character other than spaces")
    return value


Prose = Annotated[
    str,
    AfterValidator(_refusing(REFUSED_EVERYWHERE)),
    Field(json_schema_extra={"pattern": PROSE_PATTERN}),
]
"""Multi-line text (TAB, LF, CR allowed)."""

Line = Annotated[
    str,
    AfterValidator(_refusing(REFUSED_IN_LINE)),
    Field(json_schema_extra={"pattern": LINE_PATTERN}),
]
"""Single-line text."""

Name = Annotated[Line, AfterValidator(_not_blank), Field(min_length=1, max_length=200)]
"""A name a person reads: single-line, not blank."""

ShownName = Annotated[
    str,
    AfterValidator(_refusing(REFUSED_IN_SHOWN_NAME)),
    Field(json_schema_extra={"pattern": SHOWN_NAME_PATTERN}),
]
"""A name a user chooses to be shown to other users: single-line, no bidi controls."""


def refused_in_document(document: Any) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """(path, ``U+hhhh``) of each refused character in the strings and object keys of a JSON
    document, walked without recursion (a body's depth is the caller's choice)."""
    todo: list[tuple[tuple[str | int, ...], Any]] = [((), document)]
    while todo:
        path, value = todo.pop()
        if isinstance(value, str):
            char = refused_character(value)
            if char is not None:
                yield path, char
        elif isinstance(value, dict):
            for key, item in value.items():
                char = refused_character(key)
                if char is not None:
                    yield (*path, key), char
                todo.append(((*path, key), item))
        elif isinstance(value, list):
            todo.extend(((*path, i), item) for i, item in enumerate(value))


def document_within(max_bytes: int) -> Callable[[Any], Any]:
    """A validator refusing a JSON document longer than ``max_bytes`` once encoded, or holding
    a refused character (for documents that arrive other than in a request body)."""

    def check(document: Any) -> Any:
        for path, char in refused_in_document(document):
            where = ".".join(escape_refused(str(p)) for p in path)
            raise PydanticCustomError(
                CONTROL_CHARACTER,
                "{where}: {what}",
                {"where": where, "what": refused_message(char)},
            )
        size = len(json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode())
        if size > max_bytes:
            raise PydanticCustomError(
                "too_large", "at most {max_bytes} bytes of JSON", {"max_bytes": max_bytes}
            )
        return document

    return check
