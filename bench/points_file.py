"""Partner points file end to end on PostgreSQL: records/s per stage, end to end, peak RSS.

Prints one JSON document. Steps:

1. A fresh database (``INCENTIVE_BENCH_DATABASE_URL``, default
   postgresql+asyncpg://postgres@127.0.0.1/incentive_bench_points, created and dropped here),
   the platform OpenPGP key, a partner with its own GnuPG home, ``--members`` members.
2. As the partner would: a points file of ``--records`` records written and then encrypted
   and signed with the ``gpg`` command line (not timed as pipeline work), dropped in the
   partner's local inbox.
3. ``incentive points-files process`` in a subprocess (one worker, the live defaults: batch
   size 5,000 and 4 crediting calls in flight) takes it through every stage; this script
   watches the file's state every 50 ms to time each stage. ``peak_rss_mb`` is the
   worker's own high-water mark (``VmHWM`` in ``/proc/<pid>/status``, read while it runs).
4. Checks: one feedback line per record, every record OK, members' points = the file's total.
5. References on the same rows, same database (``reference_bare_copy``): a bare ``COPY`` of
   the records into a table without indexes and into an empty table like ``points_records``
   (its indexes), and of the file's transfer rows into an empty table like ``transfers``
   (its 4 indexes and 2 foreign keys); crediting one record per transaction
   (``ledger.transfer``, one unit of work each) on ``--sample`` records.
6. ``against_bare_database``: each stage's seconds, share of the end to end and ratio to its
   bare equivalent — staging against the COPY into ``points_records``, crediting and the end
   to end against the COPY of the transfers (issue 11's target: end to end ≤ 2×).

Usage: python bench/points_file.py [--records 1000000] [--members 100000] [--sample 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import func, insert, select
from sqlalchemy.engine import make_url

from incentive import migrations
from incentive.auth import service as auth_service
from incentive.auth.models import User
from incentive.db import Database, new_id, utcnow
from incentive.kit.pgadmin import drop_database, recreate_database
from incentive.ledger import service as ledger
from incentive.ledger.models import TRANSFER_COLUMNS, Account
from incentive.points_files import service, storage
from incentive.points_files.answer_format import RecordStatus, read_feedback
from incentive.points_files.crypto import default_gnupg_home, init_platform_key
from incentive.points_files.format import Header, write_points_file
from incentive.points_files.models import FILE_STATES, PartnerPointsSettings, PointsFile
from incentive.settings import Settings

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1/incentive_bench_points"
CODE = "BENCH"
STAGES = [s for s in FILE_STATES if s not in ("rejected", "exception_written")]


def gpg(home: Path, *args: str, stdin: bytes | None = None) -> bytes:
    done = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--yes", "--pinentry-mode", "loopback"]
        + ["--passphrase", "", "--trust-model", "always", *args],
        input=stdin,
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode())
    return done.stdout


def records(n: int, members: int, now: datetime) -> Iterator[tuple[str, str, int, datetime, str]]:
    txn = now - timedelta(hours=1)
    for i in range(n):
        yield (f"r{i}", f"m{i % members}", 1 + i % 100, txn, "bench")


async def prepare(url: str, settings: Settings, args: argparse.Namespace, work: Path) -> Path:
    """Database, keys, partner, members; returns the partner's inbox."""
    db = Database(url)
    await migrations.upgrade(db.engine)
    crypto = init_platform_key(
        default_gnupg_home(settings), "Incentive points files", "points@incentive"
    )
    home = work / "partner-gnupg"
    home.mkdir(mode=0o700)
    gpg(home, "--quick-gen-key", "Bench Partner <files@bench.test>", "future-default", "default")
    partner_public = gpg(home, "--armor", "--export").decode()  # before importing ours
    gpg(home, "--import", stdin=crypto.export_public_key().encode())
    inbox, outbox = work / "inbox", work / "outbox"
    inbox.mkdir()
    async with db.unit_of_work() as s:
        await auth_service.create_partner(s, CODE, "Bench Bank")
        await service.set_partner_key(s, crypto, CODE, partner_public)
        await service.set_partner_transport(
            s, CODE, inbox_url=inbox.as_uri(), outbox_url=outbox.as_uri()
        )
    rows = [
        {
            "id": new_id(),
            "username": f"m{i}",
            "display_name": f"m{i}",
            "password_hash": "x",
            "role": "customer",
            "merchant_id": None,
            "blocked": False,
            "created_at": utcnow(),
        }
        for i in range(args.members)
    ]
    for start in range(0, len(rows), 10_000):
        async with db.unit_of_work() as s:
            await s.execute(insert(User), rows[start : start + 10_000])
    await db.dispose()
    return inbox


