"""Shared pieces of the points-file pipeline tests: a partner with the gpg CLI, members,
files written and encrypted as a partner would, answers read back as a partner would."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
from sqlalchemy import func, insert, select

from incentive.auth import service as auth_service
from incentive.auth.models import User
from incentive.db import Database, new_id, utcnow
from incentive.ledger.models import Account, Transfer
from incentive.points_files import service
from incentive.points_files.answer_format import (
    ExceptionReport,
    FeedbackTotals,
    RecordResult,
    read_exception,
    read_feedback,
)
from incentive.points_files.backends.transports import TransportOptions
from incentive.points_files.crypto import PointsCrypto, default_gnupg_home, init_platform_key
from incentive.points_files.format import Header, write_points_file
from incentive.points_files.models import PointsFile
from incentive.points_files.pipeline import PointsPipeline
from incentive.settings import Settings
from tests.points_files.test_crypto import GpgCli, _kill_agent

NOW = datetime.now(UTC)


@dataclass
class Pgp:
    platform_home: Path
    platform_public: str
    partner: GpgCli
    stranger: GpgCli


def pgp_world(root: Path) -> Iterator[Pgp]:
    platform = init_platform_key(root / "platform", "Incentive points files", "points@incentive")
    partner = GpgCli.create(root / "partner", "Acme Bank <files@acme.test>")
    stranger = GpgCli.create(root / "stranger", "Stranger <x@evil.test>")
    public = platform.export_public_key()
    partner.import_key(public)
    stranger.import_key(public)
    yield Pgp(root / "platform", public, partner, stranger)
    for home in (root / "platform", root / "partner", root / "stranger"):
        _kill_agent(home)


def install_platform_key(pgp: Pgp, settings: Settings) -> PointsCrypto:
    """Copy the session's platform keyring into the test's data directory (no key generation)."""
    home = default_gnupg_home(settings)
    home.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(pgp.platform_home, home, ignore=shutil.ignore_patterns("S.*", "*.lock", ".#*"))
    return init_platform_key(home, "Incentive points files", "points@incentive")


def stop_agents(settings: Settings) -> None:
    _kill_agent(default_gnupg_home(settings))


async def make_partner(
    db: Database, crypto: PointsCrypto, pgp: Pgp, code: str = "ACME", **limits: int
) -> tuple[str, str]:
    """A partner with its key registered; returns (partner id, API key)."""
    async with db.unit_of_work() as s:
        partner, api_key = await auth_service.create_partner(s, code, f"{code} Bank")
        await service.set_partner_key(s, crypto, code, pgp.partner.public_key())
        if limits:
            await service.set_partner_limits(s, code, **limits)  # type: ignore[arg-type]
        return partner.id, api_key


async def make_members(db: Database, names: Iterable[str], *, blocked: bool = False) -> None:
    rows = [
        {
            "id": new_id(),
            "username": n,
            "display_name": n,
            "password_hash": "x",
            "role": "customer",
            "merchant_id": None,
            "blocked": blocked,
            "created_at": utcnow(),
        }
        for n in names
    ]
    async with db.unit_of_work() as s:
        for start in range(0, len(rows), 5000):
            await s.execute(insert(User), rows[start : start + 5000])


Rec = tuple[str, str, int, datetime, str]


def rec(record_id: str, member: str, points: int, *, age: timedelta = timedelta(hours=1)) -> Rec:
    return (record_id, member, points, NOW - age, "memo")


def plain_file(path: Path, code: str, seq: int, records: Iterable[Rec]) -> Path:
    with path.open("wb") as out:
        write_points_file(out, Header(code, seq, NOW), records)
    return path


def encrypt(pgp: Pgp, plain: Path, *, signer: GpgCli | None = None, sign: bool = True) -> Path:
    out = plain.with_name(plain.name + ".pgp")
    (signer or pgp.partner).encrypt(plain, out, "points@incentive", sign=sign)
    return out


async def local_transport(db: Database, tmp_path: Path) -> Path:
    """ACME's inbox and outbox as local directories: ``<root>/in`` (created) and ``<root>/out``."""
    root = tmp_path / "acme"
    (root / "in").mkdir(parents=True)
    async with db.unit_of_work() as s:
        await service.set_partner_transport(
            s, "ACME", inbox_url=(root / "in").as_uri(), outbox_url=(root / "out").as_uri()
        )
    return root


