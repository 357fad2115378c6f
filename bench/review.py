"""Sensitive-word review (issue 15): ``ahocorasick-rs`` against ``pyahocorasick``, side by side.

A seeded list of ``--words`` words (default 100,000: mostly 2–6 ideographs drawn from the 3,755
most common ones, GB2312 level 1, and ~8 % Latin words of 3–10 letters, some capitalised) and
a campaign of 10 text fields totalling ~5,000 characters (ideographs with Latin words, digits,
punctuation and spaces; a few list words planted as they are and a few evaded: full-width,
symbols or spaces between characters, traditional script, mixed case).

Each matcher is measured in a fresh process of its own (one after the other, so caches and
freed memory of one do not help the other), on the same list and campaign:

- ``build_s``: ``Matcher.build`` over the whole list, normalisation of every word included;
  ``build_in_thread``: a second build in ``asyncio.to_thread`` (as the service swaps lists)
  while the event loop ticks every millisecond, and the longest the loop was held up;
- ``memory_mb``: RSS after the build (after ``gc.collect()``) minus RSS before it, read from
  ``/proc/self/statm`` — resident memory, because the Rust automaton allocates outside
  Python's allocator, which tracemalloc would not see; ``build_peak_rss_mb`` the peak RSS
  growth during the build (``ru_maxrss``);
- ``review_ms``: one review = ``find`` on each of the 10 fields (normalise + search + hits),
  ``--repetitions`` times after 50 warm-ups; p50, p99, max of wall time (the target's
  figure), and ``review_cpu_ms`` the same of this thread's CPU time (``time.thread_time``:
  what is left when other processes take the cores away); ``normalise_ms`` the normalisation
  alone of the same 10 fields, the part both matchers share; ``search_ms`` the automaton alone
  over the 10 normalised fields (no hits built);
- ``hits``: hits found in the campaign; they must be equal between the matchers.

The production matcher (``incentive.review.matcher.Matcher``) is ``ahocorasick-rs``; the
``pyahocorasick`` one here is the same class with the automaton swapped (install it with
``pip install -e '.[bench]'``).

The ``swap`` part measures a list swap end to end: ``--servers`` real ``incentive serve``
processes (default 2, one uvicorn worker each) on one database (a fresh SQLite file; a fresh
PostgreSQL database when ``INCENTIVE_BENCH_DATABASE_URL`` is set, created and dropped here), an
operator's token, one list. ``--swaps`` times (default 3) a different seeded list of
``--words`` words replaces the list with one ``PUT /api/v1/review/word-lists/bench/words`` to
the first server (``put_s``: the request, its commit included). From its response every server
is screened (``POST /api/v1/review/screenings``, a text holding a word of the new list in none
of the old ones) every 50 ms until that word is hit: ``swap_s`` per server (the refresher's
poll, every 0.5 s by default, loading the words, building the matcher, the probe's answer) and
their max, the target (≤ 3 s, into every process); beside it ``load_and_build_s``, the
server's own ``incentive_review_build_seconds`` over the swap, and ``server_cpu_s``, the CPU
the server used meanwhile (wall well above it: the server waited for a core). All along, one
client per server sends ``GET /healthz`` (nothing but the event loop answers it), 20 ms
after each answer: its latency ``before`` (the 2 s before the PUT), during the ``put`` (the
first server parses 100,000 words) and during the ``swap`` (PUT answered → that server's
hit), per server over all swaps: what a swap costs the other requests (anything holding the
GIL stalls the event loop).

    python bench/review.py [--parts matchers,swap] [--words 100000] [--repetitions 2000]
        [--swaps 3] [--servers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import opencc
from httpbench import Server, customers_and_operator, tree_cpu_seconds
from sqlalchemy.engine import make_url

from incentive import migrations
from incentive.db import Database
from incentive.kit.pgadmin import drop_database, recreate_database
from incentive.review.matcher import Matcher, Word, normalise

TARGET_P99_MS = 5.0
TARGET_SWAP_S = 3.0
PROBE_EVERY_S = 0.05
HEALTH_EVERY_S = 0.02
BEFORE_S = 2.0
METRICS_TOKEN = "bench-review"
BUILD_METRIC = "incentive_review_build_seconds_sum "
FIELDS = 10
FIELD_CHARS = 500


class PyAhoMatcher(Matcher):
    """The same matcher on ``pyahocorasick``'s automaton."""

    def _compile(self, patterns: tuple[str, ...]) -> Any:
        import ahocorasick

        automaton = ahocorasick.Automaton()
        for i, pattern in enumerate(patterns):
            automaton.add_word(pattern, (i, len(pattern)))
        automaton.make_automaton()
        return automaton

    def _search(self, normalised: str) -> list[tuple[int, int, int]]:
        return [
            (i, end + 1 - length, end + 1) for end, (i, length) in self._automaton.iter(normalised)
        ]


