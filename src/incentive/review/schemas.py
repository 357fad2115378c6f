"""Review request/response shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from incentive.kit.pagination import Page
from incentive.kit.text import Line, Prose

Severity = Literal["reject", "hold"]
LIST_NAME = r"^[a-z][a-z0-9_-]{0,63}$"
ListName = Annotated[str, Field(pattern=LIST_NAME)]
WordText = Annotated[Line, Field(min_length=1, max_length=100)]
MAX_WORDS = 200_000


class WordListIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ListName
    severity: Severity = "reject"


class WordListPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    severity: Severity


class WordsIn(BaseModel):
    """Words to add or remove (an import replaces the list with them: up to 200,000)."""

    model_config = ConfigDict(extra="forbid")

    words: Annotated[list[WordText], Field(min_length=1, max_length=MAX_WORDS)]


class WordListOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    severity: Severity
    version: int
    word_count: int
    created_by: str
    created_at: datetime
    updated_at: datetime


class WordListPage(Page[WordListOut]):
    """Word lists, by name."""


class WordsChanged(BaseModel):
    list: WordListOut
    changed: int = Field(description="words new to the list (add, import) or taken out (remove)")


class ChangeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    version: int
    action: str
    words: int
    detail: dict[str, object]
    actor: str
    at: datetime


class ChangePage(Page[ChangeOut]):
    """A list's versions, newest first."""


class WordOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    word: str
    added_in: int = Field(description="the list version that added it")


class WordPage(Page[WordOut]):
    """A list's words, in order."""


class HitOut(BaseModel):
    field: str
    offset: int = Field(description="in characters (code points) of the field's text")
    length: int
    matched: str = Field(description="the text as written")
    word: str
    list: str
    list_version: int
    severity: Severity


class VerdictOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    campaign_id: str
    campaign_version: int
    verdict: Literal["approved", "rejected", "held"]
    automated: bool
    decided_by: str
    reason: str
    hits: list[HitOut] = Field(description="the first 200 hits in text order")
    hit_count: int = Field(description="every hit, also those beyond the first 200")
    lists: dict[str, int] = Field(description="each list's version the texts were checked against")
    at: datetime


class VerdictPage(Page[VerdictOut]):
    """Verdicts, oldest first."""


class ScreeningIn(BaseModel):
    """Texts to screen as a submission would be (nothing is recorded)."""

    model_config = ConfigDict(extra="forbid")

    texts: Annotated[
        dict[
            Annotated[str, Field(pattern=r"^[A-Za-z0-9_.]{1,100}$")],
            Annotated[Prose, Field(max_length=20_000)],
        ],
        Field(min_length=1, max_length=50),
    ]


class ScreeningOut(BaseModel):
    revision: int = Field(description="the word-list revision this process matched with")
    lists: dict[str, int]
    verdict: Literal["approved", "rejected", "held"]
    hits: list[HitOut] = Field(description="the first 200 hits in text order")
    hit_count: int


class DecisionIn(BaseModel):
    """An operator's decision on a held or rejected campaign."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    reason: Annotated[Prose, Field(min_length=1, max_length=1000)]
