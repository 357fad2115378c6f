"""Feedback and exception files v1: writers and readers; property tests with hypothesis."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from incentive.points_files.answer_format import (
    AnswerHeader,
    RecordResult,
    RecordStatus,
    read_exception,
    read_feedback,
    write_exception,
    write_feedback,
)
from incentive.points_files.errors import FileRejected
from incentive.points_files.format import INT64_MAX, RecordReason, RejectReason, sanitize_detail
from tests.points_files.strategies import aware, member_ids, partner_codes, points, record_ids

results = st.builds(
    lambda rid, member, pts, failed, reason, detail: RecordResult(
        rid,
        member,
        pts,
        RecordStatus.FAILED if failed else RecordStatus.OK,
        reason if failed else None,
        detail if failed else "",
    ),
    record_ids,
    member_ids,
    points,
    st.booleans(),
    st.sampled_from(list(RecordReason)),
    st.text(max_size=60),  # anything at all: the writer sanitises it
)


@settings(max_examples=200)
@given(
    partner=partner_codes,
    seq=st.integers(1, INT64_MAX),
    when=aware,
    rows=st.lists(results, max_size=30),
)
def test_feedback_writer_output_parses_back(
    partner: str, seq: int, when: datetime, rows: list[RecordResult]
) -> None:
    out = io.BytesIO()
    totals = write_feedback(out, AnswerHeader(partner, seq, when), iter(rows))
    header, parsed, parsed_totals = read_feedback(io.BytesIO(out.getvalue()))
    assert header.partner_code == partner
    assert header.file_seq == seq
    assert header.processed_at == when.replace(microsecond=0)
    assert header.processed_at.utcoffset() == timedelta(0)
    assert parsed_totals == totals
    assert [(r.record_id, r.member_id, r.points, r.status, r.reason_code) for r in parsed] == [
        (r.record_id, r.member_id, r.points, r.status, r.reason_code) for r in rows
    ]
    assert [p.detail for p in parsed] == [sanitize_detail(r.detail) for r in rows]
    assert totals.points_credited == sum(r.points for r in rows if r.status is RecordStatus.OK)


def test_feedback_layout_exactly() -> None:
    out = io.BytesIO()
    write_feedback(
        out,
        AnswerHeader("ACME", 7, datetime(2025, 1, 9, 18, 49, tzinfo=timezone(timedelta(hours=8)))),
        [
            RecordResult("r1", "alice", 100, RecordStatus.OK),
            RecordResult(
                "r2", "bob", 5, RecordStatus.FAILED, RecordReason.UNKNOWN_MEMBER, "no |such\nmember"
            ),
        ],
    )
    assert out.getvalue() == (
        b"H|ACME|7|2025-01-09T10:49:00+00:00|1\n"
        b"R|r1|alice|100|OK||\n"
        b"R|r2|bob|5|FAILED|UNKNOWN_MEMBER|no such member\n"
        b"T|2|1|1|100\n"
    )


def test_feedback_writer_refuses_inconsistent_results() -> None:
    when = datetime(2025, 1, 9, tzinfo=UTC)
    bad = [
        RecordResult("r1", "a", 1, RecordStatus.OK, RecordReason.UNKNOWN_MEMBER),
        RecordResult("r1", "a", 1, RecordStatus.FAILED),
        RecordResult("r 1", "a", 1, RecordStatus.OK),
        RecordResult("r1", "a|b", 1, RecordStatus.OK),
        RecordResult("r1", "a", 0, RecordStatus.OK),
    ]
    for result in bad:
        with pytest.raises(ValueError):  # noqa: PT011
            write_feedback(io.BytesIO(), AnswerHeader("ACME", 1, when), [result])
    with pytest.raises(ValueError, match="timezone"):
        write_feedback(io.BytesIO(), AnswerHeader("ACME", 1, datetime(2025, 1, 9)), [])  # noqa: DTZ001


@settings(max_examples=200)
@given(
    partner=partner_codes,
    seq=st.integers(1, INT64_MAX),
    reason=st.sampled_from(list(RejectReason)),
    detail=st.text(max_size=100),
)
def test_exception_writer_output_parses_back(
    partner: str, seq: int, reason: RejectReason, detail: str
) -> None:
    out = io.BytesIO()
    write_exception(out, partner, seq, reason, detail)
    report = read_exception(io.BytesIO(out.getvalue()))
    assert (report.header.partner_code, report.header.file_seq) == (partner, seq)
    assert report.reason_code is reason
    assert report.detail == sanitize_detail(detail)
    assert "|" not in report.detail
    assert "\n" not in report.detail


def test_exception_layout_exactly() -> None:
    out = io.BytesIO()
    exc = FileRejected(RejectReason.BAD_FORMAT, "points must be a positive integer", 17)
    write_exception(
        out,
        "ACME",
        7,
        exc.reason_code,
        exc.exception_detail,
        processed_at=datetime(2025, 1, 9, 10, 49, 0, 5, tzinfo=UTC),
    )
    assert out.getvalue() == (
        b"H|ACME|7|2025-01-09T10:49:00+00:00|1\n"
        b"E|BAD_FORMAT|line 17: points must be a positive integer\n"
        b"T|0|0\n"
    )
