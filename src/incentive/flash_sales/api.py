"""Flash sales over HTTP. Purchases carry their own idempotency (the purchase row holds the
``Idempotency-Key``) because they are group-committed outside the request transaction."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from incentive.auth.principal import (
    CurrentUser,
    CustomerOutsideTransaction,
    MerchantStaff,
    OperatorOutsideTransaction,
)
from incentive.campaigns import service as campaigns
from incentive.campaigns.errors import InvalidTransition
from incentive.deps import Session
from incentive.errors import (
    AUTHENTICATED,
    VALIDATION,
    Forbidden,
    IdempotencyConflict,
    NotFound,
    ServiceUnavailable,
    problems,
)
from incentive.flash_sales import service
from incentive.flash_sales.errors import AlreadyActivated, FlowClosed, LimitExceeded, NotOnSale
from incentive.flash_sales.keys import flash_sale_flow_open
from incentive.flash_sales.models import Purchase
from incentive.flash_sales.purchases import Purchases
from incentive.flash_sales.schemas import (
    FlashSaleIn,
    FlashSaleOut,
    PurchaseIn,
    PurchaseOut,
    ReconcileOut,
    TakeOut,
)
from incentive.kit.idempotency import IdempotencyKey, answer
from incentive.kit.jsonbody import JSONBodyRoute
from incentive.stock import StockEngine
from incentive.stock.errors import SoldOut

router = APIRouter(prefix="/flash-sales", tags=["flash sales"], route_class=JSONBodyRoute)

SEEING = (*AUTHENTICATED, *VALIDATION, NotFound)
MANAGING = (*AUTHENTICATED, *VALIDATION, Forbidden)
MANAGED = (*SEEING, Forbidden)

SaleId = Annotated[str, Path(min_length=32, max_length=32, pattern=r"^[0-9a-f]{32}$")]


def _engine(request: Request) -> StockEngine:
    engine: StockEngine = request.app.state.stock
    return engine


def _purchases(request: Request) -> Purchases:
    purchases: Purchases = request.app.state.flash_sales
    return purchases


async def _out(session: Any, engine: StockEngine, sale: service.Sale) -> FlashSaleOut:
    levels = await service.bucket_levels(engine, sale)
    return FlashSaleOut(
        id=sale.id,
        status=sale.campaign.status,
        sku=sale.rules.sku,
        item_name=sale.rules.item_name,
        price_fen=sale.rules.price_fen,
        total=sale.rules.total_stock,
        sold=await service.sold(session, sale.id),
        remaining=sum(levels) if levels is not None else None,
        buckets=levels or [],
        per_user_limit=sale.rules.per_user_limit,
        starts_at=sale.campaign.starts_at,
        ends_at=sale.campaign.ends_at,
        activated_at=sale.stock.activated_at,
        split=sale.stock.split_at is not None,
        flow_open=flash_sale_flow_open(sale.id),
    )


def _purchase_out(p: Purchase) -> PurchaseOut:
    takes = [TakeOut(bucket=int(b), quantity=int(q)) for b, q in p.takes]
    return PurchaseOut(
        id=p.id,
        flash_sale_id=p.flash_sale_id,
        quantity=p.quantity,
        bucket=takes[0].bucket,
        takes=takes,
        created_at=p.created_at,
    )


@router.post(
    "",
    name="create_flash_sale",
    response_model=FlashSaleOut,
    status_code=201,
    responses=problems(*MANAGING, NotFound),
)
async def create(
    body: FlashSaleIn, principal: MerchantStaff, session: Session, request: Request
) -> FlashSaleOut:
    """Create a flash sale (a draft campaign): submit it for review, approve, then activate."""
    sale = await service.create(session, principal, body)
    return await _out(session, _engine(request), sale)


@router.get(
    "/{sale_id}", name="get_flash_sale", response_model=FlashSaleOut, responses=problems(*SEEING)
)
async def get(
    sale_id: SaleId, principal: CurrentUser, session: Session, request: Request
) -> FlashSaleOut:
    """The sale with live stock: sold, remaining, per-bucket levels and flow state."""
    await campaigns.visible_campaign(session, principal, sale_id)
    sale = await service.get_sale(session, sale_id)
    return await _out(session, _engine(request), sale)


@router.post(
    "/{sale_id}/activate",
    name="activate_flash_sale",
    response_model=FlashSaleOut,
    responses=problems(*MANAGED, AlreadyActivated, InvalidTransition),
)
async def activate(
    sale_id: SaleId, principal: MerchantStaff, session: Session, request: Request
) -> FlashSaleOut:
    """Approved → active; the stock is split into buckets by the activation event, once."""
    sale = await service.activate(session, principal, sale_id)
    return await _out(session, _engine(request), sale)


@router.post(
    "/{sale_id}/purchases",
    name="create_flash_sale_purchase",
    response_model=PurchaseOut,
    status_code=201,
    responses={
        **problems(
            *SEEING,
            Forbidden,
            NotOnSale,
            LimitExceeded,
            SoldOut,
            IdempotencyConflict,
            FlowClosed,
            ServiceUnavailable,
        ),
    },
)
async def purchase(
    sale_id: SaleId,
    body: PurchaseIn,
    principal: CustomerOutsideTransaction,
    key: IdempotencyKey,
    request: Request,
) -> JSONResponse:
    """Buy ``quantity`` units. 201 only once the purchase is committed; a retry with the same
    `Idempotency-Key` and quantity answers the recorded purchase with the same 201 and
    `Idempotent-Replayed: true` (the replay convention of every value-moving POST). 404 for a
    sale the buyer may not see (any status but active); 409 `sold-out` / `limit-exceeded` /
    `not-on-sale`; 503 `flow-closed` (with `Retry-After`) while flow control is off."""
    result = await _purchases(request).buy(principal, sale_id, body.quantity, key)
    content = _purchase_out(result.purchase).model_dump(mode="json")
    return answer(content, 201, replayed=result.replayed)


@router.post(
    "/{sale_id}/reconcile",
    name="reconcile_flash_sale_stock",
    response_model=ReconcileOut,
    responses=problems(*MANAGED, NotOnSale, ServiceUnavailable),
)
async def reconcile(
    sale_id: SaleId, principal: OperatorOutsideTransaction, request: Request, force: bool = False
) -> ReconcileOut:
    """Reset the stock store to the database's truth when they drift (or always, with
    `force`, e.g. after the store lost its data). Pauses the sale for
    `flash_sale.drain_seconds` while it works."""
    return await service.reconcile(
        request.app.state.db, _engine(request), sale_id, actor=principal.name, force=force
    )