MATCHERS: dict[str, type[Matcher]] = {"ahocorasick_rs": Matcher, "pyahocorasick": PyAhoMatcher}


def common_ideographs() -> list[str]:
    """GB2312 level 1: the 3,755 most common simplified ideographs."""
    chars = []
    for hi in range(0xB0, 0xD8):
        for lo in range(0xA1, 0xFF):
            try:
                chars.append(bytes([hi, lo]).decode("gb2312"))
            except UnicodeDecodeError:
                continue
    return chars


def word_list(n: int, seed: int = 15) -> list[Word]:
    rnd = random.Random(seed)
    hanzi = common_ideographs()
    lists = [("politics", "reject"), ("ads", "hold"), ("fraud", "reject"), ("vulgar", "hold")]
    words = []
    for i in range(n):
        if rnd.random() < 0.08:
            text = "".join(rnd.choices("abcdefghijklmnopqrstuvwxyz", k=rnd.randint(3, 10)))
            text = text.capitalize() if rnd.random() < 0.3 else text
        else:
            text = "".join(rnd.choices(hanzi, k=rnd.choice((2, 2, 3, 3, 3, 4, 4, 5, 6))))
        name, severity = lists[i % len(lists)]
        words.append(Word(text, name, 3, severity))
    return words


def _evade(word: str, how: int, s2t: opencc.OpenCC) -> str:
    if how == 0:  # full-width
        return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in word)
    if how == 1:  # symbols between characters
        return "*".join(word)
    if how == 2:  # spaces between characters
        return " ".join(word)
    if how == 3:  # traditional script
        return str(s2t.convert(word))
    return word.upper()  # mixed case: Latin upper-cased


def campaign(words: list[Word], seed: int = 151) -> tuple[list[str], list[tuple[int, str]]]:
    """10 fields of ~500 characters, and the (field, word) planted: two list words in each
    field, one as it is, one evaded (full-width and upper case on Latin words; symbols,
    spaces or traditional script, that actually differs, on ideographs)."""
    rnd = random.Random(seed)
    latin = [w.text for w in words if w.text.isascii()]
    planted = []
    hanzi = common_ideographs()
    s2t = opencc.OpenCC("s2t")
    fields = []
    for f in range(FIELDS):
        parts: list[str] = []
        size = 0
        while size < FIELD_CHARS:
            r = rnd.random()
            if r < 0.07:
                piece = rnd.choice(["，", "。", "！", "、", " ", "：", "——"])
            elif r < 0.10:
                piece = " " + "".join(rnd.choices("abcdefghijklmnopqrstuvwxyz", k=6)) + " "
            elif r < 0.12:
                piece = str(rnd.randint(1, 999))
            else:
                piece = "".join(rnd.choices(hanzi, k=rnd.randint(1, 4)))
            parts.append(piece)
            size += len(piece)
        word = rnd.choice(words).text
        parts.insert(rnd.randrange(len(parts)), word)
        planted.append((f, word))
        how = (f + 1) % 5
        word = rnd.choice(latin) if how in (0, 4) else _ideographs(rnd, words, how, s2t)
        parts.insert(rnd.randrange(len(parts)), _evade(word, how, s2t))
        planted.append((f, word))
        fields.append("".join(parts))
    return fields, planted


def _ideographs(rnd: random.Random, words: list[Word], how: int, s2t: opencc.OpenCC) -> str:
    while True:
        word = rnd.choice(words).text
        if not word.isascii() and (how != 3 or s2t.convert(word) != word):
            return word


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _ms_quantiles(samples: list[float], method: str = "exclusive") -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method=method)
    return {
        "p50": round(cuts[49] * 1000, 3),
        "p99": round(cuts[98] * 1000, 3),
        "max": round(max(samples) * 1000, 3),
    }


