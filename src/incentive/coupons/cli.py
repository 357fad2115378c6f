"""CLI: `incentive coupons providers add|list`, `sync`, `reconcile`, `expire`, `send-calls`
against the configured database. Each prints one JSON object; a refusal prints
``error: ...`` on stderr and exits 2 for invalid input, 1 otherwise."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.coupons import calls, providers, reconcile
from incentive.coupons import runtime as coupon_work
from incentive.coupons.provider import ProviderUnavailable
from incentive.errors import BadRequest, IncentiveError
from incentive.kit.commands import command_database, echo_json, fail, run_work
from incentive.kit.pagination import MAX_LIMIT

coupons_app = typer.Typer(no_args_is_help=True, help="Coupons: providers, reconciliation")
providers_app = typer.Typer(no_args_is_help=True, help="Third-party coupon providers")
coupons_app.add_typer(providers_app, name="providers")


def register(app: typer.Typer) -> None:
    app.add_typer(coupons_app, name="coupons")


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except BadRequest as exc:
        fail(exc.detail, 2)
    except IncentiveError as exc:
        fail(exc.detail, 1)
    except ProviderUnavailable as exc:
        fail(f"provider unavailable: {exc}", 1)


@providers_app.command("add")
def add(
    code: str = typer.Argument(..., help="short code, e.g. acme"),
    name: str = typer.Option(..., "--name"),
    base_url: str = typer.Option(..., "--base-url", help="the provider's API address"),
    credentials: str = typer.Option(..., "--credentials", help="bearer credentials"),
    webhook_secret: str | None = typer.Option(
        None, "--webhook-secret", help="generated and printed once if not given"
    ),
) -> None:
    """Register a provider (audited, with no actor: the command line)."""
    from incentive.coupons.schemas import ProviderIn

    try:
        checked = ProviderIn(
            code=code,
            name=name,
            base_url=base_url,
            credentials=credentials,
            webhook_secret=webhook_secret,
        )
    except ValueError as exc:
        fail(str(exc).splitlines()[0] + ": " + str(exc).splitlines()[1].strip(), 2)

    async def work(session: AsyncSession) -> dict[str, Any]:
        row, secret = await providers.register(
            session,
            code=checked.code,
            name=checked.name,
            base_url=str(checked.base_url),
            credentials=checked.credentials,
            webhook_secret=checked.webhook_secret,
            actor=None,
        )
        return {
            "code": row.code,
            "base_url": row.base_url,
            "webhook_url": f"/api/v1/coupon-providers/{row.code}/webhooks",
            "webhook_secret": secret,
        }

    echo_json(run_work(work))


@providers_app.command("list")
def list_() -> None:
    """Every provider with its last sync."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        rows, cursor = [], None
        while True:  # every page (a page holds at most MAX_LIMIT)
            page = await providers.list_providers(session, cursor=cursor, limit=MAX_LIMIT)
            rows += page.items
            if (cursor := page.next_cursor) is None:
                break
        return {
            "providers": [
                {
                    "code": p.code,
                    "name": p.name,
                    "base_url": p.base_url,
                    "state": p.state,
                    "synced_at": p.synced_at,
                    "sync_error": p.sync_error,
                }
                for p in rows
            ]
        }

    echo_json(run_work(work))


@coupons_app.command("sync")
def sync(code: str = typer.Argument(..., help="provider code")) -> None:
    """Pull the provider's batches now."""

    async def go() -> int:
        async with command_database() as db:
            return await providers.sync(db, code)

    echo_json({"provider": code, "batches": _run(go())})


@coupons_app.command("reconcile")
def reconcile_(
    code: str = typer.Argument(..., help="provider code"),
    day: str | None = typer.Option(None, "--date", help="YYYY-MM-DD (UTC); default yesterday"),
) -> None:
    """Compare the provider's coupons issued on a day with ours; report every difference and
    repair what is safe."""
    try:
        when = date.fromisoformat(day) if day else reconcile.yesterday()
    except ValueError:
        fail(f"--date must be YYYY-MM-DD, not {day!r}", 2)

    async def go() -> dict[str, Any]:
        async with command_database() as db:
            return (await reconcile.reconcile(db, code, when)).as_json()

    echo_json(_run(go()))


@coupons_app.command("expire")
def expire() -> None:
    """Expire the coupons due now (workers do it every `coupons.expiry_seconds`)."""

    async def go() -> int:
        async with command_database() as db:
            return await coupon_work.expire_due(db)

    echo_json({"expired": _run(go())})


@coupons_app.command("send-calls")
def send_calls() -> None:
    """Send the provider calls due now, until none is due (workers do it continuously)."""

    async def go() -> None:
        async with command_database() as db:
            sender = calls.Sender(db)
            try:
                await sender.drain()
            finally:
                await sender.aclose()

    _run(go())
    echo_json({"sent": True})
