"""`incentive` command line. Each domain contributes a sub-command group (its own cli.py)."""

from __future__ import annotations

import asyncio

import typer

from incentive import domains, migrations
from incentive.auth.keyring import KeyRing
from incentive.db import Database
from incentive.settings import Settings, get_settings

app = typer.Typer(no_args_is_help=True, help="Incentive marketing platform")
db_app = typer.Typer(no_args_is_help=True, help="Database schema")
app.add_typer(db_app, name="db")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="bind address"),
    port: int = typer.Option(8000, help="bind port"),
    workers: int = typer.Option(
        1,
        min=1,
        help="API processes sharing the port (PostgreSQL + Redis only); see README "
        "'Choosing --workers and the pool sizes'",
    ),
) -> None:
    """Run the HTTP API (and, unless INCENTIVE_EMBEDDED_WORKER=false, the background work).

    With ``--workers N`` a supervisor starts N processes on one listening socket and stops
    them all on SIGINT/SIGTERM. Every process runs the same start-up: the outbox relay,
    stream consumers and worker jobs claim their work from the database or Redis, so N of
    them are safe; each records its own purchases (group commit).
    """
    import uvicorn

    if workers > 1:
        settings = get_settings()
        refusal = _single_process_state(settings)
        if refusal:
            typer.echo(f"--workers {workers} needs PostgreSQL and Redis: {refusal}", err=True)
            raise typer.Exit(2)
        # One signing key for every process: created here, before they start, so that N
        # processes starting on an empty key directory do not each create their own.
        KeyRing.load(settings.data_dir / "keys", settings.signing_key_file)
    uvicorn.run(
        "incentive.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        # The app trusts X-Forwarded-For itself, from INCENTIVE_FORWARDED_ALLOW_IPS only.
        proxy_headers=False,
    )


def _single_process_state(settings: Settings) -> str | None:
    """Why this deployment's state cannot be shared by several API processes, if it cannot."""
    if settings.is_sqlite:
        return (
            "the embedded SQLite database is migrated and seeded by the process that serves "
            "it; set INCENTIVE_DATABASE_URL"
        )
    if not settings.redis_url:
        return (
            "without INCENTIVE_REDIS_URL the stock, the login throttle and event delivery "
            "live in each process's memory (stock would be sold once per process)"
        )
    return None


@app.command()
def worker() -> None:
    """Run the background work (outbox relay, event consumers, pipelines) without HTTP.

    Uses the same start-up as `serve`, so every domain's background task runs here too.
    Safe to run many at once: work is claimed from the database. Stops on SIGINT/SIGTERM.
    """
    import signal

    from incentive.app import create_app

    settings = get_settings().model_copy(update={"embedded_worker": True})
    application = create_app(settings)

    async def _run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with application.router.lifespan_context(application):
            typer.echo("worker running", err=True)
            await stop.wait()

    asyncio.run(_run())


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply migrations to the configured database."""
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    async def _run() -> None:
        db = Database.for_settings(settings)
        try:
            await migrations.upgrade(db.engine, revision)
        finally:
            await db.dispose()

    asyncio.run(_run())
    typer.echo(f"database at {revision}")


domains.load()  # every live-config key and table, for `config list` and the rest
domains.register_cli(app)


if __name__ == "__main__":
    app()
