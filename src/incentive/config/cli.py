"""CLI: `incentive config list|get|set|reset`. Changes are audited as ``cli:<os user>``."""

from __future__ import annotations

import asyncio
import getpass
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.config import service
from incentive.config.live import announce
from incentive.db import Database
from incentive.errors import IncentiveError
from incentive.settings import get_settings

T = TypeVar("T")

config_app = typer.Typer(no_args_is_help=True, help="Live configuration (applied without restart)")


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")


def _run(work: Callable[[AsyncSession], Awaitable[T]], *, changed: bool = False) -> T:
    settings = get_settings()

    async def _go() -> T:
        db = Database.for_settings(settings)
        try:
            async with db.unit_of_work() as session:
                result = await work(session)
            if changed and settings.redis_url:
                # Instant push to running processes; without Redis they pick it up by polling.
                import redis.asyncio as aioredis

                client = aioredis.from_url(settings.redis_url)
                try:
                    async with db.unit_of_work() as session:
                        revision = await _revision(session)
                    await announce(client, revision)
                finally:
                    await client.aclose()
            return result
        finally:
            await db.dispose()

    try:
        return asyncio.run(_go())
    except IncentiveError as exc:
        typer.echo(json.dumps(exc.to_problem()), err=True)
        raise typer.Exit(2) from exc


async def _revision(session: AsyncSession) -> int:
    from incentive.config.models import REVISION_ROW_ID, ConfigRevision

    row = await session.get(ConfigRevision, REVISION_ROW_ID)
    return 0 if row is None else row.revision


def _out(v: service.ConfigValue) -> dict[str, Any]:
    return {
        "key": v.key.name,
        "value": v.value,
        "default": v.key.dump(v.key.default),
        "is_default": v.is_default,
        "version": v.version,
        "updated_at": v.updated_at.isoformat() if v.updated_at else None,
        "updated_by": v.updated_by,
    }


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def parse_value(text: str) -> Any:
    """VALUE as JSON (``16``, ``true``, ``{"c1": false}``), else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@config_app.command("list")
def list_cmd() -> None:
    """Every registered key with its effective value and default (JSON lines)."""
    for v in _run(service.list_values):
        typer.echo(json.dumps(_out(v), ensure_ascii=False))


@config_app.command("get")
def get_cmd(key: str) -> None:
    """One key's effective value (JSON)."""
    v = _run(lambda s: service.get_value(s, key))
    typer.echo(json.dumps(_out(v), ensure_ascii=False))


@config_app.command("set")
def set_cmd(
    key: str,
    value: str = typer.Argument(..., help="JSON value; anything that is not JSON is a string"),
    expected_version: int | None = typer.Option(None, help="fail unless the key is at this"),
) -> None:
    """Change a key; every running process applies it within seconds."""
    v = _run(
        lambda s: service.set_value(
            s, key, parse_value(value), actor=_actor(), expected_version=expected_version
        ),
        changed=True,
    )
    typer.echo(json.dumps(_out(v), ensure_ascii=False))


@config_app.command("reset")
def reset_cmd(key: str) -> None:
    """Remove a key's override so its default applies again."""
    v = _run(lambda s: service.reset_value(s, key, actor=_actor()), changed=True)
    typer.echo(json.dumps(_out(v), ensure_ascii=False))
