"""Campaign core: creation with a ledger budget, edits, access, listing, budget funding.
Status changes are in ``flows.py``.

Contract:

- Rules are validated against the kind's model (``schemas.CampaignRules``) before anything is
  written; a breach raises ``InvalidField`` naming ``rules.<path>``.
- Every campaign gets a ledger budget account (owner ``campaign``, name ``budget``) in the
  asset its rules pay in; it is funded only by ledger transfers and never goes below zero.
- The kind's ``on_create`` / ``on_edit`` hooks run after the write, in the same transaction.
- Nothing here commits; the caller's unit of work does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from incentive.auth.principal import Principal
from incentive.campaigns.errors import CampaignClosed, CampaignNotEditable, CampaignVersionConflict
from incentive.campaigns.kinds import CampaignFacts, get_kind, parse_rules, stored_rules
from incentive.campaigns.models import Campaign, CampaignTransition
from incentive.db import utcnow
from incentive.errors import Forbidden, InvalidField, NotFound
from incentive.kit.pagination import KeyId, Keyset, KeyTime, Slice
from incentive.ledger import service as ledger
from incentive.templates import service as templates
from incentive.templates.fields import customer_content, reviewed_texts

BUDGET_ACCOUNT_NAME = "budget"
EDITABLE = ("draft", "rejected")

# --------------------------------------------------------------------------- rules


def facts(campaign: Campaign) -> CampaignFacts:
    """The snapshot of a campaign that its kind's hooks and other domains see."""
    return CampaignFacts(
        id=campaign.id,
        kind=campaign.kind,
        status=campaign.status,
        owner_type=campaign.owner_type,
        merchant_id=campaign.merchant_id,
        name=campaign.name,
        starts_at=campaign.starts_at,
        ends_at=campaign.ends_at,
        rules=stored_rules(campaign.rules),
        budget_account_id=campaign.budget_account_id,
        version=campaign.version,
    )


async def campaign_facts(session: AsyncSession, campaign_id: str) -> CampaignFacts:
    return facts(await get_campaign(session, campaign_id))


def _check_window(starts_at: datetime, ends_at: datetime) -> None:
    if ends_at <= starts_at:
        raise InvalidField("ends_at", "after-starts_at", "ends_at must be after starts_at")


# --------------------------------------------------------------------------- access


def can_manage(principal: Principal, campaign: Campaign | CampaignFacts) -> bool:
    if principal.is_operator:
        return True
    return (
        principal.role == "merchant"
        and principal.merchant_id is not None
        and campaign.owner_type == "merchant"
        and campaign.merchant_id == principal.merchant_id
    )


def can_see(principal: Principal, campaign: Campaign | CampaignFacts) -> bool:
    """Whether the caller may know the campaign exists: every route answers an unseen
    campaign with 404, before looking at its state."""
    return can_manage(principal, campaign) or campaign.status == "active"


