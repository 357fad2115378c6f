"""The ``flash_sale`` campaign kind: its rules, and the stock work its lifecycle needs.

The campaign row holds everything the reviewer approved (rules and window); the
``flash_sales`` row holds only what activation decided (the bucket count) and when the stock
was split. So an edit before review can never leave the sale running something else.

- ``on_create``: the ``flash_sales`` row, for every route that creates the campaign.
- ``on_activate``: on every route into ``active``; the first time it fixes the bucket count
  (rules, else live ``flash_sale.buckets``) and publishes ``flash_sale.activated``, whose
  subscriber splits the stock exactly once (resuming a paused sale changes nothing).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator
from sqlalchemy.ext.asyncio import AsyncSession

from incentive import events
from incentive.campaigns import service as campaigns
from incentive.campaigns.kinds import CampaignFacts, CampaignKind, KindRules, register_kind
from incentive.config import live_config
from incentive.db import utcnow
from incentive.flash_sales.keys import FLASH_SALE_BUCKETS
from incentive.flash_sales.models import FlashSale
from incentive.kit.amounts import Code, Count, PositiveFen
from incentive.kit.text import Name
from incentive.stock import runtime

ACTIVATED = "flash_sale.activated"


def pool_of(sale_id: str) -> str:
    return f"fs:{sale_id}"


def bucket_count(buckets: int | None, total_stock: int) -> int:
    """The buckets a sale's stock is split into: its own, else live ``flash_sale.buckets``,
    never more than its units."""
    return min(buckets or int(live_config.get(FLASH_SALE_BUCKETS)), total_stock)


class FlashSaleRules(KindRules):
    kind: Literal["flash_sale"] = "flash_sale"
    sku: Code
    item_name: Name
    price_fen: PositiveFen
    total_stock: Count
    per_user_limit: Count = 1
    buckets: Annotated[int, Field(strict=True, ge=1, le=1024)] | None = Field(
        None, description="stock sub-buckets; unset = live flash_sale.buckets at activation"
    )

    @model_validator(mode="after")
    def _buckets_fit(self) -> FlashSaleRules:
        if self.buckets is not None and self.buckets > self.total_stock:
            raise ValueError("buckets cannot exceed total_stock")
        if self.per_user_limit > self.total_stock:
            raise ValueError("per_user_limit cannot exceed total_stock")
        return self


def sale_rules(campaign: CampaignFacts) -> FlashSaleRules:
    rules = campaign.rules
    assert isinstance(rules, FlashSaleRules), f"campaign {campaign.id} is not a flash sale"
    return rules


class FlashSaleKind(CampaignKind):
    name = "flash_sale"
    rules = FlashSaleRules

    def budget_asset(self, rules: KindRules) -> str:
        return "CNY"

    async def on_create(self, session: AsyncSession, campaign: CampaignFacts) -> None:
        session.add(FlashSale(campaign_id=campaign.id, created_at=utcnow()))
        await session.flush()

    async def on_activate(self, session: AsyncSession, campaign: CampaignFacts) -> None:
        sale = await session.get(
            FlashSale, campaign.id, with_for_update=True, populate_existing=True
        )
        assert sale is not None, f"flash sale {campaign.id} has no stock row"
        if sale.activated_at is not None:
            return  # a resume: the stock was split at the first activation
        rules = sale_rules(campaign)
        sale.buckets = bucket_count(rules.buckets, rules.total_stock)
        sale.activated_at = utcnow()
        await events.publish(
            session,
            ACTIVATED,
            {"flash_sale_id": campaign.id, "total": rules.total_stock, "buckets": sale.buckets},
            key=campaign.id,
        )
        await session.flush()


async def split_stock(session: AsyncSession, event: events.Event) -> None:
    """Subscriber of ``flash_sale.activated``: split the stock into buckets, once.

    Twice guarded: the engine's split is a no-op for an existing pool, and ``split_at`` is
    written in the handler's transaction (with the processed-event record).
    """
    sale_id = str(event.payload["flash_sale_id"])
    sale = await session.get(FlashSale, sale_id, with_for_update=True)
    if sale is None or sale.split_at is not None or sale.buckets is None:
        return
    total = sale_rules(await campaigns.campaign_facts(session, sale_id)).total_stock
    await runtime.current().split(pool_of(sale_id), total, sale.buckets)
    sale.split_at = utcnow()


register_kind(FlashSaleKind())
events.subscribe(ACTIVATED, "flash_sales.split_stock", split_stock)
