"""A partner with nothing but GnuPG and an SFTP client: it encrypts and signs its file with the
``gpg`` command line, uploads it with OpenSSH's ``sftp``, and later downloads the feedback with
``sftp`` and reads it with ``gpg``. The platform polls the SFTP inbox and delivers to the SFTP
outbox (a real SFTP server on loopback)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from incentive.db import Database
from incentive.points_files import service
from incentive.points_files.answer_format import RecordStatus
from incentive.points_files.crypto import PointsCrypto
from incentive.settings import Settings
from tests.points_files.kit import (
    Pgp,
    SftpWorld,
    encrypt,
    feedback_of,
    make_members,
    make_partner,
    plain_file,
    points_balance_total,
    rec,
    run_pipeline,
)

NAME = "POINTS_ACME_20250112_1.txt.pgp"


async def partner_sftp(world: SftpWorld, *commands: str) -> str:
    """Run OpenSSH ``sftp`` in batch mode against the server; fails the test on any error."""
    assert world.options.client_key is not None
    assert world.options.known_hosts is not None
    world.options.client_key.chmod(0o600)  # ssh refuses a private key others can read
    proc = await asyncio.create_subprocess_exec(
        "sftp",
        "-b",
        "-",
        "-i",
        str(world.options.client_key),
        "-o",
        f"UserKnownHostsFile={world.options.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-P",
        str(world.port),
        "points@127.0.0.1",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate("\n".join(commands).encode() + b"\n"), 60)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def test_partner_with_gpg_and_sftp_client(
    db: Database,
    quiet_settings: Settings,
    crypto: PointsCrypto,
    pgp: Pgp,
    tmp_path: Path,
    sftp_world: SftpWorld,
) -> None:
    await make_partner(db, crypto, pgp)
    await make_members(db, ["alice", "bob"])
    (sftp_world.root / "outbox").mkdir()
    options = sftp_world.options
    async with db.unit_of_work() as s:
        await service.set_partner_transport(
            s,
            "ACME",
            inbox_url=f"{sftp_world.url}/inbox",
            outbox_url=f"{sftp_world.url}/outbox",
            key_file=str(options.client_key),
            known_hosts=str(options.known_hosts),
        )
    records = [rec("s1", "alice", 100), rec("s2", "bob", 50), rec("s3", "nobody", 5)]
    sealed = encrypt(pgp, plain_file(tmp_path / "points.txt", "ACME", 1, records))
    await partner_sftp(sftp_world, f"put {sealed} acme/inbox/{NAME}")

    assert await run_pipeline(db, quiet_settings, poll=True) == 1

    listing = await partner_sftp(sftp_world, "ls -1 acme/inbox", "ls -1 acme/outbox")
    assert NAME not in listing.split("ls -1 acme/outbox")[0]  # taken out of the inbox
    got = tmp_path / "feedback.pgp"
    await partner_sftp(sftp_world, f"get acme/outbox/FEEDBACK_{NAME} {got}")
    results, totals = feedback_of(pgp, got)  # decrypted and verified with the gpg CLI
    assert [(r.record_id, r.status, r.reason_code) for r in results] == [
        ("s1", RecordStatus.OK, None),
        ("s2", RecordStatus.OK, None),
        ("s3", RecordStatus.FAILED, "UNKNOWN_MEMBER"),
    ]
    assert (totals.ok_count, totals.points_credited) == (2, 150)
    assert await points_balance_total(db) == 150
