"""A real `incentive serve` process on a loopback port, for tests that need a true server."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    base_url: str
    process: asyncio.subprocess.Process
    log_path: Path
    env: dict[str, str]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@asynccontextmanager
async def running_server(
    data_dir: Path, database_url: str, extra_env: dict[str, str] | None = None
) -> AsyncIterator[Server]:
    port = free_port()
    env = {
        **os.environ,
        "INCENTIVE_DATA_DIR": str(data_dir),
        "INCENTIVE_DATABASE_URL": database_url,
        "INCENTIVE_DEMO_DATA": "false",
        "INCENTIVE_LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    log_path = data_dir / "server.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "incentive.cli",
            "serve",
            "--port",
            str(port),
            env=env,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", proc, log_path, env)
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=1) as client:
            for _ in range(150):
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.returncode is not None:
                    raise RuntimeError(f"server exited:\n{server.log()}")
                await asyncio.sleep(0.2)
            else:
                raise RuntimeError(f"server did not start:\n{server.log()}")
        yield server
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
