"""Property tests of the one JSON body parse (``kit.jsonbody.parse_body``): any JSON document
round-trips unchanged, any refused character anywhere is named by its path, and no input at all
makes it fail with anything but one of its three answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError
from hypothesis import given
from hypothesis import strategies as st

from incentive.errors import MalformedBody, UnsupportedMediaType
from incentive.kit.jsonbody import parse_body
from incentive.kit.text import REFUSED_EVERYWHERE

JSON = "application/json"
REFUSED = [chr(c) for c in range(0x110000) if REFUSED_EVERYWHERE.match(chr(c))]

clean_text = st.text(st.characters(codec="utf-8", exclude_characters="".join(REFUSED)), max_size=12)
documents = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | clean_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(clean_text, inner, max_size=4),
    max_leaves=20,
)


@given(documents, st.booleans())
def test_any_clean_document_round_trips(document: Any, ascii_only: bool) -> None:
    body = json.dumps(document, ensure_ascii=ascii_only).encode()
    assert parse_body(body, JSON) == document


def _paths(document: Any) -> st.SearchStrategy[tuple[str | int, ...]]:
    """A strategy of the paths of the strings in ``document`` (values, not keys)."""
    found: list[tuple[str | int, ...]] = []

    def walk(value: Any, path: tuple[str | int, ...]) -> None:
        if isinstance(value, str):
            found.append(path)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, (*path, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, (*path, i))

    walk(document, ())
    return st.sampled_from(found) if found else st.nothing()


def _replace(document: Any, path: tuple[str | int, ...], value: Any) -> Any:
    if not path:
        return value
    copy = dict(document) if isinstance(document, dict) else list(document)
    copy[path[0]] = _replace(document[path[0]], path[1:], value)  # type: ignore[index]
    return copy


@given(st.data(), documents, st.sampled_from(REFUSED), st.booleans())
def test_a_refused_character_anywhere_is_named_by_its_path(
    data: st.DataObject, document: Any, bad: str, ascii_only: bool
) -> None:
    wrapped = {"doc": document, "s": "x"}
    path = data.draw(_paths(wrapped))
    poisoned = _replace(wrapped, path, f"a{bad}b")
    body = json.dumps(poisoned, ensure_ascii=ascii_only or "\ud800" <= bad <= "\udfff")
    with pytest.raises(RequestValidationError) as refused:
        parse_body(body.encode(), JSON)
    errors = refused.value.errors()
    assert ("body", *path) in [e["loc"] for e in errors]
    assert {e["type"] for e in errors} == {"control_character"}


@given(st.binary(max_size=64), st.sampled_from([JSON, "text/plain", None]))
def test_any_bytes_get_one_of_the_three_answers_or_a_document(
    body: bytes, content_type: str | None
) -> None:
    answer: Any
    try:
        answer = parse_body(body, content_type)
    except (MalformedBody, UnsupportedMediaType, RequestValidationError) as refused:
        answer = refused
    if isinstance(answer, MalformedBody):
        where = answer.extra["errors"][0]
        assert (answer.status, where["field"]) == (400, "body")
        assert where["line"] >= 1
        assert where["column"] >= 1
    if isinstance(answer, UnsupportedMediaType):
        assert content_type != JSON


@pytest.mark.parametrize("ascii_only", [True, False])
def test_every_refused_character_is_refused_in_a_value_and_in_a_key(ascii_only: bool) -> None:
    """Exhaustive, beside the property test that found ``\\b`` and ``\\f`` (short escapes the
    pre-check once missed)."""
    missed = []
    for bad in REFUSED:
        as_ascii = ascii_only or "\ud800" <= bad <= "\udfff"
        for document in ({"s": f"a{bad}b"}, {f"k{bad}": 1}):
            body = json.dumps(document, ensure_ascii=as_ascii).encode()
            try:
                parse_body(body, JSON)
            except RequestValidationError:
                continue
            missed.append(body)
    assert not missed
