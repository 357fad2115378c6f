"""Points file v1: reader, the partner's writer and names; property tests with hypothesis."""

from __future__ import annotations

import io
from datetime import date, datetime

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from incentive.points_files.errors import FileRejected
from incentive.points_files.format import (
    INT64_MAX,
    DetailRecord,
    Header,
    PointsFileReader,
    RejectReason,
    exception_name,
    feedback_name,
    parse_answer_name,
    parse_iso_with_offset,
    parse_points_file_name,
    points_file_name,
    write_points_file,
)
from tests.points_files.strategies import (
    aware,
    partner_codes,
    record_lists,
    records,
)

PARTNER = "ACME"
T0 = "2025-01-09T18:49:00+08:00"
T0_DT = datetime.fromisoformat(T0)


def build(header: Header, rows: list[tuple[str, str, int, datetime, str]]) -> bytes:
    out = io.BytesIO()
    write_points_file(out, header, rows)
    return out.getvalue()


def read(data: bytes, partner: str = PARTNER, **kwargs: int) -> tuple[Header, list[DetailRecord]]:
    reader = PointsFileReader(io.BytesIO(data), partner, **kwargs)  # type: ignore[arg-type]
    return reader.header, list(reader)


def rejected(data: bytes, partner: str = PARTNER, **kwargs: int) -> FileRejected:
    with pytest.raises(FileRejected) as caught:
        read(data, partner, **kwargs)
    return caught.value


def lines(*items: str) -> bytes:
    return "".join(i + "\n" for i in items).encode()


GOOD_D = f"D|r1|alice|100|{T0}|memo"
HEADER = f"H|{PARTNER}|7|{T0}|1"


# -- round trips ------------------------------------------------------------------------------


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    partner=partner_codes,
    seq=st.integers(1, INT64_MAX),
    created=aware,
    rows=record_lists,
    crlf=st.booleans(),
)
def test_valid_files_round_trip(
    partner: str,
    seq: int,
    created: datetime,
    rows: list[tuple[str, str, int, datetime, str]],
    crlf: bool,
) -> None:
    data = build(Header(partner, seq, created), rows)
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    reader = PointsFileReader(io.BytesIO(data), partner, expected_file_seq=seq)
    assert reader.header == Header(partner, seq, created)
    parsed = list(reader)
    assert [(r.record_id, r.member_id, r.points, r.txn_time, r.memo) for r in parsed] == rows
    assert [r.txn_time.utcoffset() for r in parsed] == [r[3].utcoffset() for r in rows]
    assert [r.line_no for r in parsed] == list(range(2, len(rows) + 2))
    assert not any(r.duplicate_in_file for r in parsed)
    assert reader.trailer is not None
    assert reader.trailer.record_count == len(rows)
    assert reader.trailer.points_sum == sum(r[2] for r in rows)


def test_empty_file_with_zero_records_is_valid() -> None:
    header, rows = read(lines(HEADER, "T|0|0"))
    assert header.file_seq == 7
    assert rows == []


def test_leading_zeros_are_values() -> None:
    _, rows = read(lines(f"H|{PARTNER}|0007|{T0}|1", f"D|r1|a|0100|{T0}|", "T|01|100"))
    assert rows[0].points == 100


@pytest.mark.parametrize(
    "stamp",
    [
        "2025-01-09T18:49:00Z",
        "2025-01-09T18:49Z",
        "2025-01-09T18:49:00.123456789+08:00",
        "2025-01-09T18:49:00,5-0330",
        "2025-01-09T18:49:00+08",
    ],
)
def test_iso_forms_accepted(stamp: str) -> None:
    assert parse_iso_with_offset(stamp) is not None


@pytest.mark.parametrize(
    "stamp",
    [
        "2025-01-09T18:49:00",
        "2025-01-09",
        "2025-01-09 18:49:00+08:00",
        "2025-01-09T18:49:00+08:00:30",
        "2025-13-09T18:49:00Z",
        "20250109T184900Z",
        "２０２５-01-09T18:49:00Z",
        "2025-01-09T18:49:00+24:00",
        "",
    ],
)
def test_iso_forms_refused(stamp: str) -> None:
    assert parse_iso_with_offset(stamp) is None


