"""Schemathesis over /openapi.json against a real server process: no 5xx, responses match.

It runs in both CI runs; in the PostgreSQL + Redis run the server under test uses both (the
NUL-byte 500s existed only on PostgreSQL). ``INCENTIVE_FUZZ_EXAMPLES`` (default 50) sets the
examples per operation; the run takes about a minute either way, most of it in the
schema-coverage phase.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from incentive.auth.keyring import KeyRing
from incentive.auth.tokens import issue_access_token
from incentive.db import Database
from tests.factories import make_user_row
from tests.servers import running_server


async def test_schemathesis_finds_no_server_errors(
    db: Database, database_url: str, redis_url: str | None, tmp_path: Path
) -> None:
    # Login throttling would answer every login after the first few failures from this
    # address with a 429 before the username is ever looked up, hiding that code from the fuzz.
    server_env = {"INCENTIVE_LOGIN_MAX_FAILURES": "1000000000"}
    if redis_url:
        server_env["INCENTIVE_REDIS_URL"] = redis_url
    async with running_server(tmp_path, database_url, server_env) as server:
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
            os.environ.get("INCENTIVE_FUZZ_EXAMPLES", "50"),
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
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text[-8000:]
        assert "unhandled error" not in server.log()
    # It really ran: every operation but /metrics was tested.
    selected = re.search(r"Selected:\s*(\d+)/(\d+)", text)
    tested = re.search(r"Tested:\s*(\d+)", text)
    assert selected, text[-3000:]
    assert tested, text[-3000:]
    assert int(tested.group(1)) == int(selected.group(1)) == int(selected.group(2)) - 1
