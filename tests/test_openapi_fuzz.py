"""Schemathesis over /openapi.json against a real server process: no 5xx, responses match."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from incentive.auth.keyring import KeyRing
from incentive.auth.tokens import issue_access_token
from incentive.db import Database
from tests.factories import make_user_row
from tests.servers import running_server


async def test_schemathesis_finds_no_server_errors(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    async with running_server(tmp_path, database_url) as server:
        operator = await make_user_row(db, username="fuzzop", role="operator")
        token, _ = issue_access_token(
            KeyRing.load(tmp_path / "keys"),
            user_id=operator.id,
            name=operator.username,
            role="operator",
            merchant_id=None,
            ttl_seconds=3600,
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{server.base_url}/openapi.json",
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--max-examples",
            os.environ.get("INCENTIVE_FUZZ_EXAMPLES", "15"),
            "--seed",
            "1",
            "--header",
            f"Authorization: Bearer {token}",
            "--suppress-health-check",
            "all",
            "--warnings",
            "off",
            "--exclude-path",
            "/metrics",
            env=server.env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=600)
        assert proc.returncode == 0, out.decode()[-8000:]
        assert "unhandled error" not in server.log()