def test_duplicate_record_id_in_file_is_reported_not_rejected() -> None:
    data = lines(HEADER, GOOD_D, f"D|r2|bob|5|{T0}|", f"D|r1|carol|7|{T0}|again", "T|3|112")
    reader = PointsFileReader(io.BytesIO(data), PARTNER)
    rows = list(reader)
    assert [r.duplicate_in_file for r in rows] == [False, False, True]
    assert reader.duplicate_count == 1
    off = PointsFileReader(io.BytesIO(data), PARTNER, detect_duplicates=False)
    assert not any(r.duplicate_in_file for r in off)


# -- whole-file rejections --------------------------------------------------------------------

CASES: list[tuple[str, bytes, RejectReason, int | None]] = [
    ("empty", b"", RejectReason.INCOMPLETE, None),
    ("no trailer", lines(HEADER, GOOD_D), RejectReason.INCOMPLETE, None),
    ("count mismatch", lines(HEADER, GOOD_D, "T|2|100"), RejectReason.INCOMPLETE, 3),
    ("sum mismatch", lines(HEADER, GOOD_D, "T|1|101"), RejectReason.INCOMPLETE, 3),
    (
        "no final newline",
        lines(HEADER, GOOD_D)[: -0 or None] + b"T|1|100",
        RejectReason.INCOMPLETE,
        3,
    ),
    ("header only", lines(HEADER), RejectReason.INCOMPLETE, None),
    ("no header", lines(GOOD_D, "T|1|100"), RejectReason.BAD_HEADER, 1),
    ("trailer first", lines("T|0|0"), RejectReason.BAD_HEADER, 1),
    ("wrong partner", lines(f"H|OTHER|7|{T0}|1", "T|0|0"), RejectReason.BAD_HEADER, 1),
    ("partner case", lines(f"H|acme|7|{T0}|1", "T|0|0"), RejectReason.BAD_HEADER, 1),
    ("seq zero", lines(f"H|{PARTNER}|0|{T0}|1", "T|0|0"), RejectReason.BAD_HEADER, 1),
    ("seq sign", lines(f"H|{PARTNER}|+7|{T0}|1", "T|0|0"), RejectReason.BAD_HEADER, 1),
    ("seq text", lines(f"H|{PARTNER}|seven|{T0}|1", "T|0|0"), RejectReason.BAD_HEADER, 1),
    ("seq huge", lines(f"H|{PARTNER}|{2**63}|{T0}|1", "T|0|0"), RejectReason.BAD_HEADER, 1),
    (
        "naive created",
        lines(f"H|{PARTNER}|7|2025-01-09T18:49:00|1", "T|0|0"),
        RejectReason.BAD_HEADER,
        1,
    ),
    ("version 2", lines(f"H|{PARTNER}|7|{T0}|2", "T|0|0"), RejectReason.BAD_HEADER, 1),
    ("header fields", lines(f"H|{PARTNER}|7|{T0}", "T|0|0"), RejectReason.BAD_HEADER, 1),
    ("bom", b"\xef\xbb\xbf" + lines(HEADER, "T|0|0"), RejectReason.BAD_HEADER, 1),
    ("header not utf8", b"H|AC\xffME|7|x|1\nT|0|0\n", RejectReason.BAD_HEADER, 1),
    ("second header", lines(HEADER, GOOD_D, HEADER, "T|1|100"), RejectReason.BAD_FORMAT, 3),
    ("empty line", lines(HEADER, "", GOOD_D, "T|1|100"), RejectReason.BAD_FORMAT, 2),
    ("unknown type", lines(HEADER, "X|1", "T|0|0"), RejectReason.BAD_FORMAT, 2),
    ("after trailer", lines(HEADER, "T|0|0", ""), RejectReason.BAD_FORMAT, 3),
    ("second trailer", lines(HEADER, "T|0|0", "T|0|0"), RejectReason.BAD_FORMAT, 3),
    ("bad trailer", lines(HEADER, "T|one|0"), RejectReason.BAD_FORMAT, 2),
    ("trailer fields", lines(HEADER, "T|0|0|0"), RejectReason.BAD_FORMAT, 2),
    ("points zero", lines(HEADER, f"D|r1|a|0|{T0}|", "T|1|0"), RejectReason.BAD_FORMAT, 2),
    ("points negative", lines(HEADER, f"D|r1|a|-5|{T0}|", "T|1|-5"), RejectReason.BAD_FORMAT, 2),
    ("points plus", lines(HEADER, f"D|r1|a|+5|{T0}|", "T|1|5"), RejectReason.BAD_FORMAT, 2),
    ("points decimal", lines(HEADER, f"D|r1|a|5.0|{T0}|", "T|1|5"), RejectReason.BAD_FORMAT, 2),
    ("points spaces", lines(HEADER, f"D|r1|a| 5|{T0}|", "T|1|5"), RejectReason.BAD_FORMAT, 2),
    ("points underscore", lines(HEADER, f"D|r1|a|1_0|{T0}|", "T|1|10"), RejectReason.BAD_FORMAT, 2),
    ("points arabic digits", lines(HEADER, f"D|r1|a|٥|{T0}|", "T|1|5"), RejectReason.BAD_FORMAT, 2),
    (
        "points of more than 1000 digits",
        lines(HEADER, f"D|r1|a|{'9' * 1001}|{T0}|", f"T|1|{'9' * 1001}"),
        RejectReason.BAD_FORMAT,
        2,
    ),
    (
        "record id long",
        lines(HEADER, f"D|{'r' * 65}|a|5|{T0}|", "T|1|5"),
        RejectReason.BAD_FORMAT,
        2,
    ),
    ("record id empty", lines(HEADER, f"D||a|5|{T0}|", "T|1|5"), RejectReason.BAD_FORMAT, 2),
    ("record id chars", lines(HEADER, f"D|r.1|a|5|{T0}|", "T|1|5"), RejectReason.BAD_FORMAT, 2),
    ("member empty", lines(HEADER, f"D|r1||5|{T0}|", "T|1|5"), RejectReason.BAD_FORMAT, 2),
    ("member blank", lines(HEADER, f"D|r1|  |5|{T0}|", "T|1|5"), RejectReason.BAD_FORMAT, 2),
    (
        "naive txn",
        lines(HEADER, "D|r1|a|5|2025-01-09T10:00:00|", "T|1|5"),
        RejectReason.BAD_FORMAT,
        2,
    ),
    ("memo missing", lines(HEADER, f"D|r1|a|5|{T0}", "T|1|5"), RejectReason.BAD_FORMAT, 2),
    ("pipe in memo", lines(HEADER, f"D|r1|a|5|{T0}|a|b", "T|1|5"), RejectReason.BAD_FORMAT, 2),
    ("cr in memo", lines(HEADER, f"D|r1|a|5|{T0}|a\rb", "T|1|5"), RejectReason.BAD_FORMAT, 2),
    ("nul in memo", lines(HEADER, f"D|r1|a|5|{T0}|a\x00b", "T|1|5"), RejectReason.BAD_FORMAT, 2),
    (
        "u2028 in member",
        lines(HEADER, f"D|r1|a\u2028b|5|{T0}|", "T|1|5"),
        RejectReason.BAD_FORMAT,
        2,
    ),
    (
        "not utf8",
        lines(HEADER).replace(b"", b"") + b"D|r1|a|5|" + T0.encode() + b"|\xc3\x28\nT|1|5\n",
        RejectReason.BAD_FORMAT,
        2,
    ),
    (
        "first bad line wins",
        lines(HEADER, GOOD_D, f"D|r2|a|x|{T0}|", f"D|r3|a|y|{T0}|", "T|9|9"),
        RejectReason.BAD_FORMAT,
        3,
    ),
]


