"""`incentive` command line. Each domain contributes a sub-command group (its own cli.py)."""

from __future__ import annotations

import asyncio

import typer

from incentive import domains, migrations
from incentive.db import Database
from incentive.settings import get_settings

app = typer.Typer(no_args_is_help=True, help="Incentive marketing platform")
db_app = typer.Typer(no_args_is_help=True, help="Database schema")
app.add_typer(db_app, name="db")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="bind address"),
    port: int = typer.Option(8000, help="bind port"),
    workers: int = typer.Option(1, help="API processes"),
) -> None:
    """Run the HTTP API (and, on the embedded default, the background worker)."""
    import uvicorn

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
        db = Database(settings.resolved_database_url)
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
