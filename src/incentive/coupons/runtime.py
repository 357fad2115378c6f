"""Coupon work done by workers: provider calls sent after their commit, expiry, provider
batches pulled, and the daily reconciliation with each provider."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from sqlalchemy import select

from incentive.coupons import calls, providers, reconcile, service
from incentive.coupons.keys import EXPIRY_SECONDS, SYNC_SECONDS
from incentive.coupons.metrics import EXPIRED
from incentive.coupons.models import CouponProvider
from incentive.coupons.provider import ProviderUnavailable
from incentive.db import Database
from incentive.domains import WorkerJob

log = logging.getLogger(__name__)

CALL_POLL_SECONDS = 0.2
RECONCILE_SECONDS = 86_400.0


async def start(app: FastAPI) -> None:
    app.state.coupon_sender = calls.Sender(app.state.db)


async def stop(app: FastAPI) -> None:
    sender = getattr(app.state, "coupon_sender", None)
    if sender is not None:
        await sender.aclose()


async def _send_calls(app: FastAPI) -> None:
    sender: calls.Sender = app.state.coupon_sender
    while await sender.run_once():
        pass


async def expire_due(db: Database) -> int:
    """Expire every coupon due (in pages, one transaction each)."""
    total = 0
    while True:
        async with db.unit_of_work() as session:
            n = await service.expire_due(session)
        total += n
        if n == 0:
            break
    if total:
        EXPIRED.inc(total)
        log.info("coupons expired", extra={"count": total})
    return total


async def _expire(app: FastAPI) -> None:
    await expire_due(app.state.db)


async def _active_providers(db: Database) -> list[str]:
    async with db.reader() as conn:  # a read: no write transaction for a periodic job
        return list(
            await conn.scalars(
                select(CouponProvider.code)
                .where(CouponProvider.state == "active")
                .order_by(CouponProvider.code)
            )
        )


async def _sync(app: FastAPI) -> None:
    for code in await _active_providers(app.state.db):
        try:
            await providers.sync(app.state.db, code)
        except ProviderUnavailable as exc:  # an answer by the provider's state: one line
            log.warning("provider batches not synced", extra={"provider": code, "error": str(exc)})
        except Exception:
            log.exception("provider batches not synced", extra={"provider": code})


async def _reconcile(app: FastAPI) -> None:
    day = reconcile.yesterday()
    for code in await _active_providers(app.state.db):
        try:
            report = await reconcile.reconcile(app.state.db, code, day)
        except ProviderUnavailable as exc:
            log.warning("provider not reconciled", extra={"provider": code, "error": str(exc)})
            continue
        except Exception:
            log.exception("provider not reconciled", extra={"provider": code})
            continue
        log.info("provider reconciled", extra={"provider": code, **report.as_json()})


JOBS = (
    WorkerJob("coupons.provider_calls", _send_calls, every=CALL_POLL_SECONDS),
    WorkerJob("coupons.expire", _expire, every=EXPIRY_SECONDS),
    WorkerJob("coupons.sync_providers", _sync, every=SYNC_SECONDS),
    WorkerJob("coupons.reconcile", _reconcile, every=RECONCILE_SECONDS),
)