def stop_gpg_agents(work: Path, settings: Settings) -> None:
    """The agents gpg started for this run's two homes (they would outlive it)."""
    for home in (work / "partner-gnupg", settings.data_dir / "points_files" / "gnupg"):
        subprocess.run(
            ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],  # noqa: S607
            check=False,
            capture_output=True,
        )


def partner_file(work: Path, n: int, members: int) -> tuple[Path, dict[str, float]]:
    plain = work / "points.txt"
    now = datetime.now(UTC)
    t0 = time.perf_counter()
    with plain.open("wb") as out:
        write_points_file(out, Header(CODE, 1, now), records(n, members, now))
    t1 = time.perf_counter()
    enc = work / "POINTS_BENCH_20261123_1.txt.pgp"
    home = work / "partner-gnupg"
    gpg(home, "--output", str(enc), "--encrypt", "--sign", "-r", "points@incentive", str(plain))
    t2 = time.perf_counter()
    return enc, {
        "plain_mb": round(plain.stat().st_size / 2**20, 1),
        "encrypted_mb": round(enc.stat().st_size / 2**20, 1),
        "write_s": round(t1 - t0, 2),
        "gpg_encrypt_sign_s": round(t2 - t1, 2),
    }


async def run_pipeline(url: str, settings: Settings) -> dict[str, Any]:
    env = {
        **os.environ,
        "INCENTIVE_DATA_DIR": str(settings.data_dir),
        "INCENTIVE_DATABASE_URL": url,
        "INCENTIVE_DEMO_DATA": "false",
        "INCENTIVE_LOG_LEVEL": "WARNING",
    }
    db = Database(url)
    seen: dict[str, float] = {}
    peak_kb = 0
    log = (settings.data_dir / "process.log").open("wb")
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "incentive.cli",
        "points-files",
        "process",
        "--timeout",
        "900",
        env=env,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        while proc.returncode is None:
            async with db.unit_of_work() as s:
                state = await s.scalar(select(PointsFile.state))
            if state is not None and state not in seen:
                seen[state] = time.perf_counter() - t0
            peak_kb = max(peak_kb, _vm_hwm_kb(proc.pid))
            if state == "delivered":
                break
            try:
                await asyncio.wait_for(proc.wait(), 0.05)
            except TimeoutError:
                pass
        await proc.wait()
    finally:
        log.close()
        await db.dispose()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError((settings.data_dir / "process.log").read_text()[-4000:])
    # The worker's own high-water mark (VmHWM, read while it runs); getrusage's figure for
    # children is kept as a cross-check (it can start at this script's own high-water mark).
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "seen": seen,
        "process_wall_s": wall,
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "children_maxrss_mb": round(children_kb / 1024, 1),
    }


def _vm_hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def stage_rates(seen: dict[str, float], n: int, wall: float) -> dict[str, Any]:
    """Seconds and records/s between consecutive states (a stage shorter than the 50 ms poll
    may be skipped: its time then counts in the next one)."""
    out: dict[str, Any] = {}
    previous, at = "start", 0.0
    for state in STAGES:
        if state not in seen:
            continue
        seconds = seen[state] - at
        out[f"{previous}->{state}"] = {
            "seconds": round(seconds, 2),
            "records_per_s": round(n / seconds) if seconds > 0 else None,
        }
        previous, at = state, seen[state]
    end = seen.get("delivered", wall)
    out["end_to_end"] = {"seconds": round(end, 2), "records_per_s": round(n / end)}
    return out


