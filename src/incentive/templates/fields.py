"""A template's fields: what each one accepts, and the check of a campaign's content against
them.

A field has a ``type`` (one of ``FIELD_TYPES``), whether it is ``required``, its limits, an
optional ``default`` (checked like a value), help text, and whether it is **reviewed**: text a
customer reads (title, shop info, staff, hot items, image captions …), which the automated
review screens on submission. The check is a pydantic model built once per template version,
so a value that breaks a field is a 422 naming ``content.<field>`` (and the item) and the rule.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    create_model,
    model_validator,
)

from incentive.errors import InvalidField
from incentive.kit.text import Line, Prose

FieldType = Literal["text", "prose", "integer", "fen", "boolean", "choice", "text_list", "image"]
TEXT_TYPES = frozenset({"text", "prose", "text_list", "image"})
SIZED_TYPES = frozenset({"text", "prose", "text_list"})
NUMBER_TYPES = frozenset({"integer", "fen"})
MAX_TEXT = {"text": 200, "prose": 5000, "text_list": 200}
MAX_ITEMS = 50
BIG = 10**15
FieldName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]


class Image(BaseModel):
    """An image a campaign page shows: where it is, and its caption (reviewed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: AnyHttpUrl
    caption: Annotated[Line, Field(max_length=200)] = ""


class FieldSpec(BaseModel):
    """One field of a template."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: FieldName
    label: Annotated[Line, Field(min_length=1, max_length=100)]
    type: FieldType
    required: bool = False
    reviewed: bool = Field(False, description="customer-facing text the automated review screens")
    help: Annotated[Prose, Field(max_length=1000)] = ""
    min_length: Annotated[int, Field(ge=0, le=5000)] | None = None
    max_length: Annotated[int, Field(ge=1, le=5000)] | None = None
    minimum: Annotated[int, Field(ge=-BIG, le=BIG)] | None = None
    maximum: Annotated[int, Field(ge=-BIG, le=BIG)] | None = None
    choices: (
        Annotated[list[Annotated[Line, Field(min_length=1, max_length=100)]], Field(max_length=100)]
        | None
    ) = None
    max_items: Annotated[int, Field(ge=1, le=MAX_ITEMS)] | None = None
    default: Any = Field(None, description="used when the content leaves the field out")

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        kind = self.type
        if self.reviewed and kind not in TEXT_TYPES:
            raise ValueError(f"only text fields are reviewed, not {kind}")
        if (self.min_length is not None or self.max_length is not None) and kind not in SIZED_TYPES:
            raise ValueError(f"min_length/max_length apply to text fields, not {kind}")
        if (self.minimum is not None or self.maximum is not None) and kind not in NUMBER_TYPES:
            raise ValueError(f"minimum/maximum apply to integer and fen fields, not {kind}")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError("minimum is above maximum")
        if self.min_length is not None and self.min_length > (self.max_length or MAX_TEXT[kind]):
            raise ValueError("min_length is above max_length")
        if (self.choices is not None) != (kind == "choice"):
            raise ValueError("choices are given for a choice field, and only for one")
        if self.choices == []:
            raise ValueError("a choice field needs at least one choice")
        if self.choices is not None and len(set(self.choices)) != len(self.choices):
            raise ValueError("choices repeat")
        if self.max_items is not None and kind != "text_list":
            raise ValueError(f"max_items applies to text_list fields, not {kind}")
        if self.default is not None:
            try:
                _value_model(self).model_validate({"v": self.default})
            except ValidationError as exc:
                raise ValueError(f"default: {exc.errors()[0]['msg']}") from None
        return self


def _annotation(spec: FieldSpec) -> Any:
    if spec.type in SIZED_TYPES:
        checks = typing.get_args(Prose if spec.type == "prose" else Line)[1:]
        sized = StringConstraints(
            min_length=spec.min_length or 0, max_length=spec.max_length or MAX_TEXT[spec.type]
        )
        text: Any = Annotated[str, sized, *checks]
        if spec.type == "text_list":
            return Annotated[list[text], Field(max_length=spec.max_items or MAX_ITEMS)]
        return text
    if spec.type in NUMBER_TYPES:
        low = spec.minimum if spec.minimum is not None else (0 if spec.type == "fen" else -BIG)
        high = spec.maximum if spec.maximum is not None else BIG
        return Annotated[int, Field(strict=True, ge=low, le=high)]
    if spec.type == "boolean":
        return Annotated[bool, Field(strict=True)]
    if spec.type == "choice":
        return Literal[tuple(spec.choices or ())]
    return Image


def _value_model(spec: FieldSpec) -> type[BaseModel]:
    return create_model("Value", __config__=ConfigDict(extra="forbid"), v=(_annotation(spec), ...))


def content_model(fields: Sequence[FieldSpec]) -> type[BaseModel]:
    """The model a campaign's content must satisfy (built once per distinct field list)."""
    return _content_model(json.dumps([f.model_dump(mode="json") for f in fields]))


@lru_cache(maxsize=256)
def _content_model(fields_json: str) -> type[BaseModel]:
    definitions: dict[str, Any] = {}
    for spec in (FieldSpec.model_validate(f) for f in json.loads(fields_json)):
        annotation = _annotation(spec)
        if spec.required:
            definitions[spec.name] = (annotation, ...)
        else:
            # validated: a default is stored as the same value given would be (an image's
            # default becomes an Image, its URL normalised and its caption filled in)
            definitions[spec.name] = (
                annotation | None,
                Field(default=spec.default, validate_default=True),
            )
    return create_model(
        "Content", __config__=ConfigDict(extra="forbid", frozen=True), **definitions
    )


def check_content(fields: Sequence[FieldSpec], content: Mapping[str, Any]) -> dict[str, Any]:
    """``content`` checked against ``fields`` with defaults filled in, as stored (JSON);
    ``InvalidField`` naming ``content.<field>[.<item>]`` and the rule otherwise."""
    try:
        checked = content_model(fields).model_validate(dict(content))
    except ValidationError as exc:
        errors = [
            {
                "field": ".".join(["content", *(str(p) for p in err["loc"])]),
                "rule": "unknown-field" if err["type"] == "extra_forbidden" else err["type"],
                "message": err["msg"],
            }
            for err in exc.errors()
        ]
        first = errors[0]
        problem = InvalidField(
            first["field"], first["rule"], f"{first['field']}: {first['message']}"
        )
        problem.extra["errors"] = errors
        raise problem from None
    return checked.model_dump(mode="json", exclude_none=True)


def reviewed_texts(
    fields: Sequence[FieldSpec], content: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """``(path, text)`` of every reviewed text in stored ``content``, in field order."""
    texts: list[tuple[str, str]] = []
    for spec in fields:
        value = content.get(spec.name)
        if not spec.reviewed or value is None:
            continue
        if spec.type == "text_list":
            texts.extend((f"content.{spec.name}.{i}", item) for i, item in enumerate(value))
        elif spec.type == "image":
            texts.append((f"content.{spec.name}.caption", value.get("caption", "")))
        else:
            texts.append((f"content.{spec.name}", value))
    return [(path, text) for path, text in texts if text]


def customer_content(fields: Sequence[FieldSpec], content: Mapping[str, Any]) -> dict[str, Any]:
    """What of ``content`` customers see: every field but the texts the template does not
    review (notes for the merchant's and the operator's eyes only)."""
    hidden = {f.name for f in fields if f.type in TEXT_TYPES and not f.reviewed}
    return {name: value for name, value in content.items() if name not in hidden}
