"""HTTP helpers for the auth tests: log in, bearer headers, clients from other addresses."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, FastAPI

from incentive.auth.principal import CurrentPartner, Customer, MerchantStaff, Operator

PASSWORD = "correct horse battery"


def client_from(app: FastAPI, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def login(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> Any:
    r = await client.post("/api/v1/auth/token", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return r.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def guarded_router() -> APIRouter:
    """Throwaway routes, one per role guard, to test 401/403 without another domain."""
    router = APIRouter()

    @router.get("/operator-only")
    async def operator_only(principal: Operator) -> dict[str, str]:
        return {"id": principal.id}

    @router.get("/customer-only")
    async def customer_only(principal: Customer) -> dict[str, str]:
        return {"id": principal.id}

    @router.get("/merchant-staff")
    async def merchant_staff(principal: MerchantStaff) -> dict[str, str | None]:
        return {"id": principal.id, "merchant_id": principal.merchant_id}

    @router.get("/partner-only")
    async def partner_only(principal: CurrentPartner) -> dict[str, str]:
        return {"id": principal.id, "code": principal.name}

    return router
