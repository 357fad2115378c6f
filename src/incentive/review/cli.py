"""CLI: `incentive review lists|create|import|add|remove|severity` — the sensitive-word lists,
against the configured database (audited with no actor: the command line). Each prints one
JSON object; a refusal prints ``error: ...`` and exits 2 for bad input, 1 otherwise."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.errors import BadRequest
from incentive.kit.commands import echo_json, fail, run_work
from incentive.review import words
from incentive.review.schemas import LIST_NAME

review_app = typer.Typer(no_args_is_help=True, help="Sensitive-word lists of the automated review")


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")


def _shown(row: Any, changed: int | None = None) -> dict[str, Any]:
    shown = {
        "name": row.name,
        "severity": row.severity,
        "version": row.version,
        "word_count": row.word_count,
    }
    return shown if changed is None else {**shown, "changed": changed}


def _clean(given: list[str], field: str = "words") -> list[str]:
    try:
        return words.clean_words(given, field=field)
    except BadRequest as exc:
        fail(exc.detail, 2)


def _severity(value: str) -> str:
    if value not in ("reject", "hold"):
        fail(f"--severity must be reject or hold, not {value!r}", 2)
    return value


@review_app.command("lists")
def lists() -> None:
    """Every list with its severity, version and size."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        page = await words.lists(session, limit=200)
        return {"lists": [_shown(row) for row in page.items]}

    echo_json(run_work(work))


@review_app.command("create")
def create(
    name: str,
    severity: str = typer.Option("reject", "--severity", help="reject | hold"),
) -> None:
    """A new, empty list."""
    chosen = _severity(severity)
    if not re.fullmatch(LIST_NAME, name):  # as the API takes it (and can address it afterwards)
        fail(f"name must match {LIST_NAME}, not {name!r}", 2)

    async def work(session: AsyncSession) -> dict[str, Any]:
        return _shown(await words.create_list(session, None, name, chosen))

    echo_json(run_work(work))


@review_app.command("import")
def import_(
    name: str,
    file: Annotated[Path, typer.Argument(help="UTF-8 text, one word per line")],
    replace: Annotated[
        bool,
        typer.Option("--replace/--merge", help="the list becomes the file (default) or gains it"),
    ] = True,
) -> None:
    """Fill a list from a file of words (100,000+ is fine), as one new version."""
    try:
        # utf-8-sig: a byte-order mark (as editors on Windows write) is no part of a word
        lines = file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {file}: {exc}", 2)
    cleaned = _clean(lines, field=f"{file.name}: line")

    async def work(session: AsyncSession) -> dict[str, Any]:
        row, added = await words.add_words(session, None, name, cleaned, replace=replace)
        return _shown(row, added)

    typer.echo(f"importing {len(cleaned)} words into {name} …", err=True)
    echo_json(run_work(work))


@review_app.command("add")
def add(name: str, word: list[str]) -> None:
    """Add words to a list."""
    cleaned = _clean(word)

    async def work(session: AsyncSession) -> dict[str, Any]:
        row, added = await words.add_words(session, None, name, cleaned)
        return _shown(row, added)

    echo_json(run_work(work))


@review_app.command("remove")
def remove(name: str, word: list[str]) -> None:
    """Take words out of a list."""
    cleaned = _clean(word)

    async def work(session: AsyncSession) -> dict[str, Any]:
        row, removed = await words.remove_words(session, None, name, cleaned)
        return _shown(row, removed)

    echo_json(run_work(work))


@review_app.command("severity")
def severity(name: str, value: str) -> None:
    """Set a list's severity: reject | hold."""
    chosen = _severity(value)

    async def work(session: AsyncSession) -> dict[str, Any]:
        return _shown(await words.set_severity(session, None, name, chosen))

    echo_json(run_work(work))
