"""The API's JSON request bodies: one strict parse, shared by every route.

FastAPI parses a body with ``json.loads`` (duplicate keys silently keep the last value), turns
a body sent as another content type into a confusing 422 and reports a syntax error as a byte
offset. Every router uses ``JSONBodyRoute`` instead (``tests/test_input.py`` checks that), whose
request parses the body once, before FastAPI reads it, and answers:

- **415** ``unsupported-media-type`` for a body whose Content-Type is not JSON
  (``application/json`` or ``application/*+json``);
- **400** ``malformed-json`` naming ``body`` with the line and column of a syntax error (also
  for invalid UTF-8 and nesting deeper than the parser allows);
- **422** naming the field for a key given twice in one object (``duplicate_key``) and for a
  refused character in any string or object key, however deep (``control_character``, see
  ``kit.text``).

FastAPI then validates the parsed document as usual; the parse is not repeated.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from email.message import Message
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.params import Form
from fastapi.routing import APIRoute

from incentive.errors import MalformedBody, UnsupportedMediaType, problems
from incentive.kit.text import CONTROL_CHARACTER, refused_in_document, refused_message

DUPLICATE_KEY = "duplicate_key"


class _DuplicatedKeys(dict[str, Any]):
    """An object in which some keys appeared more than once (found by the walk, with its path)."""

    keys_given_twice: list[str]


class _NotANumber:
    """Where the parser met NaN, Infinity or a number beyond its range (not JSON numbers)."""


NOT_A_NUMBER = _NotANumber()
MAX_DIGITS = 4300  # CPython's int parsing limit; a longer integer is refused, not parsed


class _Parse:
    """One body's parse: the hooks flag what the walk must then find and name."""

    def __init__(self) -> None:
        self.flagged = False

    def object(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        document = dict(pairs)
        if len(document) == len(pairs):
            return document
        self.flagged = True
        flagged = _DuplicatedKeys(document)
        flagged.keys_given_twice = [k for k, n in Counter(k for k, _ in pairs).items() if n > 1]
        return flagged

    def constant(self, name: str) -> _NotANumber:
        self.flagged = True
        return NOT_A_NUMBER

    def number(self, text: str) -> float | _NotANumber:
        value = float(text)
        if math.isfinite(value):
            return value
        self.flagged = True
        return NOT_A_NUMBER

    def integer(self, text: str) -> int | _NotANumber:
        if len(text.lstrip("-")) <= MAX_DIGITS:
            return int(text)
        self.flagged = True
        return NOT_A_NUMBER

    def loads(self, body: bytes, *, long_integers: bool = False) -> Any:
        return json.loads(
            body,
            object_pairs_hook=self.object,
            parse_constant=self.constant,
            parse_float=self.number,
            # Only when the plain parse failed on one: a hook per integer costs on every body.
            parse_int=self.integer if long_integers else None,
        )


def _flagged(document: Any) -> Iterator[tuple[tuple[str | int, ...], str, str]]:
    """(path, rule, message) of each duplicate key and each number that is not JSON."""
    todo: list[tuple[tuple[str | int, ...], Any]] = [((), document)]
    while todo:
        path, value = todo.pop()
        if value is NOT_A_NUMBER:
            yield path, "json_invalid", "not a JSON number (NaN, Infinity, out of range)"
        elif isinstance(value, dict):
            if isinstance(value, _DuplicatedKeys):
                for key in value.keys_given_twice:
                    yield (*path, key), DUPLICATE_KEY, "this key is given more than once"
            todo.extend(((*path, key), item) for key, item in value.items())
        elif isinstance(value, list):
            todo.extend(((*path, i), item) for i, item in enumerate(value))


def _is_json(content_type: str | None) -> bool:
    if content_type == "application/json":  # nearly every request: skip the header parser
        return True
    if not content_type:
        return False
    message = Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def _where(body: bytes, offset: int) -> tuple[int, int]:
    """(line, column) of a byte offset, both from 1, the column in characters."""
    text = body[:offset].decode("utf-8", "replace")
    return text.count("\n") + 1, len(text) - text.rfind("\n")


_REFUSED_MARKS = (b"\\u", b"\\b", b"\\f", b"\x7f", b"\xc2")


def parse_body(body: bytes, content_type: str | None) -> Any:
    """The JSON document of a request body, or the problem that refuses it."""
    if not _is_json(content_type):
        raise UnsupportedMediaType(
            f"body: send JSON with Content-Type: application/json, not {content_type or 'none'}"
        )
    parse = _Parse()
    try:
        try:
            document = parse.loads(body)
        except json.JSONDecodeError:
            raise
        except ValueError:  # an integer longer than CPython parses: find it by its path
            document = parse.loads(body, long_integers=True)
    except json.JSONDecodeError as e:
        raise MalformedBody(e.msg, line=e.lineno, column=e.colno) from None
    except UnicodeDecodeError as e:
        raise MalformedBody("invalid UTF-8", *_where(body, e.start)) from None
    except RecursionError:
        raise MalformedBody("nested too deeply", line=1, column=1) from None
    errors = []
    if parse.flagged:
        errors = [
            {"type": rule, "loc": ("body", *path), "msg": message}
            for path, rule, message in _flagged(document)
        ]
    # Escapes (\u0000, \b, \f, surrogates) and raw DEL/C1 are the only ways in (raw C0 is
    # malformed JSON); a body with none of them needs no walk.
    if any(mark in body for mark in _REFUSED_MARKS):
        errors.extend(
            {"type": CONTROL_CHARACTER, "loc": ("body", *path), "msg": refused_message(char)}
            for path, char in refused_in_document(document)
        )
    if errors:
        raise RequestValidationError(errors, body=None)
    return document


class JSONBodyRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_document"):
            self._document = parse_body(await self.body(), self.headers.get("content-type"))
        return self._document


class JSONBodyRoute(APIRoute):
    """A route whose JSON body is parsed by ``parse_body``; it documents the 400 and 415."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._takes_json():
            self.responses = {**problems(MalformedBody, UnsupportedMediaType), **self.responses}

    def _takes_json(self) -> bool:
        return self.body_field is not None and not isinstance(self.body_field.field_info, Form)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        if not self._takes_json():
            return handle

        async def parse_then_handle(request: Request) -> Response:
            strict = JSONBodyRequest(request.scope, request.receive)
            # Parsed here, outside FastAPI's own parse, so its problems reach our handlers.
            if await strict.body():
                await strict.json()
            return await handle(strict)

        return parse_then_handle
