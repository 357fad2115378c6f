from __future__ import annotations

from fastapi import APIRouter

from incentive.auth.principal import CurrentUser
from incentive.auth.schemas import MeOut

router = APIRouter(tags=["auth"])


@router.get("/me", response_model=MeOut)
async def me(principal: CurrentUser) -> MeOut:
    return MeOut(
        id=principal.id,
        username=principal.name,
        role=principal.role,
        merchant_id=principal.merchant_id,
    )
