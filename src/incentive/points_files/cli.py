"""CLI: partner points settings (``incentive partners set-key|set-transport|set-points``), the
platform OpenPGP key (``incentive keys init|export``) and ``incentive points-files``.

The partner and key commands join the ``partners`` and ``keys`` command groups that
``auth/cli.py`` publishes. Every command runs in one unit of work on the configured database
(on SQLite the schema is upgraded first); output is one JSON object on stdout, a refusal prints
``error: ...`` on stderr and exits 2 for invalid input, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth.cli import keys_app, partners_app
from incentive.config.live import LiveConfig, live_config
from incentive.db import Database
from incentive.errors import IncentiveError
from incentive.kit.commands import command_database, echo_json, fail, run_work
from incentive.kit.pagination import DEFAULT_LIMIT, MAX_LIMIT
from incentive.points_files import service
from incentive.points_files.crypto import default_gnupg_home, init_platform_key
from incentive.points_files.errors import PointsCryptoError
from incentive.points_files.pipeline import PointsPipeline
from incentive.settings import get_settings

points_app = typer.Typer(no_args_is_help=True, help="Partner points files: intake and progress")


T = TypeVar("T")


def register(app: typer.Typer) -> None:
    app.add_typer(points_app, name="points-files")


def _crypto() -> Any:
    try:
        return init_platform_key(
            default_gnupg_home(get_settings()), "Incentive points files", "points@incentive"
        )
    except (PointsCryptoError, OSError) as exc:
        fail(f"platform OpenPGP key: {exc}", 1)


@keys_app.command("init")
def keys_init() -> None:
    """Create the platform OpenPGP key pair in the data directory (no-op if it exists)."""
    crypto = _crypto()
    echo_json({"fingerprint": crypto.platform_fingerprint, "home": str(crypto.home)})


@keys_app.command("export")
def keys_export() -> None:
    """Print the platform's OpenPGP public key (ASCII-armoured) for partners to import."""
    typer.echo(_crypto().export_public_key(), nl=False)


