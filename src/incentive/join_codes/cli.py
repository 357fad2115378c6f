"""CLI: `incentive join-codes generate|export|void` against the configured database.

``generate`` and ``void`` run in one unit of work and print one JSON object; they are audited
with no actor (the command line). ``export`` writes the campaign's codes as CSV to stdout or
``--output``, read in chunks (never the whole set in memory). A refusal prints ``error: ...``
on stderr and exits 2 for invalid input, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.campaigns import service as campaigns
from incentive.errors import BadRequest, IncentiveError
from incentive.join_codes import service
from incentive.kit.commands import command_database, echo_json, fail, run_work

join_codes_app = typer.Typer(no_args_is_help=True, help="Campaign join codes (预制码)")


def register(app: typer.Typer) -> None:
    app.add_typer(join_codes_app, name="join-codes")


@join_codes_app.command("generate")
def generate(
    campaign_id: str = typer.Argument(..., help="campaign id"),
    count: int = typer.Option(..., "--count", help=f"codes to generate, 1 to {service.MAX_COUNT}"),
    prefix: str | None = typer.Option(None, "--prefix", help="written before each code"),
) -> None:
    """Generate COUNT single-use codes for a campaign that has not ended or been cancelled."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        done = await service.generate(session, campaign_id, count, prefix, None)
        return {"campaign_id": done.campaign_id, "count": done.count, "prefix": done.prefix}

    echo_json(run_work(work))


@join_codes_app.command("void")
def void(
    campaign_id: str = typer.Argument(..., help="campaign id"),
    codes: Annotated[
        list[str] | None, typer.Option("--code", help="a code to void (repeatable)")
    ] = None,
    all_unused: bool = typer.Option(False, "--all-unused", help="void every unused code"),
) -> None:
    """Void the given unused codes, or every unused code of the campaign."""
    if bool(codes) == all_unused:
        fail("give --code (one or more) or --all-unused", 2)

    async def work(session: AsyncSession) -> dict[str, Any]:
        voided = await service.void(session, campaign_id, codes or None, None)
        return {"campaign_id": campaign_id, "voided": voided}

    echo_json(run_work(work))


async def _export(campaign_id: str, status: str | None, out: Any) -> int:
    rows = 0
    async with command_database() as db:
        async with db.unit_of_work() as session:
            await campaigns.get_campaign(session, campaign_id)
        async for chunk in service.export_chunks(db.reader, campaign_id, status):
            out.write(chunk)
            rows += chunk.count("\n")
    return rows - 1


@join_codes_app.command("export")
def export(
    campaign_id: str = typer.Argument(..., help="campaign id"),
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="CSV file (default stdout)")
    ] = None,
    status: str | None = typer.Option(None, "--status", help="unused, used or void"),
) -> None:
    """Write the campaign's codes as CSV (header line first, code order)."""
    if status is not None and status not in ("unused", "used", "void"):
        fail("--status: unused, used or void", 2)
    try:
        if output is None:
            asyncio.run(_export(campaign_id, status, sys.stdout))
        else:
            with output.open("w", encoding="utf-8", newline="") as out:
                rows = asyncio.run(_export(campaign_id, status, out))
            echo_json({"campaign_id": campaign_id, "rows": rows, "output": str(output)})
    except BadRequest as exc:
        fail(exc.detail, 2)
    except IncentiveError as exc:
        fail(exc.detail, 1)
    except OSError as exc:
        fail(f"{type(exc).__name__}: {exc}", 1)
