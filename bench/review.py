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

    python bench/review.py [--words 100000] [--repetitions 2000]
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
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import opencc

from incentive.review.matcher import Matcher, Word, normalise

TARGET_P99_MS = 5.0
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


def _ms_quantiles(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--words", type=int, default=100_000)
    parser.add_argument("--repetitions", type=int, default=2_000)
    parser.add_argument("--child", choices=sorted(MATCHERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        json.dump(measure(args.child, args.words, args.repetitions), sys.stdout)
        return
    fields, planted = campaign(word_list(args.words))
    results = {}
    for name in MATCHERS:
        argv = [sys.executable, __file__, "--child", name, "--words", str(args.words)]
        argv += ["--repetitions", str(args.repetitions)]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(out)
    hits = {name: r.pop("hits") for name, r in results.items()}
    rs, py = results["ahocorasick_rs"], results["pyahocorasick"]
    report = {
        "bench": "review",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.platform()}",
        "python": platform.python_version(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "words": args.words,
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
    json.dump(report, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
