"""Campaign kinds: what a campaign *does*, plugged into the campaign core.

A campaign is one entity with a lifecycle, a window and a ledger budget (``campaigns``).
What it does belongs to its **kind**, and each kind lives in its own domain
(``flash_sales``, ``rebates``, ``coupons``, ``rewards``, ``referrals``). A kind registers one
``CampaignKind`` at import of its ``kind.py``::

    class FlashSaleKind(CampaignKind):
        name = "flash_sale"
        rules = FlashSaleRules            # a KindRules model with kind: Literal["flash_sale"]

        async def on_activate(self, session, campaign): ...   # split the stock, once

    register_kind(FlashSaleKind())

The core calls the hooks inside the caller's unit of work, so a hook's writes commit or
roll back with the change that caused them: ``on_create`` after the draft is saved,
``on_edit`` after an edit, ``on_transition`` after every status change, ``on_activate`` on
every route into ``active`` (first activation and resume: the hook must be idempotent), and
``on_end`` when the campaign is ended (by a person or by the ``ends_at`` job) or cancelled.
Hooks see a ``CampaignFacts`` snapshot, never the core's table.

Activities (``activities``) reach a kind through ``on_activity``: an activity of a type the
kind ``consumes`` is offered to each of its active campaigns (and a follow-up, such as a
refund, to every campaign that answered the activity it refers to), in the activity's unit of
work, once per (activity, campaign); the hook answers with an ``Outcome``.

``campaigns`` never imports a kind: the rules union, the ``kind`` enum and the OpenAPI
schema of ``rules`` are built from this registry when they are needed.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, ClassVar, Protocol, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    TypeAdapter,
    ValidationError,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.errors import InvalidField


class KindRules(BaseModel):
    """Base of every kind's rules; ``kind`` is the union's tag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str


@dataclass(frozen=True)
class CampaignFacts:
    """What a kind's hook may know of its campaign (a snapshot, not the core's row)."""

    id: str
    kind: str
    status: str
    owner_type: str
    merchant_id: str | None
    name: str
    starts_at: datetime
    ends_at: datetime
    rules: KindRules
    budget_account_id: int | None
    version: int


@dataclass(frozen=True)
class ActivityFacts:
    """An activity as a kind sees it (stored before it is offered; ``id`` is ours)."""

    id: int
    sender: str
    external_id: str
    type: str
    occurred_at: datetime
    customer: str
    merchant: str | None
    staff: str | None
    amount_fen: int | None
    refers_to: int | None  # our id of the activity a follow-up (a refund) refers to
    attributes: Mapping[str, Any]


#: A sender's clock and ours differ (and many send whole seconds): something of ours up to
#: this long after an activity's ``occurred_at`` (a visit, an acceptance) counts as before it.
CLOCK_SKEW = timedelta(minutes=2)

OUTCOMES = ("rewarded", "reversed", "refused")


@dataclass(frozen=True)
class Outcome:
    """A campaign's answer to one activity: what it gave (``detail``: amounts, transfer ids),
    what it took back, or why not (``reason``, a short code such as ``not-joined``)."""

    status: str  # one of OUTCOMES
    reason: str | None = None
    detail: Mapping[str, Any] | None = None

    @classmethod
    def refused(cls, reason: str, **detail: Any) -> Outcome:
        return cls("refused", reason, detail or None)


class CampaignKind(Protocol):
    """One kind of campaign. Subclass it to inherit the no-op hooks."""

    name: ClassVar[str]
    rules: ClassVar[type[KindRules]]
    #: activity types this kind consumes (offered to its active campaigns).
    consumes: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def budget_asset(self, rules: KindRules) -> str:
        """The asset (``POINTS`` or ``CNY``) the campaign's budget is held in."""

    def listens_to(self, campaign: CampaignFacts, activity_type: str) -> bool:
        """Whether ``campaign`` is offered activities of ``activity_type`` (one this kind
        ``consumes``). A kind whose rules choose what a campaign listens to narrows it (a
        coupon campaign hears only its task's type): other activities get no outcome row."""
        return activity_type in self.consumes

    async def on_create(self, session: AsyncSession, campaign: CampaignFacts) -> None:
        return None

    async def on_edit(self, session: AsyncSession, campaign: CampaignFacts) -> None:
        return None

    async def on_transition(
        self, session: AsyncSession, campaign: CampaignFacts, from_status: str
    ) -> None:
        return None

    async def on_activate(self, session: AsyncSession, campaign: CampaignFacts) -> None:
        return None

    async def on_end(self, session: AsyncSession, campaign: CampaignFacts) -> None:
        return None

    async def on_activity(
        self, session: AsyncSession, campaign: CampaignFacts, activity: ActivityFacts
    ) -> Outcome:
        """Answer one activity of a consumed type; raise nothing a sender can cause (a refusal
        is an ``Outcome``). Called once per (activity, campaign); writes commit with it."""
        return Outcome.refused("not-consumed")

    async def on_activities(
        self, session: AsyncSession, campaign: CampaignFacts, activities: list[ActivityFacts]
    ) -> list[Outcome]:
        """Answer several activities at once, one outcome each in the same order (the same
        answers ``on_activity`` would give one by one, in that order). Override to answer a
        batch set-based."""
        return [await self.on_activity(session, campaign, a) for a in activities]