async def check(url: str, settings: Settings, n: int, expected_points: int) -> dict[str, Any]:
    db = Database(url)
    async with db.unit_of_work() as s:
        row = (await s.execute(select(PointsFile))).scalar_one()
        members = await s.scalar(
            select(func.coalesce(func.sum(Account.balance), 0)).where(
                Account.owner_type == "user", Account.asset == "POINTS"
            )
        )
    await db.dispose()
    assert row.state == "delivered", row.state
    assert row.answer_name is not None
    answer = storage.answer_path(settings, row.id, row.answer_name)
    # As the partner would: decrypt with its own key (its home is next to the data dir).
    plain = gpg(settings.data_dir.parent / "partner-gnupg", "--decrypt", str(answer))
    _, results, totals = read_feedback(io.BytesIO(plain))
    ok = sum(1 for r in results if r.status is RecordStatus.OK)
    assert len(results) == n, len(results)
    assert ok == n == totals.ok_count, (ok, totals)
    assert totals.points_credited == expected_points == members, (totals, members)
    return {"feedback_lines": len(results), "ok": ok, "points_credited": totals.points_credited}


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _timed_copy(
    conn: asyncpg.Connection,
    like: str | None,
    table: str,
    rows: list[tuple[Any, ...]],
    columns: list[str],
    foreign_keys: str = "",
) -> dict[str, Any]:
    """COPY ``rows`` into a new empty ``table``: ``LIKE`` an application table with all its
    indexes and constraints (plus ``foreign_keys``), or a table of plain columns."""
    if like is not None:
        await conn.execute(f"CREATE TABLE {table} (LIKE {like} INCLUDING ALL{foreign_keys})")
    t0 = time.perf_counter()
    await conn.copy_records_to_table(table, records=rows, columns=columns)
    seconds = time.perf_counter() - t0
    await conn.execute(f"DROP TABLE {table}")
    return {
        "rows": len(rows),
        "seconds": round(seconds, 2),
        "records_per_s": round(len(rows) / seconds),
    }


async def bare_copies(url: str, n: int, members: int) -> dict[str, Any]:
    """The database equivalents of the pipeline's stages, on the same rows, same database:
    a COPY of the parsed records into a table without indexes, into a table like
    ``points_records`` (its primary key and index), and of the transfer rows into a table
    like ``transfers`` (its 4 indexes, its 2 foreign keys to ``accounts``)."""
    conn = await asyncpg.connect(_dsn(url))
    try:
        now = datetime.now(UTC)
        parsed = list(records(n, members, now))
        await conn.execute(
            "CREATE TABLE bench_copy (file_id text, line_no bigint, record_id text, "
            "member_id text, points bigint, txn_time timestamptz, memo text)"
        )
        raw = await _timed_copy(
            conn,
            None,
            "bench_copy",
            [("f", i + 2, *r) for i, r in enumerate(parsed)],
            ["file_id", "line_no", "record_id", "member_id", "points", "txn_time", "memo"],
        )
        staged = await _timed_copy(
            conn,
            "points_records",
            "bench_records",
            [
                ("f", i + 2, rid, mid, pts, txn, memo, "u", "valid", None, "")
                for i, (rid, mid, pts, txn, memo) in enumerate(parsed)
            ],
            [
                "file_id",
                "line_no",
                "record_id",
                "member_id",
                "points",
                "txn_time",
                "memo",
                "user_id",
                "state",
                "reason",
                "detail",
            ],
        )
        funding = await conn.fetchval("SELECT funding_account_id FROM partner_points_settings")
        account_of = dict(
            await conn.fetch(
                "SELECT u.username, a.id FROM users u JOIN accounts a "
                "ON a.owner_type = 'user' AND a.owner_id = u.id AND a.asset = 'POINTS'"
            )
        )
        transfers = await _timed_copy(
            conn,
            "transfers",
            "bench_transfers",
            [
                (
                    f"bare:{rid}",
                    funding,
                    account_of[mid],
                    pts,
                    "POINTS",
                    "partner_points",
                    f"points_file:f:{i + 2}",
                    "{}",
                    now,
                )
                for i, (rid, mid, pts, _, _) in enumerate(parsed)
            ],
            list(TRANSFER_COLUMNS),
            foreign_keys=", FOREIGN KEY (debit_account_id) REFERENCES accounts (id), "
            "FOREIGN KEY (credit_account_id) REFERENCES accounts (id)",
        )
    finally:
        await conn.close()
    return {"unindexed_raw_rows": raw, "points_records": staged, "transfers": transfers}


