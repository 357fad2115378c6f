"""RFC 9457 bodies: ``status`` is always the HTTP status; domain facts get their own names."""

from __future__ import annotations

from incentive.errors import Conflict


def test_extras_never_replace_the_rfc9457_members() -> None:
    extras = {"status": "active", "type": "x", "title": "y", "instance": "i", "other": 1}
    problem = Conflict("busy", **extras).to_problem("/here")
    assert problem["status"] == 409
    assert problem["type"].endswith("/conflict")
    assert (problem["title"], problem["detail"]) == ("Conflict", "busy")
    assert problem["instance"] == "/here"
    assert problem["other"] == 1
