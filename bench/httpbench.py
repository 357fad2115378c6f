"""What every HTTP bench shares: a real ``incentive serve``, ``wrk`` load, and the server's own
CPU time per request.

Server CPU per request is the server process tree's CPU time (user + system, every uvicorn
worker included) over a run divided by the requests answered: it moves least between runs on
this shared 2-core machine, so every HTTP figure prints it beside its rate.

    with Server(env, workers=1) as server:
        run = server.wrk("/api/v1/me", tokens=tokens, seconds=15, connections=200)
        run["rps"], run["p99_ms"], run["server_cpu_ms"]
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from sqlalchemy import insert

from incentive.auth.keyring import KeyRing
from incentive.auth.models import Merchant, User
from incentive.auth.tokens import issue_access_token
from incentive.db import Database, new_id, utcnow
from incentive.ledger import service as ledger

_TICK = os.sysconf("SC_CLK_TCK")

# One connection per client; each request a caller's token (round robin over ``tokens``) and,
# for writes, an Idempotency-Key unique to this run (``run`` is fresh per call, so a measured
# run never replays the warm-up's keys), which also replaces every ``@SEQ@`` in the body (ids a
# body must not repeat). With a body file (one body a line) the requests take its lines in turn,
# the threads interleaved so no two requests send the same line; past the last line they start
# again and count ``reused`` (a run that must not repeat a body checks it is 0). Bodies are read
# from a file, not written into the script: LuaJIT refuses a function of over 65,536 constants.
# Statuses are counted per thread and summed in done(), beside ``sent`` (requests written: those
# still in flight when wrk stopped may have been served without their answer being counted).
# With ``follow`` (a JSON field naming a path), a 2xx answer carrying that field queues a GET
# of the path (+ ``follow_query``) in its thread, sent as that thread's next request: a 2xx
# answer without the field is such a GET's, counted apart (``followed_ok``, of
# ``followed_sent``); any other answer counts as usual.
WRK_SCRIPT = """
local tokens = {%(tokens)s}
local bodies = {}
if %(bodies)s ~= nil then
  for line in io.lines(%(bodies)s) do bodies[#bodies + 1] = line end
end
local follow = %(follow)s
local follow_query = %(follow_query)s
local queue = {}
local counter = 0
local threads = {}
local next_id = 0
s2xx, s409, s503, sother, sent, reused, fsent, fok = 0, 0, 0, 0, 0, 0, 0, 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end
function request()
  counter = counter + 1
  local headers = {}
  if #tokens > 0 then
    headers["Authorization"] = "Bearer " .. tokens[(counter * 7 + id * 131) %% #tokens + 1]
  end
  if #queue > 0 then
    fsent = fsent + 1
    return wrk.format("GET", table.remove(queue, 1) .. follow_query, headers, nil)
  end
  sent = sent + 1
  local body = nil
  %(headers)s
  if "%(method)s" == "POST" then
    local key = "%(run)s-" .. id .. "-" .. counter
    headers["Idempotency-Key"] = key
    headers["Content-Type"] = "application/json"
    local template = %(body)s
    if #bodies > 0 then
      local index = (counter - 1) * %(threads)d + id
      if index >= #bodies then reused = reused + 1 end
      template = bodies[index %% #bodies + 1]
    end
    body = (string.gsub(template, "@SEQ@", key))
  end
  return wrk.format("%(method)s", "%(path)s", headers, body)
end
function response(status, headers, body)
  if follow ~= nil and status < 300 then
    local path = string.match(body, '"' .. follow .. '"%%s*:%%s*"([^"]*)"')
    if path == nil then fok = fok + 1 return end
    queue[#queue + 1] = path
  end
  if status < 300 then s2xx = s2xx + 1
  elseif status == 409 then s409 = s409 + 1
  elseif status == 503 then s503 = s503 + 1
  else sother = sother + 1 end
end
function done(summary, latency, requests)
  local t = {s2xx = 0, s409 = 0, s503 = 0, sother = 0, sent = 0, reused = 0, fsent = 0, fok = 0}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + thread:get(k) end
  end
  io.write(string.format(
    'WRK {"requests": %%d, "seconds": %%.3f, "errors": %%d, "p50_us": %%d, "p99_us": %%d, ' ..
    '"ok": %%d, "conflict_409": %%d, "unavailable_503": %%d, "other": %%d, ' ..
    '"sent": %%d, "bodies_reused": %%d, "followed_sent": %%d, "followed_ok": %%d}\\n',
    summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout, latency:percentile(50), latency:percentile(99),
    t.s2xx, t.s409, t.s503, t.sother, t.sent, t.reused, t.fsent, t.fok))
end
"""


async def merchant_world(db: Database, data_dir: Path, prefix: str) -> dict[str, Any]:
    """Merchant A with a staff member, an operator, the platform's marketing account (funds
    everything) and a sink account for the transfer line; tokens signed with the server's
    key ring (keys in ``data_dir``)."""
    async with db.unit_of_work() as s:
        merchant = Merchant(code="BENCH-A", name="Bench shop")
        s.add(merchant)
        await s.flush()
        users = [
            User(
                username=name,
                display_name=name,
                password_hash="-",
                role=role,
                merchant_id=merchant.id if role == "merchant" else None,
            )
            for name, role in ((f"{prefix}-operator", "operator"), (f"{prefix}-staff", "merchant"))
        ]
        s.add_all(users)
        await s.flush()
        marketing = await ledger.open_account(
            s, owner_type="platform", owner_id="marketing", asset="CNY", allow_negative=True
        )
        sink = await ledger.open_account(s, owner_type="user", owner_id="sink", asset="CNY")
        world = {"merchant": merchant.id, "marketing": marketing.id, "sink": sink.id}
        ring = KeyRing.load(data_dir / "keys")
        for key, user in zip(("operator", "staff"), users, strict=True):
            world[key] = issue_access_token(
                ring,
                user_id=user.id,
                name=user.username,
                role=user.role,
                merchant_id=user.merchant_id,
                ttl_seconds=3600,
            )[0]
    return world


async def users(
    db: Database, keys: Path, n: int, *, prefix: str = "bench", role: str = "customer"
) -> list[tuple[str, str]]:
    """``n`` users of ``role`` (``{prefix}-0`` …) written straight into ``users`` in one
    statement, each with an access token signed with the key ring in ``keys`` (the server's
    data dir): [(user id, token)], in order."""
    now = utcnow()
    rows: list[dict[str, Any]] = [
        {
            "id": new_id(),
            "username": f"{prefix}-{i}",
            "display_name": "",
            "password_hash": "-",
            "role": role,
            "merchant_id": None,
            "blocked": False,
            "created_at": now,
        }
        for i in range(n)
    ]
    if rows:
        async with db.unit_of_work() as s:
            await s.execute(insert(User), rows)
    ring = KeyRing.load(keys)
    return [
        (
            str(r["id"]),
            issue_access_token(
                ring,
                user_id=str(r["id"]),
                name=str(r["username"]),
                role=role,
                merchant_id=None,
                ttl_seconds=3600,
            )[0],
        )
        for r in rows
    ]


async def customers_and_operator(db: Database, keys: Path, n: int) -> tuple[list[str], str]:
    """``n`` customers and one operator (:func:`users`), their tokens: (customers, operator)."""
    customers = await users(db, keys, n)
    ((_, operator),) = await users(db, keys, 1, prefix="bench-operator", role="operator")
    return [token for _, token in customers], operator


def run_facts(bench: str) -> dict[str, Any]:
    """The head of a bench's JSON report: what ran, when, on what machine, under what load."""
    return {
        "bench": bench,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.platform()}",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "database": "postgresql",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and every live descendant (uvicorn workers)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / _TICK
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == current)
    return total


def wrk(
    base: str,
    path: str,
    *,
    tokens: list[str] | tuple[str, ...] = (),
    method: str = "GET",
    body: str | None = None,
    headers: dict[str, str] | None = None,
    seconds: int = 15,
    connections: int = 200,
    bodies: Sequence[str] = (),
    follow: str | None = None,
    follow_query: str = "",
) -> dict[str, Any]:
    """One ``wrk -t2`` run; requests/s, p50/p99 and statuses counted by class. ``body``'s
    ``@SEQ@`` becomes the request's unique key; ``headers`` go with every request. Given
    ``bodies`` (one line each), each request sends a different one of them in turn instead of
    ``body``, until they run out (then ``bodies_reused`` counts the repeats). Given ``follow``,
    each 2xx answer's path in that JSON field is fetched next (``followed_ok``; see
    ``WRK_SCRIPT``)."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not on PATH (apt-get install wrk)")
    if any("\n" in b for b in bodies):
        raise ValueError("a body in bodies must fit on one line")
    threads = min(2, connections)
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    listed = Path(tempfile.mkstemp(suffix=".bodies")[1])
    listed.write_text("".join(b + "\n" for b in bodies))
    script.write_text(
        WRK_SCRIPT
        % {
            "tokens": ",".join(f'"{t}"' for t in tokens),
            "bodies": json.dumps(str(listed)) if bodies else "nil",
            "threads": threads,
            "method": method,
            "path": path,
            "run": secrets.token_hex(4),
            "body": json.dumps(body) if body is not None else "nil",
            "follow": json.dumps(follow) if follow is not None else "nil",
            "follow_query": json.dumps(follow_query),
            "headers": " ".join(
                f"headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in (headers or {}).items()
            ),
        }
    )
    try:
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "30s",
        ]
        out = subprocess.run(
            [*command, "-s", str(script), base + path], check=True, capture_output=True, text=True
        ).stdout
    finally:
        script.unlink()
        listed.unlink()
    line = next(x for x in out.splitlines() if x.startswith("WRK "))
    figures: dict[str, Any] = json.loads(line[4:])
    figures["rps"] = round(figures["requests"] / figures["seconds"])
    figures["p50_ms"] = round(figures.pop("p50_us") / 1000, 1)
    figures["p99_ms"] = round(figures.pop("p99_us") / 1000, 1)
    return figures


class Server:
    """``incentive serve`` (or ``command``, whose ``{port}`` is filled in) on a free loopback
    port with ``env``, ready when ``/readyz`` answers 200; stopped on exit."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        workers: int = 1,
        log: Path | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log or Path(tempfile.mkstemp(suffix=".log")[1])
        if command is None:
            command = [sys.executable, "-m", "incentive.cli", "serve", "--port", "{port}"]
            if workers > 1:
                command += ["--workers", str(workers)]
        command = [part.replace("{port}", str(self.port)) for part in command]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.base + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start; see {self.log}")
            time.sleep(0.1)

    def wrk(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """:func:`wrk` against this server, with its CPU milliseconds per request answered."""
        before = tree_cpu_seconds(self.proc.pid)
        figures = wrk(self.base, path, **kwargs)
        used = tree_cpu_seconds(self.proc.pid) - before
        figures["server_cpu_ms"] = round(1000 * used / max(figures["requests"], 1), 3)
        return figures

    def settle(
        self, *, quiet_cpu_s: float = 0.02, every_s: float = 0.5, limit_s: float = 120
    ) -> float:
        """Wait until the server is idle again (under ``quiet_cpu_s`` of CPU per ``every_s``):
        requests still in flight when wrk stopped are served after it, and would otherwise
        be counted in the next run's CPU and database figures. Returns the seconds waited."""
        started = time.monotonic()
        last = tree_cpu_seconds(self.proc.pid)
        while time.monotonic() - started < limit_s:
            time.sleep(every_s)
            now = tree_cpu_seconds(self.proc.pid)
            if now - last < quiet_cpu_s:
                break
            last = now
        return round(time.monotonic() - started, 1)

    def errors_logged(self) -> int:
        lines = self.log.read_text(errors="replace").splitlines()
        return sum('"level": "ERROR"' in line or "Traceback" in line for line in lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
