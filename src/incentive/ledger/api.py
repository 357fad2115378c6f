"""Ledger HTTP API: balances and history for their owners, transfers for operators."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from incentive.auth.principal import CurrentUser, Operator, Principal
from incentive.deps import Session
from incentive.errors import AUTHENTICATED, VALIDATION, Forbidden, IdempotencyConflict, problems
from incentive.kit.idempotency import Claim, idempotent
from incentive.kit.jsonbody import JSONBodyRoute
from incentive.kit.pagination import DEFAULT_LIMIT, Cursor, Limit, Slice
from incentive.ledger import service
from incentive.ledger.errors import (
    AccountNotFound,
    AssetMismatch,
    BalanceLimit,
    InsufficientFunds,
    TransferKeyReused,
)
from incentive.ledger.models import Account, Transfer
from incentive.ledger.owners import check_owner_exists
from incentive.ledger.schemas import (
    AccountIn,
    AccountOut,
    AccountPage,
    BatchIn,
    BatchOut,
    TransferIn,
    TransferOut,
    TransferPage,
)

router = APIRouter(tags=["ledger"], route_class=JSONBodyRoute)

PathId = Annotated[int, Path(ge=1, le=2**63 - 1)]


OPERATOR = (*AUTHENTICATED, *VALIDATION, Forbidden)
OWNED = (*OPERATOR, AccountNotFound)
MOVING = (
    *OWNED,
    InsufficientFunds,
    BalanceLimit,
    AssetMismatch,
    TransferKeyReused,
    IdempotencyConflict,
)


def _owners(principal: Principal) -> list[tuple[str, str]]:
    """The account owners a caller speaks for: itself, and its merchant for merchant staff."""
    owners = [("user", principal.id)]
    if principal.role == "merchant" and principal.merchant_id:
        owners.append(("merchant", principal.merchant_id))
    return owners


def _authorize(principal: Principal, account: Account) -> None:
    if principal.is_operator or (account.owner_type, account.owner_id) in _owners(principal):
        return
    # The same answer as for an account that does not exist: an id reveals nothing.
    raise AccountNotFound(f"account {account.id} does not exist", account_id=account.id)


def _page(page: Slice[Transfer]) -> TransferPage:
    return TransferPage.of(page, TransferOut.model_validate)


@router.get(
    "/me/accounts",
    name="list_my_accounts",
    response_model=AccountPage,
    responses=problems(*AUTHENTICATED, *VALIDATION),
)
async def my_accounts(
    principal: CurrentUser, session: Session, cursor: Cursor = None, limit: Limit = DEFAULT_LIMIT
) -> AccountPage:
    """The caller's accounts (and, for merchant staff, their merchant's), by id."""
    page = await service.account_page(session, _owners(principal), cursor, limit)
    return AccountPage.of(page, AccountOut.model_validate)


@router.get(
    "/me/transfers",
    name="list_my_transfers",
    response_model=TransferPage,
    responses=problems(*AUTHENTICATED, *VALIDATION),
)
async def my_transfers(
    principal: CurrentUser, session: Session, cursor: Cursor = None, limit: Limit = DEFAULT_LIMIT
) -> TransferPage:
    """Transfers touching any of the caller's accounts, newest first, each once."""
    accounts = await service.accounts_of(session, _owners(principal))
    return _page(
        await service.history_of_accounts(session, [a.id for a in accounts], cursor, limit)
    )


@router.post("/accounts", response_model=AccountOut, status_code=200, responses=problems(*OPERATOR))
async def open_account(body: AccountIn, principal: Operator, session: Session) -> AccountOut:
    """Get or create an account (idempotent by nature: same owner/asset/name, same account)."""
    await check_owner_exists(session, body.owner_type, body.owner_id)
    account = await service.open_account(
        session,
        owner_type=body.owner_type,
        owner_id=body.owner_id,
        asset=body.asset,
        name=body.name,
        allow_negative=body.allow_negative,
    )
    return AccountOut.model_validate(account)


@router.get("/accounts/{account_id}", response_model=AccountOut, responses=problems(*OWNED))
async def get_account(account_id: PathId, principal: CurrentUser, session: Session) -> AccountOut:
    """One account and its balance (its owners and operators)."""
    account = await service.get_account(session, account_id)
    _authorize(principal, account)
    return AccountOut.model_validate(account)


@router.get(
    "/accounts/{account_id}/transfers",
    name="list_account_transfers",
    response_model=TransferPage,
    responses=problems(*OWNED),
)
async def account_transfers(
    account_id: PathId,
    principal: CurrentUser,
    session: Session,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> TransferPage:
    """Transfers touching the account, newest first (its owners and operators)."""
    account = await service.get_account(session, account_id)
    _authorize(principal, account)
    return _page(await service.history(session, account_id, cursor, limit))


@router.post("/transfers", response_model=TransferOut, status_code=201, responses=problems(*MOVING))
@idempotent(status_code=201)
async def create_transfer(
    body: TransferIn, principal: Operator, session: Session, claim: Claim
) -> TransferOut:
    """Move value between two accounts. The `Idempotency-Key` header is the transfer's key."""
    transfer = await service.transfer(
        session,
        idempotency_key=f"api:{principal.id}:{claim.key}",
        debit_account_id=body.debit_account_id,
        credit_account_id=body.credit_account_id,
        amount=body.amount,
        kind=body.kind,
        reference=body.reference,
        metadata=body.metadata,
    )
    return TransferOut.model_validate(transfer)


@router.post(
    "/transfers/batch",
    name="create_transfer_batch",
    response_model=BatchOut,
    status_code=200,
    responses=problems(*MOVING),
)
@idempotent(status_code=200)
async def create_batch(body: BatchIn, principal: Operator, session: Session) -> BatchOut:
    """All items or none; items whose key was applied before are skipped and listed."""
    result = await service.batch_transfer(
        session,
        [
            service.TransferItem(
                idempotency_key=i.idempotency_key,
                debit_account_id=i.debit_account_id,
                credit_account_id=i.credit_account_id,
                amount=i.amount,
                kind=i.kind,
                reference=i.reference,
                metadata=i.metadata,
            )
            for i in body.items
        ],
    )
    return BatchOut(
        created=result.created, skipped=len(result.skipped_keys), skipped_keys=result.skipped_keys
    )
