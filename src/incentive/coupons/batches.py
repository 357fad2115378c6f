"""Coupon batches: a campaign's batch opened on activation (ours created from the approved
rules, a provider's synced batch linked) and closed when the campaign leaves ``active``;
listing, counting, and codes imported for our own batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.campaigns import service as campaigns
from incentive.campaigns.kinds import CampaignFacts
from incentive.coupons.errors import BatchNotFound
from incentive.coupons.models import Coupon, CouponBatch, CouponProvider, ImportedCode
from incentive.coupons.rules import DEFAULT_VALID_DAYS, CouponRules
from incentive.db import insert as db_insert
from incentive.db import new_id, one_of
from incentive.errors import InvalidField
from incentive.kit.codes import normalize_code
from incentive.kit.idempotency import Caller
from incentive.kit.pagination import KeyId, Keyset, KeyTime, Slice

IMPORT_MAX = 100_000


def _terms(rules: CouponRules) -> dict[str, Any]:
    return {
        "per_customer_limit": rules.per_user_limit,
        "valid_days": rules.valid_days
        or (None if rules.valid_until or not rules.own else DEFAULT_VALID_DAYS),
        "task": rules.task.model_dump(mode="json") if rules.task else None,
    }


async def open_for(session: AsyncSession, campaign: CampaignFacts) -> CouponBatch:
    """Open the campaign's batch for claims (on every route into ``active``): our own batch
    is created on first activation, its terms set from the approved rules every time; a
    provider's synced batch is linked to the campaign. Idempotent."""
    rules = campaign.rules
    assert isinstance(rules, CouponRules)
    batch = await session.scalar(select(CouponBatch).where(CouponBatch.campaign_id == campaign.id))
    if rules.own:
        quantity = rules.quantity or 0
        values = {
            **_terms(rules),
            "name": campaign.name,
            "open": True,
            "claims_until": campaign.ends_at,
            "face_value_fen": rules.face_value_fen,
            "rate_bp": rules.rate_bp,
            "max_discount_fen": rules.max_discount_fen,
            "min_spend_fen": rules.min_spend_fen,
            "valid_from": campaign.starts_at if rules.valid_until else None,
            "valid_until": rules.valid_until,
        }
        if batch is None:
            imported = rules.codes == "imported"
            batch = CouponBatch(
                id=new_id(),
                campaign_id=campaign.id,
                codes_imported=imported,
                quantity=quantity,
                stock=0 if imported else quantity,
                claimed=0,
                **values,
            )
            session.add(batch)
            await session.flush()
            return batch
        if rules.codes == "generated":
            # An edit went back through review: the approved quantity is what runs (the
            # batch is closed until this opens it, so no claim moves ``claimed`` meanwhile).
            values["stock"] = max(quantity - batch.claimed, 0)
        values["quantity"] = quantity
        await session.execute(
            update(CouponBatch)
            .where(CouponBatch.id == batch.id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        await session.refresh(batch)
        return batch
    synced = await synced_batch(session, rules.provider or "", rules.provider_batch or "")
    if synced.campaign_id not in (None, campaign.id):
        raise InvalidField(
            "rules.provider_batch",
            "unused",
            f"provider batch {rules.provider_batch} already serves campaign {synced.campaign_id}",
        )
    await session.execute(
        update(CouponBatch)
        .where(CouponBatch.id == synced.id)
        .values(
            campaign_id=campaign.id,
            open=True,
            claims_until=campaign.ends_at,
            name=campaign.name,
            **_terms(rules),
        )
        .execution_options(synchronize_session=False)
    )
    await session.refresh(synced)
    return synced


async def synced_batch(session: AsyncSession, code: str, external_id: str) -> CouponBatch:
    """The batch ``external_id`` of provider ``code`` as last synced (422 naming
    ``rules.provider_batch`` if it was never synced: sync the provider first)."""
    batch = await session.scalar(
        select(CouponBatch)
        .join(CouponProvider, CouponProvider.id == CouponBatch.provider_id)
        .where(CouponProvider.code == code, CouponBatch.external_id == external_id)
    )
    if batch is None:
        raise InvalidField(
            "rules.provider_batch",
            "synced",
            f"provider {code} has no batch {external_id} synced: sync the provider first",
        )
    return batch


async def close_for(session: AsyncSession, campaign_id: str) -> None:
    """No more claims (the campaign left ``active``); coupons already claimed stay valid."""
    await session.execute(
        update(CouponBatch)
        .where(CouponBatch.campaign_id == campaign_id)
        .values(open=False)
        .execution_options(synchronize_session=False)
    )


async def get_batch(session: AsyncSession, batch_id: str) -> CouponBatch:
    batch = await session.get(CouponBatch, batch_id)
    if batch is None:
        raise BatchNotFound(f"coupon batch {batch_id} does not exist", batch_id=batch_id)
    return batch


BATCH_ORDER = Keyset((CouponBatch.created_at, CouponBatch.id), tuple[KeyTime, KeyId])


async def list_batches(
    session: AsyncSession,
    *,
    campaign_ids: Sequence[str] | None = None,
    open_only: bool = False,
    provider_id: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Slice[CouponBatch]:
    stmt = select(CouponBatch)
    if campaign_ids is not None:
        stmt = stmt.where(CouponBatch.campaign_id.in_(list(campaign_ids) or ["-"]))
    if open_only:
        stmt = stmt.where(CouponBatch.open.is_(True))
    if provider_id is not None:
        stmt = stmt.where(CouponBatch.provider_id == provider_id)
    return await BATCH_ORDER.fetch(session, stmt, cursor=cursor, limit=limit)


async def counts(session: AsyncSession, batch_id: str) -> dict[str, int]:
    """The batch's coupons by state."""
    rows = await session.execute(
        select(Coupon.state, func.count()).where(Coupon.batch_id == batch_id).group_by(Coupon.state)
    )
    return {state: int(n) for state, n in rows.all()}


async def import_codes(
    session: AsyncSession, batch_id: str, codes: Sequence[str], actor: Caller
) -> tuple[int, int]:
    """Add imported codes to a batch whose rules import them: (added, duplicates). Each new
    code adds one to the stock, up to the approved quantity."""
    batch = await get_batch(session, batch_id)
    if batch.provider_id is not None or batch.campaign_id is None:
        raise InvalidField("batch", "imports-codes", "only our own batches take imported codes")
    wanted = sorted({normalize_code(c) for c in codes})
    room = batch.quantity - batch.claimed - batch.stock
    if len(wanted) > room:
        raise InvalidField(
            "codes", "within-quantity", f"{len(wanted)} codes but room for {max(room, 0)}"
        )
    taken = set(
        await session.scalars(select(Coupon.code).where(one_of(session, Coupon.code, wanted)))
    )
    fresh = [c for c in wanted if c not in taken]
    added = 0
    if fresh:
        added = len(
            list(
                await session.scalars(
                    db_insert(session, ImportedCode)
                    .values([{"code": c, "batch_id": batch_id} for c in fresh])
                    .on_conflict_do_nothing()
                    .returning(ImportedCode.code)
                )
            )
        )
    # The room is checked again in the statement that uses it: two imports at once both read
    # the room above, and only what still fits under the approved quantity may be added.
    fits = await session.scalar(
        update(CouponBatch)
        .where(
            CouponBatch.id == batch_id,
            CouponBatch.quantity - CouponBatch.claimed - CouponBatch.stock >= added,
        )
        .values(stock=CouponBatch.stock + added)
        .returning(CouponBatch.id)
        .execution_options(synchronize_session=False)
    )
    if fits is None:  # the unit of work rolls the inserted codes back with this refusal
        raise InvalidField(
            "codes", "within-quantity", f"{added} codes but another import took the room"
        )
    return added, len(wanted) - added


async def check_same_owner(
    session: AsyncSession, campaign: CampaignFacts, batch_id: str, field: str
) -> None:
    """A batch another domain gives from ``campaign`` (a sharer's, a referral's coupons)
    exists and is of a campaign with the same owner (a batch of no campaign, synced from a
    provider, only for the platform's campaigns); 422 naming ``field`` otherwise."""
    try:
        batch = await get_batch(session, batch_id)
    except BatchNotFound:
        raise InvalidField(field, "exists", f"{field}: no coupon batch {batch_id}") from None
    owner: tuple[str, str | None] = ("operator", None)
    if batch.campaign_id:
        facts = await campaigns.campaign_facts(session, batch.campaign_id)
        owner = (facts.owner_type, facts.merchant_id)
    if owner != (campaign.owner_type, campaign.merchant_id):
        raise InvalidField(
            field,
            "same-owner",
            f"{field}: the batch must be of a campaign of this campaign's owner",
        )
