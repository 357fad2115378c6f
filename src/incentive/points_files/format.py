"""Partner points file, version 1 (``shared/formats/points-file-v1.md``): the streaming
reader, the writer partners use, and file names; the feedback and exception files we answer
with are in ``answer_format.py``.

Everything here works line by line on binary file objects, so a file of a million records is
never held in memory (the only state that grows with the file is the set of record ids used to
spot a record id repeated inside the file; see ``PointsFileReader``).

Choices where the format leaves room, made strictly because partners write these files with
their own tools and a lenient reader would hide their bugs:

- Lines end with ``\\n``; one ``\\r`` just before it is dropped. A last line without its ``\\n``
  was cut in transfer: the file is ``INCOMPLETE`` (so is an empty file).
- Whole-file codes: a problem in the first line (missing, malformed, wrong partner code, wrong
  file sequence when the caller knows it, version other than ``1``) is ``BAD_HEADER``; a
  malformed line after it, a second ``H``, an empty line, a malformed ``T`` or anything after
  ``T`` is ``BAD_FORMAT`` with that line's number; a missing trailer or one whose count or sum
  does not match is ``INCOMPLETE``; more ``D`` lines than the caller allows is ``TOO_LARGE``.
  The first problem met wins, so ``BAD_FORMAT`` names the first bad line.
- Integers (``file_seq``, ``points``, trailer counts) are ASCII digits only (at most 1000 of
  them): no sign, no spaces, no ``_``; leading zeros are allowed (the value is what counts).
  ``file_seq`` is positive and fits in a signed 64-bit integer. ``points`` is positive; a value
  too big for the partner's limit or for 64 bits is still a well-formed record: the reader
  yields it as it is (an unbounded ``int``) and the pipeline answers it ``INVALID_POINTS``. The
  trailer's count and sum are compared with unbounded integers too.
- Times are ISO 8601 extended calendar date-times with an offset (``Z``, ``+hh``, ``+hhmm`` or
  ``+hh:mm``), e.g. ``2025-01-09T18:49:00+08:00``; seconds and a fraction are optional.
- No field may contain a line break (any character ``str.splitlines`` breaks on) or a control
  character other than tab; ``NUL`` in particular cannot be stored by PostgreSQL.
- A byte order mark is not UTF-8 text of the format and makes the header ``BAD_HEADER``.
- A ``record_id`` repeated inside one file is not a whole-file rejection: the format lists
  ``DUPLICATE_RECORD`` as a per-record reason ("already credited, in this or an earlier
  file"). The reader yields the repeated record with ``duplicate_in_file=True``; the pipeline
  answers it ``FAILED|DUPLICATE_RECORD`` and credits the first occurrence only. Repeated
  records still count in the trailer's count and sum (they are ``D`` lines).

Feedback and exception files are named after the inbound file's base name, i.e. its name
without ``.txt.pgp``: ``POINTS_ACME_20250109_7.txt.pgp`` is answered by
``FEEDBACK_POINTS_ACME_20250109_7.txt.pgp`` or ``EXCEPTION_POINTS_ACME_20250109_7.txt.pgp``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import BinaryIO, NoReturn

from incentive.points_files.errors import FileRejected

FORMAT_VERSION = "1"
INT64_MAX = 2**63 - 1
MAX_LINE_BYTES = 64 * 1024
RECORD_ID_MAX = 64

RECORD_ID = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
MAX_DIGITS = 1000
_DIGITS = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}", re.ASCII)
_ISO_WITH_OFFSET = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]{1,9})?)?"
    r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)",
    re.ASCII,
)
# Line breaks as str.splitlines sees them, plus the other C0 controls and DEL (tab is allowed).
FORBIDDEN_CHARS = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
_DETAIL_UNSAFE = re.compile("[|\x00-\x1f\x7f\x85\u2028\u2029]+")
_SPACES = re.compile(" {2,}")
_PARTNER_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", re.ASCII)
_POINTS_NAME = re.compile(
    r"(?P<base>POINTS_(?P<partner>[A-Za-z0-9][A-Za-z0-9_-]{0,63})_(?P<date>[0-9]{8})_(?P<seq>[0-9]{1,19}))"
    r"\.txt\.pgp",
    re.ASCII,
)
_ANSWER_NAME = re.compile(r"(?P<kind>FEEDBACK|EXCEPTION)_(?P<base>POINTS_.+)\.txt\.pgp", re.ASCII)


class RejectReason(StrEnum):
    """Whole-file reason codes of an exception file."""

    DECRYPT_FAILED = "DECRYPT_FAILED"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    INCOMPLETE = "INCOMPLETE"
    BAD_HEADER = "BAD_HEADER"
    BAD_FORMAT = "BAD_FORMAT"
    DUPLICATE_FILE = "DUPLICATE_FILE"
    UNKNOWN_PARTNER = "UNKNOWN_PARTNER"
    TOO_LARGE = "TOO_LARGE"


class RecordReason(StrEnum):
    """Per-record reason codes of a feedback file (``FAILED`` lines only)."""

    UNKNOWN_MEMBER = "UNKNOWN_MEMBER"
    DUPLICATE_RECORD = "DUPLICATE_RECORD"
    INVALID_POINTS = "INVALID_POINTS"
    STALE_TXN = "STALE_TXN"
    MEMBER_BLOCKED = "MEMBER_BLOCKED"
    CREDIT_FAILED = "CREDIT_FAILED"


# ---------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class Header:
    partner_code: str
    file_seq: int
    created_at: datetime
    version: str = FORMAT_VERSION


@dataclass(frozen=True, slots=True)
class DetailRecord:
    line_no: int
    record_id: str
    member_id: str
    points: int
    txn_time: datetime
    memo: str
    duplicate_in_file: bool = False


@dataclass(frozen=True, slots=True)
class Trailer:
    line_no: int
    record_count: int
    points_sum: int


# ---------------------------------------------------------------------------------------------
# Field rules


def parse_uint(text: str) -> int | None:
    """ASCII digits only (``int()`` would also take signs, spaces, ``_`` and other scripts)."""
    if not _DIGITS.fullmatch(text):
        return None
    return int(text)


def parse_positive_int64(text: str) -> int | None:
    value = parse_uint(text)
    if value is None or value < 1 or value > INT64_MAX:
        return None
    return value


def parse_iso_with_offset(text: str) -> datetime | None:
    """An ISO 8601 extended date-time that carries an offset, else ``None``."""
    if not _ISO_WITH_OFFSET.fullmatch(text):
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else None


def sanitize_detail(text: str, limit: int = 500) -> str:
    """Make free text safe for a ``detail`` field: no ``|``, no line breaks or controls."""
    cleaned = _SPACES.sub(" ", _DETAIL_UNSAFE.sub(" ", text)).strip()
    return cleaned[:limit].rstrip()


# ---------------------------------------------------------------------------------------------
# Reader


class PointsFileReader:
    """Streams one plain-text points file: ``header`` first, then ``D`` records, then trailer.

    Construction reads and checks the header (raising ``FileRejected``). Iterating yields each
    ``DetailRecord``; the trailer is checked when the ``D`` lines end, so the iteration raises
    ``FileRejected`` at the point a problem is found, possibly after records were yielded:
    a caller must treat every record as provisional until the iteration ends without error
    (store them, then credit; never credit while reading).

    ``detect_duplicates`` keeps the file's record ids in a set (about 100 bytes per record) so
    a repeated id is flagged ``duplicate_in_file``; a pipeline that enforces uniqueness in its
    database anyway may turn it off.
    """

    def __init__(
        self,
        stream: BinaryIO,
        expected_partner_code: str,
        *,
        expected_file_seq: int | None = None,
        max_records: int | None = None,
        detect_duplicates: bool = True,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self._stream = stream
        self._max_records = max_records
        self._max_line_bytes = max_line_bytes
        self._seen: set[str] | None = set() if detect_duplicates else None
        self._line_no = 0
        self._consumed = False
        self.trailer: Trailer | None = None
        self.record_count = 0
        self.points_sum = 0
        self.duplicate_count = 0
        first = self._next_line(RejectReason.BAD_HEADER)
        if first is None:
            raise FileRejected(RejectReason.INCOMPLETE, "the file is empty")
        self.header = self._header(first, expected_partner_code, expected_file_seq)

    def __iter__(self) -> Iterator[DetailRecord]:
        if self._consumed:
            raise RuntimeError("a PointsFileReader can be iterated once")
        self._consumed = True
        while True:
            text = self._next_line()
            if text is None:
                raise FileRejected(RejectReason.INCOMPLETE, "the trailer (T line) is missing")
            kind = text[:2]
            if kind == "D|":
                yield self._detail(text)
            elif kind == "T|":
                self.trailer = self._trailer(text)
                break
            elif kind == "H|":
                self._bad("a second header (H line); H must appear exactly once, first")
            else:
                self._bad("unknown line type; expected D or T" if text else "empty line")
        extra = self._next_line()
        if extra is not None:
            self._bad("content after the trailer; T must be the last line")

    # -- lines --------------------------------------------------------------------------------

    def _next_line(self, reason: RejectReason = RejectReason.BAD_FORMAT) -> str | None:
        raw = self._stream.readline(self._max_line_bytes + 2)
        if not raw:
            return None
        self._line_no += 1
        if not raw.endswith(b"\n"):
            if len(raw) >= self._max_line_bytes + 2:
                self._bad(f"line longer than {self._max_line_bytes} bytes", reason)
            raise FileRejected(
                RejectReason.INCOMPLETE,
                "the last line has no line end (file cut short)",
                self._line_no,
            )
        raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) > self._max_line_bytes:
            self._bad(f"line longer than {self._max_line_bytes} bytes", reason)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._bad("not valid UTF-8", reason)
        if FORBIDDEN_CHARS.search(text):
            self._bad("a field contains a line break or control character", reason)
        return text

    def _bad(self, detail: str, reason: RejectReason = RejectReason.BAD_FORMAT) -> NoReturn:
        raise FileRejected(reason, detail, self._line_no)

    # -- record kinds -------------------------------------------------------------------------

    def _header(self, text: str, expected_partner: str, expected_seq: int | None) -> Header:
        bad = RejectReason.BAD_HEADER
        fields = text.split("|")
        if fields[0] != "H":
            if text.startswith("\ufeff"):
                self._bad("byte order mark before the header; the file must start with H", bad)
            self._bad("the first line must be the header (H line)", bad)
        if len(fields) != 5:
            self._bad(f"header has {len(fields)} fields, expected 5", bad)
        _, partner_code, seq_text, created_text, version = fields
        if partner_code != expected_partner:
            self._bad(f"partner_code {partner_code!r} is not the sender {expected_partner!r}", bad)
        file_seq = parse_positive_int64(seq_text)
        if file_seq is None:
            self._bad("file_seq must be a positive integer", bad)
        if expected_seq is not None and file_seq != expected_seq:
            self._bad(f"file_seq {file_seq} does not match the file name's {expected_seq}", bad)
        created_at = parse_iso_with_offset(created_text)
        if created_at is None:
            self._bad("created_at must be an ISO 8601 date-time with offset", bad)
        if version != FORMAT_VERSION:
            self._bad(f"unsupported format version {version!r}, expected 1", bad)
        return Header(partner_code, file_seq, created_at, version)

    def _detail(self, text: str) -> DetailRecord:
        fields = text.split("|")
        if len(fields) != 6:
            self._bad(f"D line has {len(fields)} fields, expected 6")
        _, record_id, member_id, points_text, txn_text, memo = fields
        if not RECORD_ID.fullmatch(record_id):
            self._bad("record_id must be 1-64 characters of A-Z a-z 0-9 _ -")
        if not member_id.strip():
            self._bad("member_id is empty")
        points = parse_uint(points_text)
        if points is None or points < 1:
            self._bad(f"points must be a positive integer (1 to {MAX_DIGITS} digits only)")
        txn_time = parse_iso_with_offset(txn_text)
        if txn_time is None:
            self._bad("txn_time must be an ISO 8601 date-time with offset")
        self.record_count += 1
        if self._max_records is not None and self.record_count > self._max_records:
            self._bad(f"more than {self._max_records} records", RejectReason.TOO_LARGE)
        self.points_sum += points
        duplicate = False
        if self._seen is not None:
            if record_id in self._seen:
                duplicate = True
                self.duplicate_count += 1
            else:
                self._seen.add(record_id)
        return DetailRecord(self._line_no, record_id, member_id, points, txn_time, memo, duplicate)

    def _trailer(self, text: str) -> Trailer:
        fields = text.split("|")
        if len(fields) != 3:
            self._bad(f"T line has {len(fields)} fields, expected 3")
        count = parse_uint(fields[1])
        total = parse_uint(fields[2])
        if count is None or total is None:
            self._bad("trailer count and sum must be non-negative integers")
        if count != self.record_count or total != self.points_sum:
            raise FileRejected(
                RejectReason.INCOMPLETE,
                f"trailer says {count} records / {total} points, file has "
                f"{self.record_count} / {self.points_sum}",
                self._line_no,
            )
        return Trailer(self._line_no, count, total)


# ---------------------------------------------------------------------------------------------
# Writer


def write_points_file(
    out: BinaryIO, header: Header, records: Iterable[tuple[str, str, int, datetime, str]]
) -> Trailer:
    """Write a points file (what a partner sends); for tests, tools and partner simulators."""
    out.write(
        f"H|{header.partner_code}|{header.file_seq}|{header.created_at.isoformat()}"
        f"|{header.version}\n".encode()
    )
    count = total = 0
    for record_id, member_id, points, txn_time, memo in records:
        out.write(f"D|{record_id}|{member_id}|{points}|{txn_time.isoformat()}|{memo}\n".encode())
        count += 1
        total += points
    out.write(f"T|{count}|{total}\n".encode())
    return Trailer(count + 2, count, total)


# ---------------------------------------------------------------------------------------------
# File names


@dataclass(frozen=True, slots=True)
class PointsFileName:
    """``POINTS_<PARTNER>_<YYYYMMDD>_<SEQ>.txt.pgp``; ``base`` is the name without ``.txt.pgp``."""

    name: str
    base: str
    partner_code: str
    file_date: date
    file_seq: int

    @property
    def feedback_name(self) -> str:
        return feedback_name(self.base)

    @property
    def exception_name(self) -> str:
        return exception_name(self.base)


def parse_points_file_name(name: str) -> PointsFileName | None:
    """The parts of an inbound file name, or ``None`` when it is not a points file's name."""
    match = _POINTS_NAME.fullmatch(name)
    if match is None:
        return None
    date_text = match["date"]
    try:
        file_date = date(int(date_text[:4]), int(date_text[4:6]), int(date_text[6:]))
    except ValueError:
        return None
    seq = parse_positive_int64(match["seq"])
    if seq is None:
        return None
    return PointsFileName(name, match["base"], match["partner"], file_date, seq)


def points_file_name(partner_code: str, file_date: date, file_seq: int) -> str:
    if not _PARTNER_CODE.fullmatch(partner_code) or file_seq < 1:
        raise ValueError("partner_code must be [A-Za-z0-9_-] and file_seq positive")
    return f"POINTS_{partner_code}_{file_date:%Y%m%d}_{file_seq}.txt.pgp"


def feedback_name(base: str) -> str:
    return f"FEEDBACK_{base}.txt.pgp"


def exception_name(base: str) -> str:
    return f"EXCEPTION_{base}.txt.pgp"


def parse_answer_name(name: str) -> tuple[str, PointsFileName] | None:
    """``("FEEDBACK" | "EXCEPTION", inbound name parts)`` for an outbound name, else ``None``."""
    match = _ANSWER_NAME.fullmatch(name)
    if match is None:
        return None
    inbound = parse_points_file_name(match["base"] + ".txt.pgp")
    return None if inbound is None else (match["kind"], inbound)
