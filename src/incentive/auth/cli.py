"""CLI: users, merchants, partners, signing keys, expired session rows.

Every command runs in one unit of work on the configured database; on SQLite the schema is
upgraded first, so the commands work on a fresh data directory. Output is one JSON object on
stdout; a refusal prints ``error: ...`` on stderr and exits 2 for invalid input, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth import keyring, partner_keys, passwords, principal_cache, service, sessions
from incentive.auth.models import ROLES, Merchant, Partner, PartnerApiKey, User
from incentive.errors import BadRequest
from incentive.kit.commands import echo_json, fail, run_work
from incentive.settings import get_settings

T = TypeVar("T")

users_app = typer.Typer(no_args_is_help=True, help="Logins: customers, merchant staff, operators")
merchants_app = typer.Typer(no_args_is_help=True, help="Merchants (shops) that staff belong to")
partners_app = typer.Typer(no_args_is_help=True, help="Partner systems and their API keys")
keys_app = typer.Typer(no_args_is_help=True, help="Token signing keys")
sessions_app = typer.Typer(no_args_is_help=True, help="Login sessions and revoked tokens")


def _run_work(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """``run_work``, then the servers are told (through Redis) which callers' cached
    credentials the committed change took away (a block, a revoked or rotated key)."""
    principal_cache.collect_drops()
    result = run_work(work)
    asyncio.run(principal_cache.announce_collected(get_settings().redis_url))
    return result


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
    app.add_typer(merchants_app, name="merchants")
    app.add_typer(partners_app, name="partners")
    app.add_typer(keys_app, name="keys")
    app.add_typer(sessions_app, name="sessions")


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


def _partner_json(partner: Partner, keys: list[PartnerApiKey]) -> dict[str, Any]:
    return {
        "id": partner.id,
        "code": partner.code,
        "name": partner.name,
        "disabled": partner.disabled_at is not None,
        "created_at": partner.created_at.isoformat(),
        "keys": [_key_json(k) for k in keys],
    }


def _key_json(key: PartnerApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "prefix": key.prefix,
        "created_at": key.created_at.isoformat(),
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


async def _partner_now(session: AsyncSession, partner: Partner) -> dict[str, Any]:
    return _partner_json(partner, await partner_keys.usable_keys(session, partner.id))


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
        fail(exc.detail, 2)

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

    echo_json(_run_work(work))


def _set_blocked(username: str, blocked: bool) -> None:
    async def work(session: AsyncSession) -> dict[str, Any]:
        user = await sessions.set_user_blocked(session, username, blocked, get_settings())
        merchant = await session.get(Merchant, user.merchant_id) if user.merchant_id else None
        return _user_json(user, merchant.code if merchant else None)

    echo_json(_run_work(work))


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

    echo_json(_run_work(work))


@partners_app.command("create")
def create_partner(
    code: str = typer.Argument(..., help="2-64 characters of A-Z a-z 0-9 _ . -"),
    name: str = typer.Option(..., "--name", help="display name"),
) -> None:
    """Register a partner system; prints its API key once (only a hash is stored)."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        partner, api_key = await service.create_partner(session, code, name)
        return await _partner_now(session, partner) | {"api_key": api_key}

    echo_json(_run_work(work))


@partners_app.command("show")
def show_partner(code: str) -> None:
    """A partner, whether it is disabled, and its API keys that work now."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        return await _partner_now(session, await partner_keys.partner_by_code(session, code))

    echo_json(_run_work(work))


@partners_app.command("rotate-key")
def rotate_partner_key(
    code: str,
    grace_seconds: int = typer.Option(
        86_400,
        "--grace-seconds",
        min=0,
        max=partner_keys.MAX_GRACE_SECONDS,
        help="how long the keys in use now keep working (0: they stop at once)",
    ),
) -> None:
    """Issue a new API key (printed once); the keys in use keep working for the grace."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        issued = await partner_keys.rotate_key(session, code, grace_seconds)
        return {"key": _key_json(issued.row), "api_key": issued.api_key}

    echo_json(_run_work(work))


@partners_app.command("revoke-key")
def revoke_partner_key(code: str, key_id: str) -> None:
    """Revoke one API key of the partner at once (see `partners show` for the ids)."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        return _key_json(await partner_keys.revoke_key(session, code, key_id))

    echo_json(_run_work(work))


def _set_partner_disabled(code: str, disabled: bool) -> None:
    async def work(session: AsyncSession) -> dict[str, Any]:
        partner = await partner_keys.set_partner_disabled(session, code, disabled)
        return await _partner_now(session, partner)

    echo_json(_run_work(work))


@partners_app.command("disable")
def disable_partner(code: str) -> None:
    """Refuse every API key of the partner until it is enabled again."""
    _set_partner_disabled(code, True)


@partners_app.command("enable")
def enable_partner(code: str) -> None:
    """Accept the partner's working API keys again."""
    _set_partner_disabled(code, False)


@keys_app.command("rotate-signing")
def rotate_signing() -> None:
    """Add a new signing key: it signs from the next process start; older keys still verify.

    Restart the API processes, wait the access-token lifetime, then delete the old key file.
    """
    settings = get_settings()
    if settings.signing_key_file is not None:
        fail("INCENTIVE_SIGNING_KEY_FILE pins one key; rotate by replacing that file instead", 1)
    directory = settings.data_dir / "keys"
    try:
        key = keyring.generate(directory)
        ring = keyring.KeyRing.load(directory)
    except (OSError, ValueError) as exc:
        fail(f"cannot write a key in {directory}: {exc}", 1)
    echo_json({"kid": key.kid, "directory": str(directory), "verifying": sorted(ring.by_kid)})


@sessions_app.command("purge-expired")
def purge_expired() -> None:
    """Delete expired revoked and refresh tokens."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        counts = await sessions.purge_expired(session)
        return {"revoked_tokens": counts.revoked_tokens, "refresh_tokens": counts.refresh_tokens}

    echo_json(_run_work(work))
