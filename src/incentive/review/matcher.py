"""Sensitive-word matching: the pure core of automated review (issue 15).

A text and every word are brought to one comparable form by :func:`normalise`, which keeps for
each character of that form the index of the original character it came from, so a hit found in
the normalised text is reported at its exact span of the original text:

1. per original character: Unicode NFKC (folds full-/half-width forms, circled letters,
   ligatures, compatibility ideographs), case folding, then NFKD and dropping everything that is
   not a letter or a number (categories ``L*`` and ``N*`` are kept; punctuation ``P*``, symbols
   ``S*``, separators ``Z*``, controls and format characters ``C*`` and marks ``M*`` go), so
   spaces, symbols, emoji, zero-width characters or diacritics put between (or on) the
   characters of a word do not hide it. Dropping marks also folds ``é`` to ``e`` whether it was
   written precomposed or with a combining accent;
2. on the joined result: traditional to simplified Chinese with OpenCC ``t2s`` (phrase-aware).
   When the phrase conversion changes the length, each character is converted on its own
   instead, so the map stays exact.

The per-character step is cached (a bounded table shared by all threads; entries are computed
from the character alone, so concurrent fills write equal values).

:class:`Matcher` is immutable once built: :meth:`Matcher.find` may run in many threads at once,
and :meth:`Matcher.build` may run in a worker thread (``asyncio.to_thread``) and the result be
swapped in whole. The automaton is ``ahocorasick-rs`` (chosen over ``pyahocorasick`` by
``bench/review.py``; figures in BENCHMARKS.md).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import ahocorasick_rs
import opencc

__all__ = ["Hit", "Matcher", "Word", "normalise"]

_CACHE_LIMIT = 200_000
_KEPT_CATEGORIES = frozenset("LN")


def _fold_char(char: str) -> str:
    """Step 1 for one character: NFKC, case fold, NFKD, letters and numbers only."""
    folded = unicodedata.normalize("NFKC", char).casefold()
    return "".join(
        c
        for c in unicodedata.normalize("NFKD", folded)
        if unicodedata.category(c)[0] in _KEPT_CATEGORIES
    )


class _FoldTable(dict[int, str]):
    """``str.translate`` table of step 1, filled on first sight of a character."""

    def __missing__(self, code: int) -> str:
        folded = _fold_char(chr(code))
        if len(self) < _CACHE_LIMIT:
            self[code] = folded
        return folded


_FOLD = _FoldTable()
_T2S = opencc.OpenCC("t2s")


def _t2s_char(char: str) -> str:
    converted = _T2S.convert(char)
    return converted if len(converted) == 1 else char


def _simplified(folded: str) -> str:
    """Step 2, keeping the length (one character for one)."""
    simplified = _T2S.convert(folded)
    if len(simplified) != len(folded):
        simplified = "".join(_t2s_char(c) for c in folded)
    return str(simplified)


def normalise(text: str) -> tuple[str, list[int]]:
    """The form matching runs on, and for each of its characters the index in ``text`` of the
    character it came from (non-decreasing; one original character may give several)."""
    folded = text.translate(_FOLD)
    if not folded:
        return "", []
    index = [i for i, c in enumerate(text) if _FOLD[ord(c)]]
    if len(index) != len(folded):  # some character gave more than one (ß -> ss, ﬁ -> fi)
        index = [i for i, c in enumerate(text) for _ in _FOLD[ord(c)]]
    return _simplified(folded), index


def _key(text: str) -> str:
    """``normalise(text)[0]`` without the index (what a word is matched as)."""
    folded = text.translate(_FOLD)
    return _simplified(folded) if folded else ""


@dataclass(frozen=True, slots=True)
class Word:
    """A sensitive word as a list holds it."""

    text: str
    list_name: str
    list_version: int
    severity: str


@dataclass(frozen=True, slots=True)
class Hit:
    """A word found in a text: ``text[offset:offset + length] == matched`` (original text)."""

    offset: int
    length: int
    matched: str
    word: Word


class Matcher:
    """An Aho–Corasick automaton over the normalised words; immutable, thread-safe."""

    __slots__ = ("_automaton", "_patterns", "_words")

    def __init__(self, patterns: Sequence[str], words: Sequence[tuple[Word, ...]]) -> None:
        """Use :meth:`build`. ``words[i]`` are the words whose normalised text is
        ``patterns[i]`` (distinct, not empty)."""
        self._patterns = tuple(patterns)
        self._words = tuple(words)
        self._automaton = self._compile(self._patterns)

    @classmethod
    def build(cls, words: Iterable[Word]) -> Matcher:
        """Normalise every word and build the automaton. A word that normalises to nothing is
        skipped; words of one normalised text (from several lists) all report."""
        grouped: dict[str, list[Word]] = {}
        for word in dict.fromkeys(words):
            key = _key(word.text)
            if key:
                grouped.setdefault(key, []).append(word)
        return cls(list(grouped), [tuple(ws) for ws in grouped.values()])

    def __len__(self) -> int:
        """The number of distinct normalised patterns."""
        return len(self._patterns)

    def _compile(self, patterns: tuple[str, ...]) -> ahocorasick_rs.AhoCorasick | None:
        if not patterns:
            return None
        return ahocorasick_rs.AhoCorasick(patterns, matchkind=ahocorasick_rs.MatchKind.Standard)

    def _search(self, normalised: str) -> list[tuple[int, int, int]]:
        """(pattern index, start, end) of every match in the normalised text, overlapping
        ones included."""
        if self._automaton is None:
            return []
        return self._automaton.find_matches_as_indexes(normalised, overlapping=True)

    def find(self, text: str) -> list[Hit]:
        """Every hit in ``text``, overlapping ones included, ordered by offset then length."""
        normalised, index = normalise(text)
        if not normalised:
            return []
        hits: list[Hit] = []
        for pattern, start, end in self._search(normalised):
            offset = index[start]
            stop = index[end - 1] + 1
            # marks following the last character belong to it (e + U+0301 is é)
            while stop < len(text) and unicodedata.category(text[stop])[0] == "M":
                stop += 1
            matched = text[offset:stop]
            hits.extend(Hit(offset, stop - offset, matched, w) for w in self._words[pattern])
        hits.sort(key=lambda h: (h.offset, h.length))
        return hits
