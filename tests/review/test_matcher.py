"""The sensitive-word matcher: evasions caught, spans exact in the original text."""

from __future__ import annotations

import asyncio
import unicodedata
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from incentive.review import matcher as matcher_module
from incentive.review.matcher import Hit, Matcher, Word, normalise


def word(text: str, list_name: str = "ads", version: int = 1, severity: str = "reject") -> Word:
    return Word(text, list_name, version, severity)


def spans(m: Matcher, text: str) -> list[tuple[int, int, str, str]]:
    hits = m.find(text)
    for h in hits:
        assert text[h.offset : h.offset + h.length] == h.matched
    return [(h.offset, h.length, h.matched, h.word.text) for h in hits]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("free", "free"),
        ("ＦＲＥＥ", "free"),  # full-width
        ("ﾌﾘｰ", "フリー"),  # half-width katakana
        ("FrEe", "free"),
        ("f.r.e.e", "free"),
        ("发*票", "发票"),
        ("发 票", "发票"),
        ("发\u200b票", "发票"),  # zero-width space
        ("發票", "发票"),  # traditional
        ("ⓕⓡⓔⓔ", "free"),  # circled letters
        ("🄵🅁🄴🄴", "free"),  # squared letters (symbols whose NFKC form is upper case)
        ("℡", "tel"),
        ("ﬁne", "fine"),  # ligature
        ("Straße", "strasse"),
        ("café", "cafe"),
        ("cafe\u0301", "cafe"),  # combining accent
        ("①②", "12"),
        ("😀 !", ""),
    ],
)
def test_normalise_folds_evasions(text: str, expected: str) -> None:
    normalised, index = normalise(text)
    assert normalised == expected
    assert len(index) == len(normalised)
    assert index == sorted(index)
    assert all(0 <= i < len(text) for i in index)


def test_normalise_maps_each_character_to_its_origin() -> None:
    assert normalise("发 * 票") == ("发票", [0, 4])
    assert normalise("😀Ａß") == ("ass", [1, 2, 2])


@pytest.mark.parametrize(
    ("words", "text", "matched"),
    [
        (["free"], "get it ＦＲＥＥ now", "ＦＲＥＥ"),
        (["ＦＲＥＥ"], "get it free now", "free"),
        (["free"], "get it FrEe now", "FrEe"),
        (["free"], "get it f.r.e.e now", "f.r.e.e"),
        (["free"], "get it f r e e now", "f r e e"),
        (["发票"], "代开发*票，", "发*票"),
        (["发票"], "代开发 票，", "发 票"),
        (["发票"], "代开發票，", "發票"),  # traditional text, simplified word
        (["發票"], "代开发票，", "发票"),  # traditional word, simplified text
        (["free"], "ⓕⓡⓔⓔ!", "ⓕⓡⓔⓔ"),
        (["free"], "🄵 🅁 🄴 🄴!", "🄵 🅁 🄴 🄴"),
        (["finance"], "ﬁnance", "ﬁnance"),
    ],
)
def test_evasions_are_caught(words: list[str], text: str, matched: str) -> None:
    m = Matcher.build(word(w) for w in words)
    [hit] = m.find(text)
    assert hit.matched == matched
    assert hit.offset == text.index(matched)
    assert hit.length == len(matched)
    assert hit.word == word(words[0])


def test_spans_are_exact_around_emoji_and_combining_marks() -> None:
    m = Matcher.build([word("café"), word("发票"), word("free")])
    text = "👍🏽😀 cafe\u0301! 👨‍👩‍👧 发😀票 e\u0301 F\u0308R\u200dE E\u0301\u0323."
    assert spans(m, text) == [
        (4, 5, "cafe\u0301", "café"),
        (17, 3, "发😀票", "发票"),
        (24, 9, "F\u0308R\u200dE E\u0301\u0323", "free"),
    ]


def test_overlapping_and_nested_words_all_reported_in_offset_order() -> None:
    m = Matcher.build(
        [word("票据"), word("发票"), word("freedom"), word("free"), word("reed"), word("dom")]
    )
    assert spans(m, "假发票据 FREEDOM") == [
        (1, 2, "发票", "发票"),
        (2, 2, "票据", "票据"),
        (5, 4, "FREE", "free"),
        (5, 7, "FREEDOM", "freedom"),
        (6, 4, "REED", "reed"),
        (9, 3, "DOM", "dom"),
    ]


def test_one_word_in_several_lists_reports_each() -> None:
    words = [word("发票", "ads", 3, "hold"), word("發票", "fraud", 7, "reject")]
    m = Matcher.build(words)
    assert len(m) == 1
    assert [h.word for h in m.find("开发票")] == words


