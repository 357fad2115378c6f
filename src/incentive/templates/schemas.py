"""Template request/response shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from incentive.campaigns.kinds import KindName
from incentive.kit.pagination import Page
from incentive.kit.text import Name, Prose
from incentive.templates.fields import FieldSpec

TemplateKey = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
Version = Annotated[int, Field(ge=1, le=2**31 - 1)]


class TemplateIn(BaseModel):
    """A template version, saved as a draft: version 1 of a new key, or the next version of
    an existing one."""

    model_config = ConfigDict(extra="forbid")

    key: TemplateKey
    kind: KindName
    name: Name
    description: Annotated[Prose, Field(max_length=2000)] = ""
    fields: Annotated[list[FieldSpec], Field(min_length=1, max_length=50)]

    @model_validator(mode="after")
    def _unique_names(self) -> TemplateIn:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError("field names repeat")
        return self


class TemplatePatch(BaseModel):
    """Change a draft version; ``fields`` replaces the fields as a whole."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    description: Annotated[Prose, Field(max_length=2000)] | None = None
    fields: Annotated[list[FieldSpec], Field(min_length=1, max_length=50)] | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> TemplatePatch:
        names = [f.name for f in self.fields or ()]
        if len(set(names)) != len(names):
            raise ValueError("field names repeat")
        return self


class TemplateOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    key: str
    version: int
    kind: str
    name: str
    description: str
    status: Literal["draft", "published", "retired"]
    fields: list[FieldSpec]
    created_by: str
    created_at: datetime
    published_at: datetime | None


class TemplatePage(Page[TemplateOut]):
    """Template versions, by key then version."""


class TemplateRef(BaseModel):
    """The template a campaign is made from: the latest published version unless given."""

    model_config = ConfigDict(extra="forbid")

    key: TemplateKey
    version: Version | None = None