async def get_campaign(session: AsyncSession, campaign_id: str) -> Campaign:
    campaign = (
        await session.execute(
            select(Campaign)
            .where(Campaign.id == campaign_id)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if campaign is None:
        raise NotFound(f"campaign {campaign_id} does not exist", campaign_id=campaign_id)
    return campaign


async def visible_campaign(
    session: AsyncSession, principal: Principal, campaign_id: str
) -> Campaign:
    """The campaign if the caller may see it; 404 otherwise (existence is not revealed)."""
    campaign = await get_campaign(session, campaign_id)
    if not can_see(principal, campaign):
        raise NotFound(f"campaign {campaign_id} does not exist", campaign_id=campaign_id)
    return campaign


async def managed_campaign(
    session: AsyncSession, principal: Principal, campaign_id: str
) -> Campaign:
    """The campaign if the caller may change it: 404 if unseen, 403 if only seen."""
    campaign = await visible_campaign(session, principal, campaign_id)
    if not can_manage(principal, campaign):
        raise Forbidden("only the owning merchant's staff or an operator may change this campaign")
    return campaign


# --------------------------------------------------------------------------- create / edit


async def create_campaign(
    session: AsyncSession,
    principal: Principal,
    *,
    kind: str,
    name: str,
    description: str,
    starts_at: datetime,
    ends_at: datetime,
    rules: Mapping[str, Any],
    merchant_id: str | None = None,
    template: tuple[str, int | None] | None = None,
    content: Mapping[str, Any] | None = None,
) -> Campaign:
    """Save a draft campaign and open its (empty) budget account in the ledger.

    Merchant staff create for their own merchant only; operators create platform campaigns,
    or a merchant's campaign when ``merchant_id`` is given. ``template`` (key, version or
    None for the latest published) checks ``content`` against its fields. Invalid input
    writes nothing.
    """
    typed = parse_rules(kind, rules)
    template_key = template_version = stored_content = None
    if template is not None:
        made_from = await templates.for_campaign(session, kind, *template)
        template_key, template_version = made_from.key, made_from.version
        stored_content = templates.content_of(made_from, content or {})
    elif content is not None:
        raise InvalidField("content", "template", "content: only a campaign made from a template")
    strategy = get_kind(kind)
    _check_window(starts_at, ends_at)
    if principal.is_operator:
        owner_type = "merchant" if merchant_id else "operator"
    elif principal.role == "merchant" and principal.merchant_id:
        if merchant_id is not None and merchant_id != principal.merchant_id:
            raise Forbidden("merchant staff create campaigns for their own merchant only")
        owner_type, merchant_id = "merchant", principal.merchant_id
    else:
        raise Forbidden("only merchant staff and operators create campaigns")
    now = utcnow()
    campaign = Campaign(
        kind=kind,
        owner_type=owner_type,
        merchant_id=merchant_id,
        name=name,
        description=description,
        starts_at=starts_at,
        ends_at=ends_at,
        status="draft",
        rules=typed.model_dump(mode="json"),
        created_by=principal.id,
        created_at=now,
        updated_at=now,
        version=1,
        template_key=template_key,
        template_version=template_version,
        content=stored_content,
    )
    try:
        async with session.begin_nested():
            session.add(campaign)
            await session.flush()
    except IntegrityError:
        # The only reference a caller chooses is the merchant.
        raise InvalidField(
            "merchant_id", "exists", f"merchant {merchant_id} does not exist"
        ) from None
    account = await ledger.open_account(
        session,
        owner_type="campaign",
        owner_id=campaign.id,
        asset=strategy.budget_asset(typed),
        name=BUDGET_ACCOUNT_NAME,
    )
    campaign.budget_account_id = account.id
    session.add(
        CampaignTransition(
            campaign_id=campaign.id,
            from_status=None,
            to_status="draft",
            actor=principal.id,
            actor_role=principal.role,
            reason="created",
            at=now,
        )
    )
    await session.flush()
    await strategy.on_create(session, facts(campaign))
    return campaign


async def edit_campaign(
    session: AsyncSession,
    principal: Principal,
    campaign_id: str,
    *,
    changes: Mapping[str, Any],
    version: int | None = None,
) -> Campaign:
    """Apply ``changes`` (name, description, starts_at, ends_at, rules, content) to a draft or
    rejected campaign with one conditional UPDATE (status still editable, and still at
    ``version`` when given). Rules are replaced as a whole and keep the budget's asset."""
    campaign = await managed_campaign(session, principal, campaign_id)
    values: dict[str, Any] = {
        k: v for k, v in changes.items() if k in ("name", "description", "starts_at", "ends_at")
    }
    if "rules" in changes:
        strategy = get_kind(campaign.kind)
        typed = parse_rules(campaign.kind, changes["rules"])
        old_asset = strategy.budget_asset(stored_rules(campaign.rules))
        if strategy.budget_asset(typed) != old_asset:
            raise InvalidField(
                "rules.budget_asset", "unchanged", f"the budget is held in {old_asset}"
            )
        values["rules"] = typed.model_dump(mode="json")
    if "content" in changes:
        if campaign.template_key is None or campaign.template_version is None:
            raise InvalidField(
                "content", "template", "content: only a campaign made from a template"
            )
        values["content"] = await templates.checked_content(
            session, campaign.template_key, campaign.template_version, changes["content"]
        )
    _check_window(
        values.get("starts_at", campaign.starts_at), values.get("ends_at", campaign.ends_at)
    )
    conditions = [Campaign.id == campaign_id, Campaign.status.in_(EDITABLE)]
    if version is not None:
        conditions.append(Campaign.version == version)
    # The window is re-checked by the CHECK constraint against the row as it is now.
    changed = (
        await session.execute(
            update(Campaign)
            .where(*conditions)
            .values(**values, updated_at=utcnow(), version=Campaign.version + 1)
            .returning(Campaign.id)
            .execution_options(synchronize_session=False)
        )
    ).first()
    if changed is None:
        current = await get_campaign(session, campaign_id)
        if current.status not in EDITABLE:
            raise CampaignNotEditable(
                f"{_article(current.status)} {current.status} campaign cannot be edited; "
                "only draft or rejected",
                campaign_status=current.status,
            )
        raise CampaignVersionConflict(
            f"campaign is at version {current.version}, not {version}", version=current.version
        )
    edited = await get_campaign(session, campaign_id)
    await get_kind(edited.kind).on_edit(session, facts(edited))
    return edited


async def customer_texts(session: AsyncSession, campaign: Campaign) -> list[tuple[str, str]]:
    """``(field, text)`` of everything a customer reads of the campaign: its name, its
    description and its template's reviewed fields (``content.<field>[.<item>]``)."""
    texts = [("name", campaign.name), ("description", campaign.description)]
    if campaign.template_key is not None and campaign.template_version is not None:
        template = await templates.get(session, campaign.template_key, campaign.template_version)
        texts += reviewed_texts(templates.fields_of(template), campaign.content or {})
    return [(path, text) for path, text in texts if text]


async def shown_content(
    session: AsyncSession, principal: Principal, campaign: Campaign
) -> dict[str, Any] | None:
    """The campaign's content as the caller may see it: whole for its managers, without the
    template's unreviewed texts for everyone else."""
    if campaign.content is None or campaign.template_key is None:
        return campaign.content
    if can_manage(principal, campaign) or campaign.template_version is None:
        return campaign.content
    fields = await templates.frozen_fields(
        session, campaign.template_key, campaign.template_version
    )
    return customer_content(fields, campaign.content)


# --------------------------------------------------------------------------- listing


CAMPAIGN_ORDER = Keyset((Campaign.created_at, Campaign.id), tuple[KeyTime, KeyId])


async def list_campaigns(
    session: AsyncSession,
    principal: Principal,
    *,
    status: str | None = None,
    kind: str | None = None,
    merchant_id: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Slice[Campaign]:
    """Newest first. Operators see every campaign; merchant staff their merchant's and the
    active ones; customers only active campaigns whose window has not closed."""
    stmt = select(Campaign)
    if principal.is_operator:
        pass
    elif principal.role == "merchant" and principal.merchant_id:
        stmt = stmt.where(
            or_(
                and_(
                    Campaign.owner_type == "merchant",
                    Campaign.merchant_id == principal.merchant_id,
                ),
                Campaign.status == "active",
            )
        )
    else:
        stmt = stmt.where(Campaign.status == "active", Campaign.ends_at > utcnow())
    if status is not None:
        stmt = stmt.where(Campaign.status == status)
    if kind is not None:
        stmt = stmt.where(Campaign.kind == kind)
    if merchant_id is not None:
        stmt = stmt.where(Campaign.merchant_id == merchant_id)
    return await CAMPAIGN_ORDER.fetch(session, stmt, cursor=cursor, limit=limit)


async def campaigns_for_activity(
    session: AsyncSession, kinds: Sequence[str], also: Iterable[str] = ()
) -> list[CampaignFacts]:
    """The campaigns an activity is offered to: every active campaign of ``kinds``, and the
    campaigns named in ``also`` whatever their status (those that answered the activity a
    follow-up refers to: a refund reaches its payment's campaign after it ended). Id order."""
    wanted = set(also)
    clauses = []
    if kinds:
        clauses.append(and_(Campaign.status == "active", Campaign.kind.in_(kinds)))
    if wanted:
        clauses.append(Campaign.id.in_(sorted(wanted)))
    if not clauses:
        return []
    rows = await session.scalars(select(Campaign).where(or_(*clauses)).order_by(Campaign.id))
    return [facts(row) for row in rows]


async def active_ids(conn: AsyncConnection, kind: str) -> set[str]:
    """Ids of the active campaigns of ``kind``, on a read-only connection (periodic jobs read
    before they write: ``Database.reader()``)."""
    rows = await conn.scalars(
        select(Campaign.id).where(Campaign.status == "active", Campaign.kind == kind)
    )
    return set(rows)


# --------------------------------------------------------------------------- budget


@dataclass(frozen=True)
class Budget:
    """A campaign's budget account as the ledger holds it (and the transfer that funded it)."""

    campaign_id: str
    account_id: int
    asset: str
    balance: int
    transfer_id: int | None = None


async def budget(
    session: AsyncSession, campaign: Campaign, transfer_id: int | None = None
) -> Budget:
    if campaign.budget_account_id is None:
        raise NotFound(f"campaign {campaign.id} has no budget account")
    account = await ledger.get_account(session, campaign.budget_account_id)
    return Budget(campaign.id, account.id, account.asset, account.balance, transfer_id)


async def fund_budget(
    session: AsyncSession,
    principal: Principal,
    campaign_id: str,
    *,
    amount: int,
    from_account_id: int,
    idempotency_key: str,
) -> Budget:
    """Move ``amount`` from ``from_account_id`` into the campaign's budget, once per key.

    The ledger transfer carries ``idempotency_key``: replaying it moves nothing and returns
    the original transfer. The source account must hold the budget's asset and (unless it
    is a funding account) enough balance, else the ledger refuses and nothing moves.
    Ended and cancelled campaigns take no more budget.
    """
    campaign = await managed_campaign(session, principal, campaign_id)
    if campaign.status in ("ended", "cancelled"):
        raise CampaignClosed(
            f"{_article(campaign.status)} {campaign.status} campaign takes no more budget",
            campaign_status=campaign.status,
        )
    if campaign.budget_account_id is None:
        raise NotFound(f"campaign {campaign.id} has no budget account")
    transfer = await ledger.transfer(
        session,
        idempotency_key=idempotency_key,
        debit_account_id=from_account_id,
        credit_account_id=campaign.budget_account_id,
        amount=amount,
        kind="campaign.budget",
        reference=f"campaign:{campaign.id}",
        metadata={"campaign_id": campaign.id, "by": principal.id},
    )
    return await budget(session, campaign, transfer.id)


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