async def run_pipeline(
    db: Database, settings: Settings, *, poll: bool = False, **options: Any
) -> int:
    """An in-process pipeline: takes the inboxes' files (``poll``), then works until every
    file is delivered; returns how many files it took."""
    pipeline = PointsPipeline(db, settings, **options)
    try:
        taken = await pipeline.poll_inboxes() if poll else 0
        await pipeline.run_until_done(timeout_s=60)
        return taken
    finally:
        await pipeline.aclose()


def worker_env(settings: Settings, database_url: str) -> dict[str, str]:
    """The environment of an ``incentive`` subprocess on the test's data dir and database."""
    env = {
        **os.environ,
        "INCENTIVE_DATA_DIR": str(settings.data_dir),
        "INCENTIVE_DATABASE_URL": database_url,
        "INCENTIVE_DEMO_DATA": "false",
        "INCENTIVE_LOG_LEVEL": "ERROR",
    }
    env.pop("INCENTIVE_POINTS_CRASH_AT", None)
    return env


async def points_cli(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    """Start ``incentive points-files ARGS`` (output: stdout, stderr folded in)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "incentive.cli",
        "points-files",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


def decrypt_answer(pgp: Pgp, path: Path) -> bytes:
    done = pgp.partner.run("--decrypt", str(path))
    assert done.returncode == 0, done.stderr
    # the answer is signed by the platform key
    assert b"Good signature" in done.stderr, done.stderr
    return done.stdout


def feedback_of(pgp: Pgp, path: Path) -> tuple[list[RecordResult], FeedbackTotals]:
    _, results, totals = read_feedback(io.BytesIO(decrypt_answer(pgp, path)))
    return results, totals


def exception_of(pgp: Pgp, path: Path) -> ExceptionReport:
    return read_exception(io.BytesIO(decrypt_answer(pgp, path)))


async def file_row(db: Database, file_id: str) -> PointsFile:
    async with db.unit_of_work() as s:
        return await service.get_file(s, file_id)


async def points_balance_total(db: Database) -> int:
    """Sum of every member's POINTS balance."""
    async with db.unit_of_work() as s:
        total = await s.scalar(
            select(func.coalesce(func.sum(Account.balance), 0)).where(
                Account.owner_type == "user", Account.asset == "POINTS"
            )
        )
        return int(total or 0)


async def transfer_count(db: Database) -> int:
    async with db.unit_of_work() as s:
        return int(await s.scalar(select(func.count()).select_from(Transfer)) or 0)


def gpg_available() -> bool:
    return subprocess.run(["gpg", "--version"], capture_output=True, check=False).returncode == 0


# ------------------------------------------------------------------ a partner's SFTP server


@dataclass
class ServerLog:
    opened_for_write: list[str] = field(default_factory=list)
    fail_writes_after: int | None = None


def sftp_factory(root: Path, log: ServerLog) -> Any:
    class RecordingSFTPServer(asyncssh.SFTPServer):
        def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
            if pflags & asyncssh.FXF_WRITE:
                log.opened_for_write.append(os.path.basename(path.decode()))
            return super().open(path, pflags, attrs)

        def write(self, file_obj: object, offset: int, data: bytes) -> int | Awaitable[int]:
            limit = log.fail_writes_after
            if limit is not None and offset + len(data) > limit:
                raise asyncssh.SFTPFailure("disk full")
            return super().write(file_obj, offset, data)

    def factory(chan: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
        return RecordingSFTPServer(chan, chroot=str(root).encode())

    return factory


@dataclass
class SftpWorld:
    url: str
    root: Path
    options: TransportOptions
    log: ServerLog
    port: int


async def member_balances(db: Database) -> dict[str, int]:
    """Every member's POINTS balance by username (members without an account: absent)."""
    async with db.unit_of_work() as s:
        rows = await s.execute(
            select(User.username, Account.balance)
            .join(Account, Account.owner_id == User.id)
            .where(Account.owner_type == "user", Account.asset == "POINTS")
        )
        return {str(name): int(balance) for name, balance in rows}