async def one_per_transaction(url: str, sample: int, members: int) -> dict[str, Any]:
    db = Database(url)
    async with db.unit_of_work() as s:
        funding = await s.scalar(select(PartnerPointsSettings.funding_account_id))
        accounts = {
            owner: aid
            for owner, aid in (
                await s.execute(
                    select(User.username, Account.id)
                    .join(Account, Account.owner_id == User.id)
                    .where(Account.owner_type == "user", Account.asset == "POINTS")
                )
            ).all()
        }
    assert funding is not None
    t0 = time.perf_counter()
    for i in range(sample):
        async with db.unit_of_work() as s:
            await ledger.transfer(
                s,
                idempotency_key=f"reference:{i}",
                debit_account_id=funding,
                credit_account_id=accounts[f"m{i % members}"],
                amount=1 + i % 100,
                kind="points_file",
            )
    seconds = time.perf_counter() - t0
    await db.dispose()
    return {
        "records": sample,
        "seconds": round(seconds, 2),
        "records_per_s": round(sample / seconds),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=20_000)
    args = parser.parse_args()
    url = os.environ.get("INCENTIVE_BENCH_DATABASE_URL", DEFAULT_PG)
    name = str(make_url(url).database)
    await recreate_database(url, name)
    work = Path(tempfile.mkdtemp(prefix="incentive-bench-points-"))
    settings = Settings(data_dir=work / "data", database_url=url, demo_data=False)
    settings.data_dir.mkdir()
    try:
        inbox = await prepare(url, settings, args, work)
        enc, partner = partner_file(work, args.records, args.members)
        enc.rename(inbox / enc.name)
        run = await run_pipeline(url, settings)
        expected = sum(1 + i % 100 for i in range(args.records))
        checked = await check(url, settings, args.records, expected)
        bare = await bare_copies(url, args.records, args.members)
        single = await one_per_transaction(url, args.sample, args.members)
    finally:
        await drop_database(url, name)
        stop_gpg_agents(work, settings)
        shutil.rmtree(work, ignore_errors=True)
    stages = stage_rates(run["seen"], args.records, run["process_wall_s"])
    end_to_end = stages["end_to_end"]["records_per_s"]
    against = against_bare(run["seen"], run["process_wall_s"], args.records, bare)
    report = {
        "bench": "points_file",
        "date": datetime.now(UTC).date().isoformat(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "records": args.records,
        "members": args.members,
        "partner_side": partner,
        "stages": stages,
        "against_bare_database": against,
        "process_wall_s": round(run["process_wall_s"], 2),
        "peak_rss_mb": run["peak_rss_mb"],
        "children_maxrss_mb": run["children_maxrss_mb"],
        "checks": checked,
        "reference_bare_copy": bare,
        "reference_one_per_transaction": single,
        "end_to_end_over_one_per_transaction": round(end_to_end / single["records_per_s"], 1),
        "targets": {
            "end_to_end_over_bare_copy_of_transfers_max": 2.0,
            "peak_rss_mb_max": 300,
            "met": {
                "end_to_end_over_bare_copy_of_transfers": against["end_to_end"]["ratio"] <= 2.0,
                "peak_rss_mb": run["peak_rss_mb"] <= 300,
            },
        },
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


def against_bare(
    seen: dict[str, float], wall: float, n: int, bare: dict[str, Any]
) -> dict[str, Any]:
    """Each stage's seconds, share of the end to end, and ratio to its bare database
    equivalent (a stage the 50 ms poll skipped counts in the next one)."""

    def reached(state: str) -> float:
        later = STAGES[STAGES.index(state) :]
        return min((seen[s] for s in later if s in seen), default=wall)

    end = reached("delivered")
    spans = {
        "start_decrypt": (0.0, reached("decrypted"), None),
        "staging": (reached("decrypted"), reached("staged"), "points_records"),
        "validation": (reached("staged"), reached("crediting"), None),
        "crediting": (reached("crediting"), reached("credited"), "transfers"),
        "feedback_and_delivery": (reached("credited"), end, None),
        "end_to_end": (0.0, end, "transfers"),
    }
    out: dict[str, Any] = {}
    for name, (start, stop, equivalent) in spans.items():
        seconds = stop - start
        row: dict[str, Any] = {
            "seconds": round(seconds, 2),
            "share": round(seconds / end, 3),
            "records_per_s": round(n / seconds) if seconds > 0 else None,
        }
        if equivalent is not None:
            row["bare_copy_into"] = equivalent
            row["ratio"] = round(seconds / bare[equivalent]["seconds"], 2)
        out[name] = row
    return out


if __name__ == "__main__":
    asyncio.run(main())
