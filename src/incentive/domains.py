"""The one list of domains: the app, the CLI, the migrations and the process start-up read it.

Adding a domain is one line in ``DOMAINS``. Each flag names a module of the domain's package
with a fixed name and shape, so every domain is read the same way:

==========  ==================  ===================================================
flag        module              what it provides
==========  ==================  ===================================================
models      ``models.py``       its tables (imported so ``Base.metadata`` is whole)
router      ``api.py``          ``router``, mounted under ``/api/v1`` (and optionally
                                ``public_router``, mounted at the root)
cli         ``cli.py``          ``register(app)``: its ``incentive`` command group
keys        ``keys.py``         its live-config keys (``config.register_key``)
kind        ``kind.py``         its campaign kind (``campaigns.kinds.register_kind``)
runtime     ``runtime.py``      optional ``start(app)`` / ``stop(app)`` run in every
                                process, and ``JOBS``: ``WorkerJob`` s run by workers
                                (``incentive worker``, or inside ``serve`` embedded)
source      ``source.py``       the data source it lends to data models
                                (``kit.sources.register_source``)
==========  ==================  ===================================================

The order is the start-up order (stop runs in reverse): configuration before the event
relay, the stock engine before the domains that deduct from it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import APIRouter, FastAPI

    from incentive.config.registry import ConfigKey

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Domain:
    name: str
    models: bool = False
    router: bool = False
    cli: bool = False
    keys: bool = False
    kind: bool = False
    runtime: bool = False
    source: bool = False

    def module(self, part: str) -> ModuleType:
        return importlib.import_module(f"incentive.{self.name}.{part}")


# flag -> the module it names in the domain's package
MODULES = {
    "models": "models",
    "router": "api",
    "cli": "cli",
    "keys": "keys",
    "kind": "kind",
    "runtime": "runtime",
    "source": "source",
}


DOMAINS: tuple[Domain, ...] = (
    Domain("auth", models=True, router=True, cli=True, keys=True, runtime=True),
    Domain("kit", models=True),
    Domain("config", models=True, router=True, cli=True, keys=True, runtime=True),
    Domain("ledger", models=True, router=True),
    Domain("events", models=True, cli=True, keys=True, runtime=True),
    Domain("stock", runtime=True),
    Domain("templates", models=True, router=True),
    Domain("campaigns", models=True, router=True, keys=True, runtime=True, source=True),
    Domain("join_codes", models=True, router=True, cli=True),
    Domain(
        "flash_sales",
        models=True,
        router=True,
        cli=True,
        keys=True,
        kind=True,
        runtime=True,
        source=True,
    ),
    Domain("activities", models=True, router=True, runtime=True),
    Domain("rebates", models=True, router=True, kind=True, source=True),
    Domain(
        "coupons",
        models=True,
        router=True,
        cli=True,
        keys=True,
        kind=True,
        runtime=True,
        source=True,
    ),
    Domain(
        "rewards",
        models=True,
        router=True,
        cli=True,
        keys=True,
        kind=True,
        runtime=True,
        source=True,
    ),
    Domain("referrals", models=True, router=True, keys=True, kind=True, runtime=True, source=True),
    Domain("sharing", models=True, router=True, runtime=True),
    Domain("review", models=True, router=True, cli=True, keys=True, runtime=True),
    Domain("points_files", models=True, router=True, cli=True, runtime=True, source=True),
    Domain("data_models", models=True, router=True, cli=True, keys=True, runtime=True),
)


@dataclass(frozen=True)
class WorkerJob:
    """Background work of a domain, run by worker processes only.

    ``every`` (seconds, or a live-config key holding them) makes it periodic: ``run`` is
    called, then the job sleeps; an error is logged and the next run goes on. Without
    ``every``, ``run`` is a loop that runs until the process stops. Any number of workers may
    run a job at once: jobs claim their work from the database.
    """

    name: str
    run: Callable[[FastAPI], Awaitable[Any]]
    every: float | ConfigKey | None = None

    def interval(self) -> float:
        if self.every is None or isinstance(self.every, float | int):
            return float(self.every or 0)
        from incentive.config import live_config

        return float(live_config.get(self.every))

    async def loop(self, app: FastAPI) -> None:
        if self.every is None:
            await self.run(app)
            return
        while True:
            try:
                await self.run(app)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker job failed; retrying", extra={"job": self.name})
            await asyncio.sleep(self.interval())


def _parts(flag: str) -> Iterator[tuple[Domain, ModuleType]]:
    for domain in DOMAINS:
        if getattr(domain, flag):
            yield (
                domain,
                domain.module(
                    {"router": "api", "keys": "keys", "runtime": "runtime"}.get(flag, flag)
                ),
            )


def load() -> None:
    """Import every domain's tables, live-config keys, campaign kind and data source
    (idempotent)."""
    for flag in ("models", "keys", "kind", "source"):
        for _ in _parts(flag):
            pass


def routers() -> list[APIRouter]:
    load()
    return [module.router for _, module in _parts("router")]


def register_cli(app: Any) -> None:
    for _, module in _parts("cli"):
        module.register(app)


def public_routers() -> list[APIRouter]:
    """Routers a domain's ``api.py`` mounts at the root (``public_router``: links people
    open, such as a share's ``/s/{token}``), not under ``/api/v1``."""
    return [r for _, module in _parts("router") if (r := getattr(module, "public_router", None))]


def runtimes() -> list[ModuleType]:
    return [module for _, module in _parts("runtime")]


def worker_jobs() -> list[WorkerJob]:
    return [job for module in runtimes() for job in getattr(module, "JOBS", ())]