@pytest.mark.parametrize(
    ("data", "reason", "line_no"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rejections(data: bytes, reason: RejectReason, line_no: int | None) -> None:
    exc = rejected(data)
    assert (exc.reason_code, exc.line_no) == (reason, line_no)
    if line_no is not None:
        assert exc.exception_detail.startswith(f"line {line_no}: ")


def test_expected_file_seq_mismatch_is_bad_header() -> None:
    exc = rejected(lines(HEADER, "T|0|0"), expected_file_seq=8)
    assert exc.reason_code is RejectReason.BAD_HEADER


def test_too_many_records() -> None:
    data = lines(HEADER, GOOD_D, f"D|r2|a|1|{T0}|", f"D|r3|a|1|{T0}|", "T|3|102")
    exc = rejected(data, max_records=2)
    assert (exc.reason_code, exc.line_no) == (RejectReason.TOO_LARGE, 4)
    assert read(data, max_records=3)[1][-1].record_id == "r3"


def test_overlong_line_is_bad_format_without_reading_it_whole() -> None:
    data = lines(HEADER, f"D|r1|a|5|{T0}|" + "m" * 5000, "T|1|5")
    exc = rejected(data, max_line_bytes=1000)
    assert (exc.reason_code, exc.line_no) == (RejectReason.BAD_FORMAT, 2)


def test_reader_is_lazy() -> None:
    """Records come out before the rest of the file is read (streaming)."""

    class Counting(io.BytesIO):
        lines_read = 0

        def readline(self, size: int | None = -1) -> bytes:
            Counting.lines_read += 1
            return super().readline(size)

    body = [f"D|r{i}|m|1|{T0}|" for i in range(1000)]
    stream = Counting(lines(HEADER, *body, "T|1000|1000"))
    reader = PointsFileReader(stream, PARTNER)
    first = next(iter(reader))
    assert first.record_id == "r0"
    assert Counting.lines_read == 2


def test_file_rejected_is_a_problem() -> None:
    exc = FileRejected(RejectReason.BAD_FORMAT, "points must be positive", 12)
    problem = exc.to_problem()
    assert problem["status"] == 422
    assert problem["reason_code"] == "BAD_FORMAT"
    assert problem["line"] == 12


def _outcome(data: bytes) -> tuple[Header, list[DetailRecord]] | FileRejected:
    """The parse result or the rejection; any other exception fails the test."""
    try:
        return read(data)
    except FileRejected as exc:
        return exc


# -- random corruptions -------------------------------------------------------------------------

valid_files = st.builds(
    lambda seq, created, rows: (build(Header(PARTNER, seq, created), rows), rows),
    st.integers(1, 10_000),
    aware,
    st.lists(records, min_size=1, max_size=15, unique_by=lambda r: r[0]),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(valid=valid_files, data=st.data())
def test_arbitrary_byte_corruption_never_crashes(
    valid: tuple[bytes, list[tuple[str, str, int, datetime, str]]], data: st.DataObject
) -> None:
    raw = bytearray(valid[0])
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif raw:
            del raw[pos]
    outcome = _outcome(bytes(raw))
    if isinstance(outcome, FileRejected):
        assert outcome.reason_code in RejectReason
        assert outcome.reason_code not in {
            RejectReason.DECRYPT_FAILED,
            RejectReason.BAD_SIGNATURE,
            RejectReason.DUPLICATE_FILE,
            RejectReason.UNKNOWN_PARTNER,
        }
        assert outcome.line_no is None or outcome.line_no >= 1
    else:  # a corruption that still parses must still be a consistent file
        header, rows = outcome
        assert header.partner_code == PARTNER
        assert all(r.points >= 1 for r in rows)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(valid=valid_files, cut=st.integers(0, 10**6))
def test_truncation_is_incomplete(
    valid: tuple[bytes, list[tuple[str, str, int, datetime, str]]], cut: int
) -> None:
    raw = valid[0]
    exc = rejected(raw[: cut % len(raw)])
    assert exc.reason_code is RejectReason.INCOMPLETE


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    valid=valid_files,
    data=st.data(),
    junk=st.one_of(
        st.sampled_from(["", "D", "D|", "X|y", "d|r|a|1|x|", "H|x"]),
        st.binary(max_size=40).filter(lambda b: b"\n" not in b).map(lambda b: b.decode("latin-1")),
    ),
)
def test_bad_detail_line_is_bad_format_at_that_line(
    valid: tuple[bytes, list[tuple[str, str, int, datetime, str]]], data: st.DataObject, junk: str
) -> None:
    assume(not junk.startswith("T|") and not junk.startswith("D|") or junk == "D|")
    text_lines = valid[0].split(b"\n")[:-1]
    index = data.draw(st.integers(1, len(text_lines) - 1))  # replace a D line or the trailer
    text_lines.insert(index, junk.encode("utf-8"))
    exc = rejected(b"\n".join(text_lines) + b"\n")
    assert (exc.reason_code, exc.line_no) == (RejectReason.BAD_FORMAT, index + 1)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(valid=valid_files, delta=st.integers(1, 10**6), which=st.sampled_from(["count", "sum"]))
def test_trailer_mismatch_is_incomplete(
    valid: tuple[bytes, list[tuple[str, str, int, datetime, str]]], delta: int, which: str
) -> None:
    raw, rows = valid
    count, total = len(rows), sum(r[2] for r in rows)
    body = raw[: raw.rindex(b"T|")]
    if which == "count":
        count += delta
    else:
        total += delta
    exc = rejected(body + f"T|{count}|{total}\n".encode())
    assert exc.reason_code is RejectReason.INCOMPLETE


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    big=st.lists(st.integers(min_value=INT64_MAX // 2), min_size=1, max_size=6),
    wrap_bits=st.sampled_from([63, 64]),
)
def test_points_and_trailer_sum_are_unbounded_integers(big: list[int], wrap_bits: int) -> None:
    """Issue 10 items 2 and 18: points beyond 64 bits are read as they are (the pipeline
    answers them INVALID_POINTS); the trailer's sum is compared exactly, so a sum that a
    64-bit accumulator would have wrapped never matches its wrapped value."""
    rows = [(f"r{i}", "a", p, T0_DT, "") for i, p in enumerate(big)]
    total = sum(big)
    exact = build(Header(PARTNER, 7, T0_DT), rows)
    reader = PointsFileReader(io.BytesIO(exact), PARTNER)
    assert [r.points for r in reader] == big
    assert reader.points_sum == total
    wrapped = total % 2**wrap_bits
    assume(wrapped != total)
    body = exact[: exact.rindex(b"T|")]
    exc = rejected(body + f"T|{len(big)}|{wrapped}\n".encode())
    assert exc.reason_code is RejectReason.INCOMPLETE


# -- names ------------------------------------------------------------------------------------


def test_points_file_name_parts_and_answers() -> None:
    parsed = parse_points_file_name("POINTS_ACME_20250109_007.txt.pgp")
    assert parsed is not None
    assert (parsed.partner_code, parsed.file_date, parsed.file_seq, parsed.base) == (
        "ACME",
        date(2025, 1, 9),
        7,
        "POINTS_ACME_20250109_007",
    )
    assert parsed.feedback_name == "FEEDBACK_POINTS_ACME_20250109_007.txt.pgp"
    assert parsed.exception_name == "EXCEPTION_POINTS_ACME_20250109_007.txt.pgp"
    assert parse_answer_name(parsed.feedback_name) == ("FEEDBACK", parsed)
    assert parse_answer_name("FEEDBACK_x.txt.pgp") is None


def test_partner_code_with_underscore() -> None:
    parsed = parse_points_file_name("POINTS_BANK_OF_X_20250109_1.txt.pgp")
    assert parsed is not None
    assert (parsed.partner_code, parsed.file_seq) == ("BANK_OF_X", 1)


@pytest.mark.parametrize(
    "name",
    [
        "POINTS_ACME_20250109_1.txt",
        "POINTS_ACME_20250109_1.TXT.PGP",
        "points_ACME_20250109_1.txt.pgp",
        "POINTS_ACME_20251309_1.txt.pgp",
        "POINTS_ACME_2025019_1.txt.pgp",
        "POINTS_ACME_20250109_0.txt.pgp",
        "POINTS_ACME_20250109_.txt.pgp",
        "POINTS__20250109_1.txt.pgp",
        "POINTS_AC/ME_20250109_1.txt.pgp",
        "../POINTS_ACME_20250109_1.txt.pgp",
        "FEEDBACK_POINTS_ACME_20250109_1.txt.pgp",
    ],
)
def test_not_points_file_names(name: str) -> None:
    assert parse_points_file_name(name) is None


@given(partner=partner_codes, day=st.dates(), seq=st.integers(1, INT64_MAX))
def test_name_round_trip(partner: str, day: date, seq: int) -> None:
    assume(day.year >= 1000)
    name = points_file_name(partner, day, seq)
    parsed = parse_points_file_name(name)
    assert parsed is not None
    assert (parsed.partner_code, parsed.file_date, parsed.file_seq) == (partner, day, seq)
    assert feedback_name(parsed.base) == f"FEEDBACK_{name.removesuffix('.txt.pgp')}.txt.pgp"
    assert exception_name(parsed.base) == f"EXCEPTION_{name.removesuffix('.txt.pgp')}.txt.pgp"