def test_clean_text_has_no_hits() -> None:
    m = Matcher.build([word("发票"), word("free"), word("赌博")])
    assert m.find("春季新品上市，全场八折，欢迎光临本店！Spring sale, fresh fruit.") == []
    assert m.find("") == []


def test_a_word_that_normalises_to_nothing_is_skipped() -> None:
    m = Matcher.build([word("!!!"), word(" \u3000"), word("😀"), word("发票")])
    assert len(m) == 1
    assert [h.word.text for h in m.find("!!! 😀 发票")] == ["发票"]
    assert Matcher.build([word("***")]).find("*** anything") == []


def test_phrase_conversion_that_changes_length_keeps_the_map(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class LongerPhrases:
        """A t2s converter whose phrase table turns 發票 into three characters."""

        def convert(self, text: str) -> str:
            return text.replace("發票", "发票据").replace("發", "发")

    monkeypatch.setattr(matcher_module, "_T2S", LongerPhrases())
    assert normalise("a 發票 b") == ("a发票b", [0, 2, 3, 5])
    m = Matcher.build([word("发票")])
    assert spans(m, "开發票了") == [(1, 2, "發票", "发票")]


def test_find_in_many_threads_and_build_in_a_worker_thread() -> None:
    words = [word(f"词{i}{chr(0x4E00 + i % 500)}") for i in range(2000)] + [word("发票")]
    m = asyncio.run(asyncio.to_thread(Matcher.build, words))
    texts = [f"第{i}段：发 票 词{i}{chr(0x4E00 + i % 500)} 以及 ＦＲＥＥ" for i in range(200)]
    expected = [m.find(t) for t in texts]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            assert list(pool.map(m.find, texts)) == expected
    assert all(len(e) == 2 for e in expected)


# --- property: a word inserted anywhere, its characters spread by separators, is found ---

WORD_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789发票免费中奖红包现金优惠活动"


def _folds_to_nothing(char: str) -> bool:
    """Judged apart from the code under test: no letter or number left after NFKC, case
    folding and NFKD (U+0345, a combining mark, folds to the letter ι)."""
    compat = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", char).casefold())
    return not any(unicodedata.category(c)[0] in "LN" for c in compat)


SEPARATORS = st.characters(categories=["P", "S", "Z", "Cc", "Cf", "M"]).filter(_folds_to_nothing)
_MARK_CHARS = "".join(chr(c) for c in range(0x110000) if unicodedata.category(chr(c))[0] == "M")
MARKS = st.text(st.characters(categories=["M"]), max_size=2)
# random text avoids ideographs other than WORD_CHARS': a traditional phrase next to the word
# could convert the word's own characters otherwise (OpenCC's phrases are context)
TEXT = st.text(
    st.one_of(st.characters(exclude_categories=["Cs", "Lo"]), st.sampled_from(WORD_CHARS)),
    max_size=30,
)


def _disguise(char: str, how: int) -> str:
    if how == 1 and char.isascii():
        return char.upper()
    if how == 2 and char.isascii():
        return chr(ord(char) + 0xFEE0)  # full-width
    if how == 3 and "a" <= char <= "z":
        return chr(ord(char) - ord("a") + 0x1F130)  # squared capital letter
    return char


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    prefix=TEXT,
    marks=MARKS,
    suffix=TEXT,
    chars=st.lists(st.sampled_from(WORD_CHARS), min_size=1, max_size=6),
    disguises=st.lists(st.integers(0, 3), min_size=6, max_size=6),
    gaps=st.lists(st.text(SEPARATORS, max_size=3), min_size=5, max_size=5),
)
def test_an_inserted_word_is_found_at_its_original_span(
    prefix: str,
    marks: str,
    suffix: str,
    chars: list[str],
    disguises: list[int],
    gaps: list[str],
) -> None:
    w = word("".join(chars))
    inserted = "".join(
        (gaps[i - 1] if i else "") + _disguise(c, disguises[i]) for i, c in enumerate(chars)
    )
    text = prefix + inserted + marks + suffix
    # marks right after the word belong to its last character
    after = marks + suffix
    span = len(inserted) + len(after) - len(after.lstrip(_MARK_CHARS))
    expected = Hit(len(prefix), span, text[len(prefix) : len(prefix) + span], w)
    hits = Matcher.build([w]).find(text)
    assert expected in hits
    for h in hits:
        assert text[h.offset : h.offset + h.length] == h.matched
