from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from incentive.kit.text import Line, Name, Prose

Quantity = Annotated[int, Field(strict=True, ge=1, le=1_000)]


class FlashSaleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    description: Prose = Field("", max_length=2_000)
    sku: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    item_name: Name
    price_fen: Annotated[int, Field(strict=True, ge=1, le=10**12)]
    total_stock: Annotated[int, Field(strict=True, ge=1, le=10**9)]
    per_user_limit: Annotated[int, Field(strict=True, ge=1, le=10**6)] = 1
    buckets: Annotated[int, Field(strict=True, ge=1, le=1024)] | None = Field(
        None, description="stock sub-buckets; unset = live config flash_sale.buckets"
    )
    starts_at: datetime
    ends_at: datetime
    merchant_id: Line | None = Field(
        None, min_length=1, max_length=32, description="operators only: the owning merchant"
    )


class FlashSaleOut(BaseModel):
    id: str
    status: str
    sku: str
    item_name: str
    price_fen: int
    total: int
    sold: int
    remaining: int | None = Field(description="units left in the stock store (None before split)")
    buckets: list[int] = Field(description="units left per bucket (empty before split)")
    per_user_limit: int
    starts_at: datetime
    ends_at: datetime
    activated_at: datetime | None
    split: bool
    flow_open: bool


class PurchaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quantity: Quantity


class TakeOut(BaseModel):
    bucket: int
    quantity: int


class PurchaseOut(BaseModel):
    id: str
    flash_sale_id: str
    quantity: int
    bucket: int = Field(description="the bucket served (the first, when taken across several)")
    takes: list[TakeOut]
    created_at: datetime


class ReconcileOut(BaseModel):
    flash_sale_id: str
    total: int
    committed: int
    before: list[int] | None = Field(description="bucket levels found (None: pool missing)")
    after: list[int]
    drift: int = Field(description="(total - committed) - units found in the store")
    quotas_repaired: int
    repaired: bool
