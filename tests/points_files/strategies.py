"""Hypothesis strategies for v1 points files and their answers (shared by the format tests)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import strategies as st

from incentive.points_files.format import INT64_MAX

partner_codes = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,15}", fullmatch=True)
record_ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
field_chars = st.characters(blacklist_characters="|", blacklist_categories=("Cc", "Cs", "Zl", "Zp"))
member_ids = st.text(field_chars, min_size=1, max_size=30).filter(lambda s: s.strip() != "")
memos = st.text(field_chars, max_size=40)
# Unbounded too: a partner may send any positive integer; beyond 64 bits it is still a
# well-formed record (answered INVALID_POINTS by the pipeline) and sums are exact.
points = st.one_of(
    st.integers(1, 10_000),
    st.integers(1, INT64_MAX),
    st.integers(INT64_MAX - 10, INT64_MAX + 10),
    st.integers(min_value=1),
)
offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
aware = st.datetimes(
    min_value=datetime(1970, 1, 1),  # noqa: DTZ001 (hypothesis bounds are naive)
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=offsets,
)
records = st.tuples(record_ids, member_ids, points, aware, memos)
record_lists = st.lists(records, max_size=25, unique_by=lambda r: r[0])