_kinds: dict[str, CampaignKind] = {}
_adapter: TypeAdapter[Any] | None = None


def register_kind(kind: CampaignKind) -> CampaignKind:
    """Add ``kind`` to the registry (idempotent for the same class; a clash is a bug)."""
    global _adapter
    tag = kind.rules.model_fields["kind"].default
    if tag != kind.name:
        raise ValueError(f"kind {kind.name!r}: its rules model must default kind to {kind.name!r}")
    existing = _kinds.get(kind.name)
    if existing is not None:
        if type(existing) is type(kind):
            return existing
        raise ValueError(f"campaign kind {kind.name!r} is already registered")
    _kinds[kind.name] = kind
    _adapter = None
    return kind


def unregister_kind(name: str) -> None:
    global _adapter
    _kinds.pop(name, None)
    _adapter = None


def get_kind(name: str) -> CampaignKind:
    try:
        return _kinds[name]
    except KeyError:
        raise InvalidField("kind", "registered", f"no campaign kind {name!r}") from None


def kind_names() -> list[str]:
    return sorted(_kinds)


def kinds_consuming(activity_type: str) -> list[str]:
    """Names of the kinds whose campaigns are offered activities of ``activity_type``."""
    return sorted(name for name, kind in _kinds.items() if activity_type in kind.consumes)


def _rules_adapter() -> TypeAdapter[Any]:
    global _adapter
    if _adapter is None:
        models = tuple(_kinds[name].rules for name in kind_names())
        if not models:
            raise RuntimeError("no campaign kind registered: load the domains first")
        union: Any = models[0] if len(models) == 1 else Union[models]  # noqa: UP007
        _adapter = TypeAdapter(Annotated[union, Field(discriminator="kind")])
    return _adapter


def parse_rules(kind: str, raw: Mapping[str, Any]) -> KindRules:
    """The typed rules of ``kind``; ``InvalidField`` naming ``rules.<path>`` otherwise."""
    get_kind(kind)
    if "kind" in raw and raw["kind"] != kind:
        raise InvalidField("rules.kind", "matches-kind", f"rules.kind must be {kind!r}")
    try:
        rules: KindRules = _rules_adapter().validate_python({**raw, "kind": kind})
    except ValidationError as exc:
        raise _rules_error(exc) from None
    return rules


def stored_rules(raw: Mapping[str, Any]) -> KindRules:
    """Rules as stored on a campaign (validated when written), typed again."""
    rules: KindRules = _rules_adapter().validate_python(raw)
    return rules


def _rules_error(exc: ValidationError) -> InvalidField:
    errors = []
    for err in exc.errors():
        # The first location element is the union's tag (the kind): not part of the path.
        loc = [str(p) for p in err["loc"][1:]]
        errors.append(
            {"field": ".".join(["rules", *loc]), "rule": err["type"], "message": err["msg"]}
        )
    first = errors[0]
    problem = InvalidField(first["field"], first["rule"], f"{first['field']}: {first['message']}")
    problem.extra["errors"] = errors
    return problem


# --------------------------------------------------------------------------- schema types


class KindName(str):
    """A registered kind's name: validated against, and documented from, the registry."""

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def registered(value: str) -> str:
            if value not in _kinds:
                raise ValueError(f"unknown kind; one of {', '.join(kind_names())}")
            return value

        return core_schema.no_info_after_validator_function(
            registered, core_schema.str_schema(max_length=32)
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "enum": kind_names()}


class RulesDocument(dict[str, Any]):
    """A kind's rules as JSON: checked by ``parse_rules`` against the campaign's kind (so the
    error names ``rules.<field>``); documented as the union of every registered kind."""

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.dict_schema(
            core_schema.str_schema(), core_schema.any_schema(), max_length=100
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(_rules_adapter().core_schema)