async def build_beside_a_loop(cls: type[Matcher], words: list[Word]) -> dict[str, float]:
    """``cls.build`` in ``asyncio.to_thread`` while the loop ticks every millisecond: the
    longest the loop waited (the automaton's construction holds the GIL)."""
    stall = 0.0

    async def tick() -> None:
        nonlocal stall
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            stall = max(stall, time.perf_counter() - t0 - 0.001)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.05)
    stall = 0.0
    t0 = time.perf_counter()
    await asyncio.to_thread(cls.build, words)
    seconds = time.perf_counter() - t0
    ticker.cancel()
    return {"seconds": round(seconds, 3), "event_loop_max_stall_ms": round(stall * 1000, 1)}


def measure(name: str, n_words: int, repetitions: int) -> dict[str, Any]:
    """One matcher, in this (fresh) process."""
    words = word_list(n_words)
    fields, _ = campaign(words)
    gc.collect()
    rss0 = _rss_mb()
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    matcher = MATCHERS[name].build(words)
    build_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - peak0
    gc.collect()
    memory = _rss_mb() - rss0
    for _ in range(50):
        for text in fields:
            matcher.find(text)
    normalised = [normalise(text)[0] for text in fields]
    review, review_cpu, norm, search = [], [], [], []
    for _ in range(repetitions):
        c0 = time.thread_time()
        t0 = time.perf_counter()
        for text in fields:
            matcher.find(text)
        review.append(time.perf_counter() - t0)
        review_cpu.append(time.thread_time() - c0)
        t0 = time.perf_counter()
        for text in fields:
            normalise(text)
        norm.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for text in normalised:
            matcher._search(text)
        search.append(time.perf_counter() - t0)
    in_thread = asyncio.run(build_beside_a_loop(MATCHERS[name], words))
    hits = [
        [f, h.offset, h.length, h.matched, h.word.text, h.word.list_name]
        for f, text in enumerate(fields)
        for h in matcher.find(text)
    ]
    return {
        "patterns": len(matcher),
        "build_s": round(build_s, 3),
        "memory_mb": round(memory, 1),
        "build_peak_rss_mb": round(peak, 1),
        "build_in_thread": in_thread,
        "review_ms": _ms_quantiles(review),
        "review_cpu_ms": _ms_quantiles(review_cpu),
        "normalise_ms": _ms_quantiles(norm),
        "search_ms": _ms_quantiles(search),
        "hits": hits,
    }


class Stream:
    """``GET /healthz`` back to back (``HEALTH_EVERY_S`` apart) on one server: (start, s)."""

    def __init__(self, base: str) -> None:
        self.client = httpx.AsyncClient(base_url=base, timeout=30)
        self.samples: list[tuple[float, float]] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            t0 = time.perf_counter()
            (await self.client.get("/healthz")).raise_for_status()
            self.samples.append((t0, time.perf_counter() - t0))
            await asyncio.sleep(HEALTH_EVERY_S)

    def within(self, start: float, end: float) -> list[float]:
        return [s for t, s in self.samples if start <= t < end]

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.client.aclose()


async def _screen(client: httpx.AsyncClient, probe: str) -> tuple[bool, int]:
    """Whether the server's matcher hits ``probe`` (in a sentence), and its revision."""
    text = {"texts": {"title": f"本周{probe}活动"}}
    r = await client.post("/api/v1/review/screenings", json=text)
    r.raise_for_status()
    body = r.json()
    return any(h["word"] == probe for h in body["hits"]), int(body["revision"])


async def _until_hit(server: Server, client: httpx.AsyncClient, probe: str, since: float) -> Any:
    cpu = tree_cpu_seconds(server.proc.pid)
    while True:
        hit, revision = await _screen(client, probe)
        if hit:
            return {
                "swap_s": round(time.perf_counter() - since, 3),
                "revision": revision,
                "server_cpu_s": round(tree_cpu_seconds(server.proc.pid) - cpu, 2),
            }
        if time.perf_counter() - since > 60:
            raise RuntimeError(f"{probe} not hit within 60 s")
        await asyncio.sleep(PROBE_EVERY_S)


