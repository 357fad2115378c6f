"""Campaign request/response shapes. A kind's rules are its own domain's model (see
``campaigns.kinds``): here ``rules`` is a JSON document checked against the campaign's kind and
documented as the union of every registered kind."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from incentive.campaigns.kinds import KindName, RulesDocument
from incentive.kit.pagination import Page
from incentive.kit.text import Line, Name, Prose
from incentive.templates.schemas import TemplateRef

Status = Literal[
    "draft", "pending_review", "approved", "rejected", "active", "paused", "ended", "cancelled"
]
Description = Annotated[Prose, Field(max_length=5000)]
Reason = Annotated[Prose, Field(max_length=1000)]
Content = Annotated[
    dict[str, Any],
    Field(description="the values of the template's fields (checked against the template)"),
]
RulesPayload = Annotated[
    RulesDocument,
    Field(description="the kind's rules (by `kind`); integers only for money"),
]


class CampaignIn(BaseModel):
    """A new campaign, saved as a draft. Merchant staff create for their own merchant;
    operators create platform campaigns, or a merchant's with ``merchant_id``."""

    model_config = ConfigDict(extra="forbid")

    kind: KindName
    name: Name
    description: Description = ""
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    merchant_id: Line | None = Field(None, min_length=1, max_length=32)
    rules: RulesPayload
    template: TemplateRef | None = Field(
        None, description="the published template the campaign is made from"
    )
    content: Content | None = None


class CampaignPatch(BaseModel):
    """Edit a draft or rejected campaign; ``rules`` replaces the rules as a whole.

    ``version`` (optional) makes the edit conditional on the version last read.
    """

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    description: Description | None = None
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    rules: RulesPayload | None = None
    content: Content | None = Field(None, description="replaces the content as a whole")
    version: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None


class TransitionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: Status
    reason: Reason = ""
    version: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = Field(
        None, description="only change the campaign if it is still at this version"
    )


class CampaignOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: KindName
    owner_type: str
    merchant_id: str | None
    name: str
    description: str
    starts_at: datetime
    ends_at: datetime
    status: Status
    rules: RulesDocument
    budget_account_id: int | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    version: int
    template_key: str | None
    template_version: int | None
    content: dict[str, Any] | None


class CampaignPage(Page[CampaignOut]):
    """Campaigns, newest first."""


class TransitionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    campaign_id: str
    from_status: str | None
    to_status: str
    actor: str
    actor_role: str
    reason: str
    at: datetime


class TransitionPage(Page[TransitionOut]):
    """Status changes, oldest first."""


class BudgetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: Annotated[int, Field(strict=True, ge=1, le=10**15, description="minor units")]
    from_account_id: Annotated[int, Field(ge=1, le=2**63 - 1)]


class BudgetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    campaign_id: str
    account_id: int
    asset: str
    balance: int
    transfer_id: int | None = None
