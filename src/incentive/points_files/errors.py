"""Points-file errors. ``except PointsFileError`` catches every refusal of the points-file domain.

Each leaf combines the marker ``PointsFileError`` with its HTTP-shaped base from
``incentive.errors`` (which gives the status)::

    PointsFileError (marker)
    ├── PointsFileNotFound (404 points-file-not-found)              + NotFound
    ├── PartnerNotConfigured (409 points-partner-not-configured)    + Conflict
    ├── AnswerNotReady (409 points-answer-not-ready)                + Conflict
    ├── FileRejected (422 points-file-rejected: a whole-file reason) + BadRequest
    ├── PartnerKeyInvalid (422 partner-key-invalid)                 + InvalidField
    ├── TransportError (503 points-transport-unavailable)           + ServiceUnavailable
    ├── StorageFull (503 points-storage-full: data disk nearly full) + ServiceUnavailable
    └── PointsCryptoError (500 points-crypto-failed: gpg itself failed)

Not HTTP errors, so not here: ``answer_format.AnswerFormatError`` (a ``ValueError`` for
partners' tools), ``backends.targets.TargetUnavailable`` and ``repository.LostClaim``
(control flow inside the pipeline).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from incentive.errors import (
    BadRequest,
    Conflict,
    IncentiveError,
    InvalidField,
    NotFound,
    ServiceUnavailable,
)

if TYPE_CHECKING:
    from incentive.points_files.format import RejectReason


class PointsFileError(IncentiveError):
    """Marker base of the points-file domain's refusals (combined with an HTTP-shaped base)."""


class PointsFileNotFound(PointsFileError, NotFound):
    slug = "points-file-not-found"
    title = "Points file not found"


class PartnerNotConfigured(PointsFileError, Conflict):
    """The partner cannot exchange points files yet (no OpenPGP key registered)."""

    slug = "points-partner-not-configured"
    title = "Partner not set up for points files"


class AnswerNotReady(PointsFileError, Conflict):
    """The feedback or exception file of a points file is not written yet."""

    slug = "points-answer-not-ready"
    title = "Answer file not ready"


class FileRejected(PointsFileError, BadRequest):
    """The whole file is rejected: nothing in it may be credited; answer with an exception file.

    ``line_no`` is the 1-based line the problem was found on, when there is one.
    """

    status = 422
    slug = "points-file-rejected"
    title = "Points file rejected"

    def __init__(self, reason_code: RejectReason, detail: str, line_no: int | None = None) -> None:
        super().__init__(
            f"{reason_code}: {_with_line(detail, line_no)}",
            reason_code=str(reason_code),
            line=line_no,
        )
        self.reason_code = reason_code
        self.reason_detail = detail
        self.line_no = line_no

    @property
    def exception_detail(self) -> str:
        """The text for the exception file's ``E`` line (names the line number, if any)."""
        return _with_line(self.reason_detail, self.line_no)


def _with_line(detail: str, line_no: int | None) -> str:
    return f"line {line_no}: {detail}" if line_no is not None else detail


class PartnerKeyInvalid(PointsFileError, InvalidField):
    """The text given as a partner's public key is not exactly one usable OpenPGP public key."""

    slug = "partner-key-invalid"
    title = "Partner public key invalid"

    def __init__(self, detail: str) -> None:
        super().__init__("public_key", "one OpenPGP public key that can sign and encrypt", detail)


class TransportError(PointsFileError, ServiceUnavailable):
    """The partner's inbox or outbox could not be reached or changed (usually transient)."""

    slug = "points-transport-unavailable"
    title = "Partner file transport unavailable"


class StorageFull(PointsFileError, ServiceUnavailable):
    """The data directory's disk is (nearly) full: no points-file work is started, files are
    kept where they are and retried later (never a half-written answer)."""

    slug = "points-storage-full"
    title = "Points-file storage full"


class PointsCryptoError(PointsFileError):
    """gpg could not do what the platform itself asked (encrypt to a partner, make a key)."""

    slug = "points-crypto-failed"
    title = "OpenPGP operation failed"