@partners_app.command("set-key")
def set_key(
    code: str = typer.Argument(..., help="partner code"),
    key_file: str = typer.Argument(..., help="the partner's ASCII-armoured public key"),
) -> None:
    """Import a partner's OpenPGP public key and register its fingerprint."""
    try:
        armoured = Path(key_file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {key_file}: {exc}", 2)
    crypto = _crypto()

    async def work(session: AsyncSession) -> dict[str, Any]:
        row = await service.set_partner_key(session, crypto, code, armoured)
        return service.settings_json(code, row)

    echo_json(run_work(work))


@partners_app.command("set-transport")
def set_transport(
    code: str = typer.Argument(..., help="partner code"),
    inbox: str | None = typer.Option(
        None, "--inbox", help="file:///path or sftp://user@host:port/path"
    ),
    outbox: str | None = typer.Option(
        None, "--outbox", help="file:///path or sftp://user@host:port/path"
    ),
    key_file: str | None = typer.Option(None, "--key-file", help="SSH private key for sftp://"),
    known_hosts: str | None = typer.Option(None, "--known-hosts", help="known_hosts for sftp://"),
    http: bool = typer.Option(False, "--http", help="HTTP upload and download only"),
) -> None:
    """Where the partner's files come from and its answers go (or --http for API only)."""
    if http and (inbox or outbox):
        fail("--http excludes --inbox/--outbox", 2)
    if not http and not (inbox and outbox):
        fail("give --inbox and --outbox, or --http", 2)

    async def work(session: AsyncSession) -> dict[str, Any]:
        row = await service.set_partner_transport(
            session,
            code,
            inbox_url=None if http else inbox,
            outbox_url=None if http else outbox,
            key_file=key_file,
            known_hosts=known_hosts,
        )
        return service.settings_json(code, row)

    echo_json(run_work(work))


@partners_app.command("set-points")
def set_points(
    code: str = typer.Argument(..., help="partner code"),
    max_points: int | None = typer.Option(None, "--max-points", help="per-record points limit"),
    max_file_bytes: int | None = typer.Option(None, "--max-file-bytes", help="file size limit"),
    max_records: int | None = typer.Option(None, "--max-records", help="records per file"),
    max_plain_bytes: int | None = typer.Option(
        None,
        "--max-plain-bytes",
        help="decrypted size limit (default: max records x 256 bytes; stops compression bombs)",
    ),
    stale_days: int | None = typer.Option(None, "--stale-days", help="oldest txn_time accepted"),
    crediting_url: str | None = typer.Option(
        None, "--crediting-url", help="credit through an external loyalty system (HTTP)"
    ),
    ledger: bool = typer.Option(False, "--ledger", help="credit through the internal ledger"),
) -> None:
    """Per-partner limits and the crediting target; shows the settings."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        row = await service.set_partner_limits(
            session,
            code,
            max_points_per_record=max_points,
            max_file_bytes=max_file_bytes,
            max_records=max_records,
            max_plain_bytes=max_plain_bytes,
            stale_after_days=stale_days,
            crediting_url=crediting_url,
            use_ledger=ledger,
        )
        return service.settings_json(code, row)

    echo_json(run_work(work))


async def _with_pipeline(action: str, timeout_s: float | None) -> dict[str, Any]:
    settings = get_settings()
    async with command_database() as db:
        config = LiveConfig(db)
        await config.reload()
        live_config.install(config)
        pipeline = PointsPipeline(db, settings)
        try:
            stored = await pipeline.poll_inboxes()
            if action == "process":
                await pipeline.run_until_done(timeout_s)
            return {"stored": stored, "pending": await pipeline.pending_files()}
        finally:
            await pipeline.aclose()


@points_app.command("poll")
def poll() -> None:
    """Take the files waiting in every partner inbox (they leave it once stored)."""
    echo_json(asyncio.run(_with_pipeline("poll", None)))


@points_app.command("process")
def process(
    timeout: float | None = typer.Option(None, "--timeout", help="give up after N seconds"),
) -> None:
    """Poll the inboxes, then run the pipeline until every file is delivered."""
    try:
        echo_json(asyncio.run(_with_pipeline("process", timeout)))
    except TimeoutError:
        fail("files still pending at the timeout", 1)


async def _progress(file_id: str) -> dict[str, Any]:
    settings = get_settings()
    db = Database.for_settings(settings)
    try:
        async with db.unit_of_work() as s:
            row = await service.get_file(s, file_id)
            p = await service.progress(s, row)
            return {
                "id": row.id,
                "partner": p.partner_code,
                "name": row.name,
                "state": row.state,
                "reason_code": row.reason_code,
                "reason_detail": row.reason_detail,
                "records": p.counts,
                "batches_done": p.batches_done,
                "batches_total": p.batches_total,
                "batch_size": row.batch_size,
                "concurrency": row.concurrency,
                "throughput_records_per_s": p.throughput_per_s,
                "eta_seconds": p.eta_s,
                "answer_name": row.answer_name,
            }
    finally:
        await db.dispose()


def _get(file_id: str) -> dict[str, Any]:
    try:
        return asyncio.run(_progress(file_id))
    except IncentiveError as exc:
        fail(exc.detail, 1)


@points_app.command("show")
def show(file_id: str) -> None:
    """State and progress of one file (JSON)."""
    echo_json(_get(file_id))


@points_app.command("list")
def list_files(
    partner: str | None = typer.Option(None, "--partner"),
    state: str | None = typer.Option(None, "--state"),
    limit: int = typer.Option(DEFAULT_LIMIT, "--limit", min=1, max=MAX_LIMIT),
    cursor: str | None = typer.Option(None, "--cursor", help="next_cursor of the previous page"),
) -> None:
    """Newest files first (JSON: items and next_cursor; pass --cursor for the next page)."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        partner_id = None if partner is None else await service.partner_id(session, partner)
        rows, next_cursor = await service.list_files(
            session, partner_id=partner_id, state=state, cursor=cursor, limit=limit
        )
        return {
            "items": [
                {
                    "id": f.id,
                    "partner": code,
                    "name": f.name,
                    "state": f.state,
                    "reason_code": f.reason_code,
                }
                for f, code in rows
            ],
            "next_cursor": next_cursor,
        }

    echo_json(run_work(work))


@points_app.command("watch")
def watch(
    file_id: str,
    interval: float = typer.Option(0.5, "--interval", help="seconds between refreshes"),
) -> None:
    """A live progress bar until the file is delivered."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.fields[state]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("batch {task.fields[batch]} x{task.fields[conc]}"),
        TextColumn("{task.fields[rate]} rec/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ) as bar:
        task = bar.add_task("points", total=None, state="...", batch="-", conc="-", rate="-")
        while True:
            p = _get(file_id)
            records = p["records"]
            done = records["credited"] + records["failed"]
            rate = p["throughput_records_per_s"]
            bar.update(
                task,
                total=max(records["total"], 1),
                completed=done if records["total"] else 1,
                state=p["state"],
                batch=p["batch_size"] or "-",
                conc=p["concurrency"] or "-",
                rate="-" if rate is None else f"{rate:,.0f}",
            )
            if p["state"] == "delivered":
                break
            time.sleep(interval)
    echo_json(_get(file_id))
