"""Feedback and exception files, version 1 (``shared/formats/points-file-v1.md``): the answers
to a partner's points file. Writers (line by line, for the pipeline) and readers (what a partner
does with our files; used by tests and partner simulators). The field rules they share with the
points file are in ``format.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import BinaryIO

from incentive.points_files.format import (
    FORBIDDEN_CHARS,
    FORMAT_VERSION,
    MAX_LINE_BYTES,
    RECORD_ID,
    RecordReason,
    RejectReason,
    parse_iso_with_offset,
    parse_positive_int64,
    parse_uint,
    sanitize_detail,
)


class RecordStatus(StrEnum):
    OK = "OK"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class AnswerHeader:
    """Header of a feedback or exception file; ``processed_at`` is written in UTC."""

    partner_code: str
    file_seq: int
    processed_at: datetime


@dataclass(frozen=True, slots=True)
class RecordResult:
    """One ``R`` line: the outcome of one ``D`` line, echoed in input order."""

    record_id: str
    member_id: str
    points: int
    status: RecordStatus
    reason_code: RecordReason | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class FeedbackTotals:
    record_count: int
    ok_count: int
    failed_count: int
    points_credited: int


@dataclass(frozen=True, slots=True)
class ExceptionReport:
    header: AnswerHeader
    reason_code: RejectReason
    detail: str


def format_utc(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("processed_at must be timezone-aware")
    return value.astimezone(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Writers


def _check_echo_field(name: str, value: str) -> None:
    if not value or "|" in value or FORBIDDEN_CHARS.search(value):
        raise ValueError(f"{name} cannot be written: empty, '|' or a line break")


def answer_header_line(header: AnswerHeader) -> bytes:
    _check_echo_field("partner_code", header.partner_code)
    if header.file_seq < 1:
        raise ValueError("file_seq must be positive")
    processed = format_utc(header.processed_at)
    return f"H|{header.partner_code}|{header.file_seq}|{processed}|{FORMAT_VERSION}\n".encode()


def write_feedback(
    out: BinaryIO, header: AnswerHeader, results: Iterable[RecordResult]
) -> FeedbackTotals:
    """Write a feedback file line by line; ``results`` in input order, one per ``D`` line.

    ``OK`` lines have empty reason fields (a detail given with ``OK`` is dropped); ``FAILED``
    lines need a reason code. Details are sanitised; record and member ids must already be
    valid (they come from a parsed file) and raise ``ValueError`` otherwise.
    """
    out.write(answer_header_line(header))
    count = ok = failed = credited = 0
    for result in results:
        if not RECORD_ID.fullmatch(result.record_id):
            raise ValueError(f"invalid record_id {result.record_id!r}")
        _check_echo_field("member_id", result.member_id)
        if result.points < 1:
            raise ValueError("points must be positive")
        if result.status is RecordStatus.OK:
            if result.reason_code is not None:
                raise ValueError("an OK result has no reason code")
            reason, detail = "", ""
            ok += 1
            credited += result.points
        else:
            if result.reason_code is None:
                raise ValueError("a FAILED result needs a reason code")
            reason, detail = str(result.reason_code), sanitize_detail(result.detail)
            failed += 1
        count += 1
        out.write(
            f"R|{result.record_id}|{result.member_id}|{result.points}|{result.status}"
            f"|{reason}|{detail}\n".encode()
        )
    totals = FeedbackTotals(count, ok, failed, credited)
    out.write(trailer_line(totals))
    return totals


def trailer_line(totals: FeedbackTotals) -> bytes:
    """A feedback file's ``T`` line."""
    t = totals
    return f"T|{t.record_count}|{t.ok_count}|{t.failed_count}|{t.points_credited}\n".encode()


def write_exception(
    out: BinaryIO,
    partner_code: str,
    file_seq: int,
    reason_code: RejectReason,
    detail: str,
    *,
    processed_at: datetime | None = None,
) -> None:
    """Write an exception file (whole file rejected); ``detail`` is sanitised."""
    header = AnswerHeader(partner_code, file_seq, processed_at or datetime.now(UTC))
    out.write(answer_header_line(header))
    out.write(f"E|{RejectReason(reason_code)}|{sanitize_detail(detail)}\n".encode())
    out.write(b"T|0|0\n")