async def _build_seconds(base: str) -> float:
    """The server's time spent loading words and building matchers so far (its metric)."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        r = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    r.raise_for_status()
    line = next(x for x in r.text.splitlines() if x.startswith(BUILD_METRIC))
    return float(line.split()[-1])


def _probe(words: list[str], old: set[str]) -> str:
    """A word of the new list that normalises to no word of the old lists."""
    return next(w for w in words if len(w) >= 5 and normalise(w)[0] not in old)


def _latency(samples: list[float]) -> dict[str, Any]:
    if len(samples) < 2:
        return {"requests": len(samples)}
    return {"requests": len(samples), **_ms_quantiles(samples, "inclusive")}


async def swap_rounds(servers: list[Server], token: str, args: argparse.Namespace) -> Any:
    auth = {"Authorization": f"Bearer {token}"}
    clients = [httpx.AsyncClient(base_url=s.base, headers=auth, timeout=60) for s in servers]
    lists = {"name": "bench", "severity": "reject"}
    r = await clients[0].post("/api/v1/review/word-lists", json=lists)
    r.raise_for_status()
    streams = [Stream(s.base) for s in servers]
    windows: dict[str, list[list[float]]] = {k: [[] for _ in servers] for k in WINDOWS}
    rounds, old = [], set[str]()
    try:
        for i in range(args.swaps):
            texts = [w.text for w in word_list(args.words, seed=1000 + i)]
            probe = _probe(texts, old)
            body = json.dumps({"words": texts}, ensure_ascii=False).encode()
            before = [await _screen(c, probe) for c in clients]
            built = [await _build_seconds(s.base) for s in servers]
            assert not any(hit for hit, _ in before), probe
            await asyncio.sleep(BEFORE_S)
            t0 = time.perf_counter()
            r = await clients[0].put(
                "/api/v1/review/word-lists/bench/words",
                content=body,
                headers={"Content-Type": "application/json"},
            )
            r.raise_for_status()
            t1 = time.perf_counter()
            hits = await asyncio.gather(
                *(_until_hit(s, c, probe, t1) for s, c in zip(servers, clients, strict=True))
            )
            for hit, server, was in zip(hits, servers, built, strict=True):
                hit["load_and_build_s"] = round(await _build_seconds(server.base) - was, 3)
            for n, (stream, hit) in enumerate(zip(streams, hits, strict=True)):
                windows["before"][n] += stream.within(t0 - BEFORE_S, t0)
                windows["put"][n] += stream.within(t0, t1)
                windows["swap"][n] += stream.within(t1, t1 + hit["swap_s"])
            rounds.append(
                {
                    "put_s": round(t1 - t0, 3),
                    "words": r.json()["list"]["word_count"],
                    "body_mb": round(len(body) / 2**20, 2),
                    "revision_before": before[0][1],
                    "per_server": hits,
                    "swap_s": max(h["swap_s"] for h in hits),
                }
            )
            old = {normalise(w)[0] for w in texts}
    finally:
        for stream in streams:
            await stream.close()
        for client in clients:
            await client.aclose()
    worst = max(r["swap_s"] for r in rounds)
    return {
        "swaps": rounds,
        "swap_s_max": worst,
        "put_s_max": max(r["put_s"] for r in rounds),
        "healthz_ms": {
            f"server_{n}": {w: _latency(windows[w][n]) for w in WINDOWS}
            for n in range(len(servers))
        },
        "target": f"a {args.words:,}-word list swapped into every process <= {TARGET_SWAP_S} s "
        "(PUT answered -> first hit on every server)",
        "target_met": worst <= TARGET_SWAP_S,
    }


WINDOWS = ("before", "put", "swap")


async def swap(args: argparse.Namespace) -> dict[str, Any]:
    """The ``swap`` part: servers on a fresh database, ``--swaps`` list imports."""
    data_dir = Path(tempfile.mkdtemp(prefix="incentive-bench-review-"))
    url = os.environ.get("INCENTIVE_BENCH_DATABASE_URL")
    if url is None:
        url = f"sqlite+aiosqlite:///{data_dir / 'bench.db'}"
    else:
        await recreate_database(url, str(make_url(url).database))
    db = Database(url)
    try:
        await migrations.upgrade(db.engine)
        _, operator = await customers_and_operator(db, data_dir / "keys", 0)
        env = {
            "INCENTIVE_DATA_DIR": str(data_dir),
            "INCENTIVE_DATABASE_URL": url,
            "INCENTIVE_DEMO_DATA": "false",
            "INCENTIVE_LOG_LEVEL": "WARNING",
            "INCENTIVE_METRICS_TOKEN": METRICS_TOKEN,
        }
        servers = [Server(env, log=data_dir / f"server{n}.log") for n in range(args.servers)]
        try:
            result = await swap_rounds(servers, operator, args)
            result["server_errors_logged"] = sum(s.errors_logged() for s in servers)
        finally:
            for server in servers:
                server.stop()
    finally:
        await db.dispose()
        if not db.is_sqlite:
            await drop_database(url, str(make_url(url).database))
        shutil.rmtree(data_dir, ignore_errors=True)
    head = "sqlite" if db.is_sqlite else "postgresql"
    return {
        "database": head,
        "servers": f"{args.servers} x incentive serve (1 uvicorn worker each), one database",
        **result,
    }


def matchers(args: argparse.Namespace) -> dict[str, Any]:
    """The ``matchers`` part: each matcher measured in a fresh process of its own."""
    fields, planted = campaign(word_list(args.words))
    results = {}
    for name in MATCHERS:
        argv = [sys.executable, __file__, "--child", name, "--words", str(args.words)]
        argv += ["--repetitions", str(args.repetitions)]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(out)
    hits = {name: r.pop("hits") for name, r in results.items()}
    rs, py = results["ahocorasick_rs"], results["pyahocorasick"]
    return {
        "campaign": {"fields": len(fields), "characters": sum(len(f) for f in fields)},
        "repetitions": args.repetitions,
        "memory_measure": "RSS delta (/proc/self/statm) across build, after gc.collect()",
        "matchers": results,
        "hits": len(hits["ahocorasick_rs"]),
        "hits_sample": hits["ahocorasick_rs"][:12],
        "hits_equal": hits["ahocorasick_rs"] == hits["pyahocorasick"],
        "planted": [[f, w] for f, w in planted],
        "planted_all_found": {
            name: all(any(h[0] == f and h[4] == w for h in found) for f, w in planted)
            for name, found in hits.items()
        },
        "pyahocorasick_over_ahocorasick_rs": {
            "build": round(py["build_s"] / rs["build_s"], 2),
            "memory": round(py["memory_mb"] / rs["memory_mb"], 2) if rs["memory_mb"] else None,
            "review_p50": round(py["review_ms"]["p50"] / rs["review_ms"]["p50"], 2),
            "review_p99": round(py["review_ms"]["p99"] / rs["review_ms"]["p99"], 2),
            "search_p50": round(py["search_ms"]["p50"] / rs["search_ms"]["p50"], 2),
        },
        "targets": {
            "target": f"review of one 10-field campaign p99 <= {TARGET_P99_MS} ms",
            "target_met": {
                name: r["review_ms"]["p99"] <= TARGET_P99_MS for name, r in results.items()
            },
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="matchers,swap", help="matchers, swap or both")
    parser.add_argument("--words", type=int, default=100_000)
    parser.add_argument("--repetitions", type=int, default=2_000)
    parser.add_argument("--swaps", type=int, default=3, help="list imports in the swap part")
    parser.add_argument("--servers", type=int, default=2, help="processes in the swap part")
    parser.add_argument("--child", choices=sorted(MATCHERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        json.dump(measure(args.child, args.words, args.repetitions), sys.stdout)
        return
    parts = {p.strip() for p in args.parts.split(",")}
    if not parts or parts - {"matchers", "swap"}:
        parser.error("--parts: matchers, swap or both")
    report: dict[str, Any] = {
        "bench": "review",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.platform()}",
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "words": args.words,
    }
    if "matchers" in parts:
        report.update(matchers(args))
    if "swap" in parts:
        report["swap"] = asyncio.run(swap(args))
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    json.dump(report, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
