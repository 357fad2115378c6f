"""The operator's command line, as separate processes: ``points-files watch`` follows a file
another process is working on until it is delivered; ``show`` and ``list`` report it; an
unknown id is a clear error."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sqlalchemy import select

from incentive.db import Database
from incentive.points_files.crypto import PointsCrypto
from incentive.points_files.models import PointsFile
from incentive.settings import Settings
from tests.points_files.kit import (
    Pgp,
    encrypt,
    local_transport,
    make_members,
    make_partner,
    plain_file,
    points_cli,
    rec,
    worker_env,
)


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await points_cli(env, *args)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def _last_json(out: str) -> dict[str, object]:
    start = out.rindex("\n{") + 1 if "\n{" in out else out.index("{")
    result: dict[str, object] = json.loads(out[start:])
    return result


async def test_watch_show_and_list_follow_another_process(
    db: Database,
    database_url: str,
    quiet_settings: Settings,
    crypto: PointsCrypto,
    pgp: Pgp,
    tmp_path: Path,
) -> None:
    await make_partner(db, crypto, pgp)
    await make_members(db, ["alice", "bob"])
    root = await local_transport(db, tmp_path)
    records = [rec(f"w{i}", ["alice", "bob"][i % 2], 1 + i % 9) for i in range(3000)]
    name = "POINTS_ACME_20250113_1.txt.pgp"
    encrypt(pgp, plain_file(tmp_path / "p.txt", "ACME", 1, records)).rename(root / "in" / name)
    env = {**worker_env(quiet_settings, database_url), "COLUMNS": "120"}

    worker = asyncio.create_task(_cli(env, "process", "--timeout", "90"))
    file_id = None
    for _ in range(600):
        async with db.unit_of_work() as s:
            file_id = await s.scalar(select(PointsFile.id))
        if file_id is not None:
            break
        await asyncio.sleep(0.05)
    assert file_id is not None, "the worker never took the file"
    code, out = await _cli(env, "watch", file_id, "--interval", "0.1")
    assert code == 0, out
    final = _last_json(out)
    assert final["state"] == "delivered"
    assert final["records"] == {"total": 3000, "credited": 3000, "failed": 0, "pending": 0}
    assert (await worker)[0] == 0

    code, out = await _cli(env, "show", file_id)
    assert code == 0, out
    shown = _last_json(out)
    assert (shown["id"], shown["name"], shown["answer_name"]) == (file_id, name, f"FEEDBACK_{name}")
    code, out = await _cli(env, "list", "--state", "delivered", "--partner", "ACME")
    assert code == 0, out
    assert [f["id"] for f in _last_json(out)["items"]] == [file_id]  # type: ignore[attr-defined]

    code, out = await _cli(env, "show", "no-such-file")
    assert code != 0
    assert "no-such-file" in out or "not found" in out.lower(), out
