"""The points-file error tree: one marker base, each leaf with its HTTP-shaped base."""

from __future__ import annotations

import pytest

from incentive.errors import (
    BadRequest,
    Conflict,
    IncentiveError,
    InvalidField,
    NotFound,
    ServiceUnavailable,
)
from incentive.points_files import errors
from incentive.points_files.format import RejectReason

LEAVES: list[tuple[type[errors.PointsFileError], type[IncentiveError], int, str]] = [
    (errors.PointsFileNotFound, NotFound, 404, "points-file-not-found"),
    (errors.PartnerNotConfigured, Conflict, 409, "points-partner-not-configured"),
    (errors.AnswerNotReady, Conflict, 409, "points-answer-not-ready"),
    (errors.FileRejected, BadRequest, 422, "points-file-rejected"),
    (errors.PartnerKeyInvalid, InvalidField, 422, "partner-key-invalid"),
    (errors.TransportError, ServiceUnavailable, 503, "points-transport-unavailable"),
    (errors.StorageFull, ServiceUnavailable, 503, "points-storage-full"),
    (errors.PointsCryptoError, IncentiveError, 500, "points-crypto-failed"),
]


@pytest.mark.parametrize(("leaf", "http_base", "status", "slug"), LEAVES)
def test_leaf_keeps_its_status_and_slug(
    leaf: type[errors.PointsFileError], http_base: type[IncentiveError], status: int, slug: str
) -> None:
    assert issubclass(leaf, errors.PointsFileError)
    assert issubclass(leaf, http_base)
    assert (leaf.status, leaf.slug) == (status, slug)


def test_every_error_of_the_module_is_in_the_tree() -> None:
    defined = {
        v
        for v in vars(errors).values()
        if isinstance(v, type) and issubclass(v, IncentiveError) and v.__module__ == errors.__name__
    }
    assert defined == {errors.PointsFileError} | {leaf for leaf, *_ in LEAVES}
    assert errors.__doc__ is not None
    for leaf, *_ in LEAVES:
        assert leaf.__name__ in errors.__doc__


def test_problems_render_as_before() -> None:
    rejected = errors.FileRejected(RejectReason.BAD_FORMAT, "points must be positive", 12)
    assert rejected.to_problem()["reason_code"] == "BAD_FORMAT"
    assert rejected.exception_detail == "line 12: points must be positive"
    key = errors.PartnerKeyInvalid("not a public key").to_problem()
    assert key["errors"] == [
        {
            "field": "public_key",
            "rule": "one OpenPGP public key that can sign and encrypt",
            "message": "not a public key",
        }
    ]
    assert errors.TransportError("down").headers() == {"Retry-After": "1"}
