"""CLI: users, merchants, partners, signing keys, expired session rows.

Every command runs in one unit of work on the configured database; on SQLite the schema is
upgraded first, so the commands work on a fresh data directory. Output is one JSON object on
stdout; a refusal prints ``error: ...`` on stderr and exits 2 for invalid input, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import typer
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from incentive import migrations
from incentive.auth import keyring, passwords, service, sessions
from incentive.auth.models import ROLES, Merchant, Partner, User
from incentive.db import Database
from incentive.errors import BadRequest, IncentiveError
from incentive.settings import get_settings

T = TypeVar("T")

users_app = typer.Typer(no_args_is_help=True, help="Logins: customers, merchant staff, operators")
merchants_app = typer.Typer(no_args_is_help=True, help="Merchants (shops) that staff belong to")
partners_app = typer.Typer(no_args_is_help=True, help="Partner systems and their API keys")
keys_app = typer.Typer(no_args_is_help=True, help="Token signing keys")
sessions_app = typer.Typer(no_args_is_help=True, help="Login sessions and revoked tokens")


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
    app.add_typer(merchants_app, name="merchants")
    app.add_typer(partners_app, name="partners")
    app.add_typer(keys_app, name="keys")
    app.add_typer(sessions_app, name="sessions")


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _print(payload: dict[str, Any]) -> None:
    typer.echo(json.dumps(payload, default=str))


async def _in_unit_of_work(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    settings = get_settings()
    db = Database(settings.resolved_database_url)
    try:
        if db.is_sqlite:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            await migrations.upgrade(db.engine)
        async with db.unit_of_work() as session:
            return await work(session)
    finally:
        await db.dispose()


def _run(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    try:
        return asyncio.run(_in_unit_of_work(work))
    except BadRequest as exc:
        _fail(exc.detail, 2)
    except IncentiveError as exc:
        _fail(exc.detail, 1)
    except IntegrityError:
        _fail("the change conflicts with existing data (created concurrently?)", 1)
    except (DBAPIError, OSError) as exc:
        _fail(f"database unavailable: {type(exc).__name__}: {exc}".splitlines()[0], 1)


def _user_json(user: User, merchant_code: str | None) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "display_name": user.display_name,
        "role": user.role,
        "merchant_id": user.merchant_id,
        "merchant": merchant_code,
        "blocked": user.blocked,
        "created_at": user.created_at.isoformat(),
    }


def _merchant_json(merchant: Merchant) -> dict[str, Any]:
    return {
        "id": merchant.id,
        "code": merchant.code,
        "name": merchant.name,
        "created_at": merchant.created_at.isoformat(),
    }


def _partner_json(partner: Partner) -> dict[str, Any]:
    return {
        "id": partner.id,
        "code": partner.code,
        "name": partner.name,
        "api_key_prefix": partner.api_key_prefix,
        "created_at": partner.created_at.isoformat(),
    }


def _read_password() -> str:
    if sys.stdin.isatty():
        password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        return password
    # Piped: exactly one line, so secrets never appear in argv or shell history.
    return sys.stdin.readline().removesuffix("\n").removesuffix("\r")


@users_app.command("create")
def create_user(
    username: str = typer.Argument(..., help="3-64 characters of A-Z a-z 0-9 _ . -"),
    role: str = typer.Option(..., "--role", help=f"one of {', '.join(ROLES)}"),
    merchant: str | None = typer.Option(
        None, "--merchant", help="merchant code (role merchant only)"
    ),
    display_name: str = typer.Option("", "--display-name", help="defaults to the username"),
) -> None:
    """Create a login; the password is read from stdin (prompted, hidden, on a terminal)."""
    password = _read_password()
    try:
        passwords.check_password(password)
    except BadRequest as exc:
        _fail(exc.detail, 2)

    async def work(session: AsyncSession) -> dict[str, Any]:
        user = await service.create_user(
            session,
            username,
            password,
            role,
            merchant_code=merchant,
            display_name=display_name,
        )
        return _user_json(user, merchant)

    _print(_run(work))


def _set_blocked(username: str, blocked: bool) -> None:
    async def work(session: AsyncSession) -> dict[str, Any]:
        user = await sessions.set_user_blocked(session, username, blocked, get_settings())
        merchant = await session.get(Merchant, user.merchant_id) if user.merchant_id else None
        return _user_json(user, merchant.code if merchant else None)

    _print(_run(work))


@users_app.command("block")
def block_user(username: str) -> None:
    """Block a login and revoke every session it holds."""
    _set_blocked(username, True)


@users_app.command("unblock")
def unblock_user(username: str) -> None:
    """Allow a blocked login to sign in again."""
    _set_blocked(username, False)


@merchants_app.command("create")
def create_merchant(
    code: str = typer.Argument(..., help="2-64 characters of A-Z a-z 0-9 _ . -"),
    name: str = typer.Option(..., "--name", help="display name"),
) -> None:
    """Create a merchant that staff logins can belong to."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        return _merchant_json(await service.create_merchant(session, code, name))

    _print(_run(work))


@partners_app.command("create")
def create_partner(
    code: str = typer.Argument(..., help="2-64 characters of A-Z a-z 0-9 _ . -"),
    name: str = typer.Option(..., "--name", help="display name"),
) -> None:
    """Register a partner system; prints its API key once (only a hash is stored)."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        partner, api_key = await service.create_partner(session, code, name)
        return _partner_json(partner) | {"api_key": api_key}

    _print(_run(work))


@keys_app.command("rotate-signing")
def rotate_signing() -> None:
    """Add a new signing key: it signs from the next process start; older keys still verify.

    Restart the API processes, wait the access-token lifetime, then delete the old key file.
    """
    settings = get_settings()
    if settings.signing_key_file is not None:
        _fail("INCENTIVE_SIGNING_KEY_FILE pins one key; rotate by replacing that file instead", 1)
    directory = settings.data_dir / "keys"
    try:
        key = keyring.generate(directory)
        ring = keyring.KeyRing.load(directory)
    except (OSError, ValueError) as exc:
        _fail(f"cannot write a key in {directory}: {exc}", 1)
    _print({"kid": key.kid, "directory": str(directory), "verifying": sorted(ring.by_kid)})


@sessions_app.command("purge-expired")
def purge_expired() -> None:
    """Delete expired revoked/refresh tokens and ended login-failure windows."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        counts = await sessions.purge_expired(session, get_settings())
        return {
            "revoked_tokens": counts.revoked_tokens,
            "refresh_tokens": counts.refresh_tokens,
            "login_failures": counts.login_failures,
        }

    _print(_run(work))