# ---------------------------------------------------------------------------------------------
# Answer readers (what a partner does with our files; used by tests and partner simulators)


class AnswerFormatError(ValueError):
    """A feedback or exception file does not follow the format."""


def _answer_lines(stream: BinaryIO) -> Iterator[tuple[int, list[str]]]:
    line_no = 0
    while raw := stream.readline(MAX_LINE_BYTES + 2):
        line_no += 1
        if not raw.endswith(b"\n"):
            raise AnswerFormatError(f"line {line_no}: no line end")
        try:
            text = raw[:-1].removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AnswerFormatError(f"line {line_no}: not UTF-8") from exc
        if FORBIDDEN_CHARS.search(text):
            raise AnswerFormatError(f"line {line_no}: control character")
        yield line_no, text.split("|")


def _read_answer_header(fields: list[str]) -> AnswerHeader:
    if len(fields) != 5 or fields[0] != "H" or fields[4] != FORMAT_VERSION:
        raise AnswerFormatError("bad header")
    seq = parse_positive_int64(fields[2])
    processed = parse_iso_with_offset(fields[3])
    if seq is None or processed is None or processed.utcoffset():
        raise AnswerFormatError("bad header fields")
    return AnswerHeader(fields[1], seq, processed)


def read_feedback(stream: BinaryIO) -> tuple[AnswerHeader, list[RecordResult], FeedbackTotals]:
    """Parse a feedback file and check its trailer against its ``R`` lines."""
    lines = _answer_lines(stream)
    first = next(lines, None)
    if first is None:
        raise AnswerFormatError("empty")
    header = _read_answer_header(first[1])
    results: list[RecordResult] = []
    totals: FeedbackTotals | None = None
    for line_no, fields in lines:
        if totals is not None:
            raise AnswerFormatError(f"line {line_no}: after the trailer")
        if fields[0] == "R" and len(fields) == 7:
            _, record_id, member_id, points_text, status_text, reason, detail = fields
            points = parse_uint(points_text)  # echoed as sent, even beyond 64 bits
            if points is None or points < 1 or status_text not in RecordStatus.__members__:
                raise AnswerFormatError(f"line {line_no}: bad R line")
            status = RecordStatus(status_text)
            if status is RecordStatus.OK and (reason or detail):
                raise AnswerFormatError(f"line {line_no}: OK with a reason")
            if status is RecordStatus.FAILED and reason not in RecordReason.__members__:
                raise AnswerFormatError(f"line {line_no}: unknown reason {reason!r}")
            results.append(
                RecordResult(
                    record_id,
                    member_id,
                    points,
                    status,
                    RecordReason(reason) if reason else None,
                    detail,
                )
            )
        elif fields[0] == "T" and len(fields) == 5:
            numbers = [parse_uint(f) for f in fields[1:]]
            if any(n is None for n in numbers):
                raise AnswerFormatError(f"line {line_no}: bad trailer")
            totals = FeedbackTotals(*(n for n in numbers if n is not None))
        else:
            raise AnswerFormatError(f"line {line_no}: unexpected line")
    if totals is None:
        raise AnswerFormatError("no trailer")
    ok_results = [r for r in results if r.status is RecordStatus.OK]
    expected = FeedbackTotals(
        len(results),
        len(ok_results),
        len(results) - len(ok_results),
        sum(r.points for r in ok_results),
    )
    if totals != expected:
        raise AnswerFormatError(f"trailer {totals} does not match the lines {expected}")
    return header, results, totals


def read_exception(stream: BinaryIO) -> ExceptionReport:
    """Parse an exception file (``H``, one ``E``, ``T|0|0``)."""
    lines = list(_answer_lines(stream))
    if len(lines) != 3:
        raise AnswerFormatError("an exception file has exactly 3 lines")
    header = _read_answer_header(lines[0][1])
    e_fields, t_fields = lines[1][1], lines[2][1]
    if len(e_fields) != 3 or e_fields[0] != "E" or e_fields[1] not in RejectReason.__members__:
        raise AnswerFormatError("bad E line")
    if t_fields != ["T", "0", "0"]:
        raise AnswerFormatError("bad trailer")
    return ExceptionReport(header, RejectReason(e_fields[1]), e_fields[2])
