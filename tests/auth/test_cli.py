"""`incentive users|merchants|partners|keys|sessions` on a fresh SQLite data directory."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from sqlalchemy import func, select
from typer.testing import CliRunner, Result

from incentive.auth.cli import register
from incentive.auth.keyring import KeyRing
from incentive.auth.models import AuditEntry, PartnerApiKey, User
from incentive.auth.partner_keys import hash_api_key
from incentive.db import Database
from incentive.settings import get_settings


@pytest.fixture
def cli_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    data_dir = tmp_path / "fresh"  # does not exist yet: the commands must create it
    monkeypatch.setenv("INCENTIVE_DATA_DIR", str(data_dir))
    monkeypatch.delenv("INCENTIVE_DATABASE_URL", raising=False)
    monkeypatch.delenv("INCENTIVE_SIGNING_KEY_FILE", raising=False)
    get_settings.cache_clear()
    yield data_dir
    get_settings.cache_clear()


@pytest.fixture
def incentive() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def _invoke(app: typer.Typer, args: list[str], stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, args, input=stdin)


def _json(result: Result) -> Any:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def _count(data_dir: Path, model: type[Any]) -> int:
    async def count() -> int:
        db = Database(f"sqlite+aiosqlite:///{data_dir / 'incentive.db'}")
        try:
            async with db.unit_of_work() as s:
                return int((await s.execute(select(func.count()).select_from(model))).scalar_one())
        finally:
            await db.dispose()

    return asyncio.run(count())


def test_create_merchant_staff_and_partner_on_a_fresh_data_dir(
    cli_data_dir: Path, incentive: typer.Typer
) -> None:
    merchant = _json(_invoke(incentive, ["merchants", "create", "SHOP-1", "--name", "Corner"]))
    assert merchant["code"] == "SHOP-1"
    assert merchant["name"] == "Corner"

    clerk = _json(
        _invoke(
            incentive,
            ["users", "create", "clerk", "--role", "merchant", "--merchant", "SHOP-1"],
            stdin="a long enough password\n",
        )
    )
    assert clerk["username"] == "clerk"
    assert clerk["role"] == "merchant"
    assert clerk["merchant_id"] == merchant["id"]
    assert "password" not in json.dumps(clerk)

    partner = _json(_invoke(incentive, ["partners", "create", "BANK", "--name", "Bank"]))
    assert partner["api_key"].startswith("inc_")
    assert [k["prefix"] for k in partner["keys"]] == [partner["api_key"][:12]]
    assert partner["disabled"] is False

    async def stored() -> tuple[User, PartnerApiKey]:
        db = Database(f"sqlite+aiosqlite:///{cli_data_dir / 'incentive.db'}")
        try:
            async with db.unit_of_work() as s:
                user = (await s.execute(select(User))).scalar_one()
                row = (await s.execute(select(PartnerApiKey))).scalar_one()
                return user, row
        finally:
            await db.dispose()

    user, row = asyncio.run(stored())
    assert user.password_hash.startswith("$argon2id$")
    assert row.key_hash == hash_api_key(partner["api_key"])
    assert row.id == partner["keys"][0]["id"]
    assert _count(cli_data_dir, AuditEntry) == 3


@pytest.mark.parametrize(
    ("args", "stdin", "code", "message"),
    [
        (["users", "create", "alice", "--role", "customer"], "short\n", 2, "password: at least 8"),
        (["users", "create", "alice", "--role", "customer"], "", 2, "password: at least 8"),
        (["users", "create", "a", "--role", "customer"], "long enough pw\n", 2, "username:"),
        (["users", "create", "alice", "--role", "boss"], "long enough pw\n", 2, "role: one of"),
        (
            ["users", "create", "alice", "--role", "merchant", "--merchant", "NOPE"],
            "long enough pw\n",
            2,
            "merchant: must name an existing merchant",
        ),
        (["merchants", "create", "x", "--name", "Shop"], None, 2, "code:"),
        (["users", "block", "nobody"], None, 1, "no user 'nobody'"),
    ],
)
def test_refusals_print_a_clear_message_and_write_nothing(
    cli_data_dir: Path,
    incentive: typer.Typer,
    args: list[str],
    stdin: str | None,
    code: int,
    message: str,
) -> None:
    result = _invoke(incentive, args, stdin)
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    if (cli_data_dir / "incentive.db").exists():
        assert _count(cli_data_dir, User) == 0
        assert _count(cli_data_dir, AuditEntry) == 0


def test_duplicate_username_exits_1(cli_data_dir: Path, incentive: typer.Typer) -> None:
    args = ["users", "create", "alice", "--role", "customer"]
    _json(_invoke(incentive, args, stdin="long enough pw\n"))
    result = _invoke(incentive, [*args[:2], "ALICE", *args[3:]], stdin="long enough pw\n")
    assert result.exit_code == 1
    assert "username 'ALICE' is already taken" in result.stderr
    assert _count(cli_data_dir, User) == 1


def test_block_and_unblock(cli_data_dir: Path, incentive: typer.Typer) -> None:
    _json(
        _invoke(incentive, ["users", "create", "alice", "--role", "customer"], "long enough pw\n")
    )
    assert _json(_invoke(incentive, ["users", "block", "alice"]))["blocked"] is True
    assert _json(_invoke(incentive, ["users", "unblock", "alice"]))["blocked"] is False


def test_rotate_signing_key(cli_data_dir: Path, incentive: typer.Typer) -> None:
    first = _json(_invoke(incentive, ["keys", "rotate-signing"]))
    second = _json(_invoke(incentive, ["keys", "rotate-signing"]))
    assert first["kid"] != second["kid"]
    assert set(second["verifying"]) == {first["kid"], second["kid"]}
    ring = KeyRing.load(cli_data_dir / "keys")
    assert ring.active.kid == second["kid"]


def test_rotate_signing_refuses_a_pinned_key_file(
    cli_data_dir: Path, incentive: typer.Typer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INCENTIVE_SIGNING_KEY_FILE", str(cli_data_dir / "pinned.pem"))
    get_settings.cache_clear()
    result = _invoke(incentive, ["keys", "rotate-signing"])
    assert result.exit_code == 1
    assert "INCENTIVE_SIGNING_KEY_FILE" in result.stderr
    assert not (cli_data_dir / "keys").exists()


def test_purge_expired_on_an_empty_database(cli_data_dir: Path, incentive: typer.Typer) -> None:
    assert _json(_invoke(incentive, ["sessions", "purge-expired"])) == {
        "revoked_tokens": 0,
        "refresh_tokens": 0,
    }


def test_unreachable_database_is_a_clean_error(
    cli_data_dir: Path, incentive: typer.Typer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INCENTIVE_DATABASE_URL", "postgresql+asyncpg://nobody@127.0.0.1:9/none")
    get_settings.cache_clear()
    result = _invoke(incentive, ["merchants", "create", "SHOP", "--name", "Shop"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: database unavailable")
    assert "Traceback" not in result.stderr
