"""``auth.identity``: phone numbers in E.164, client addresses grouped (IPv6 by /64), and the
pepper file made whole before anyone reads it; a blank pepper setting is refused at start."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pydantic import ValidationError
from starlette.requests import Request

from incentive.auth.identity import PEPPER_FILE, client_address, e164, load_pepper
from incentive.auth.service import shown_name
from incentive.settings import Settings


def test_phone_numbers_are_read_in_e164() -> None:
    for spelling in ("+86 138 0013 8000", "0086 138-0013-8000", "13800138000", "(138) 0013 8000"):
        assert e164(spelling, "CN") == "+8613800138000", spelling
    assert e164("020 7946 0000", "GB") == "+442079460000"
    for nothing in ("( )-", "---", "12", "+999 1234"):
        assert e164(nothing, "CN") is None, nothing


def _address(host: str | None) -> str | None:
    client = None if host is None else (host, 1)
    return client_address(Request({"type": "http", "client": client, "headers": []}))


def test_client_addresses_are_grouped_ipv6_by_its_64() -> None:
    assert _address("2001:db8:1:2::1") == _address("2001:db8:1:2:ab:cd:ef:1") == "2001:db8:1:2::/64"
    assert _address("2001:db8:1:3::1") != _address("2001:db8:1:2::1")
    assert _address("203.0.113.7") == "203.0.113.7"
    assert _address("::ffff:203.0.113.7") == "203.0.113.7"
    assert _address(None) is None


def test_processes_starting_at_once_share_one_whole_pepper(tmp_path: Path) -> None:
    """Many starts at the same moment on a fresh data directory: each reads the same pepper,
    never the empty file another is still writing."""
    for attempt in range(30):
        settings = Settings(data_dir=tmp_path / str(attempt))
        start = threading.Barrier(8)
        made: list[str] = []

        def load(settings: Settings, start: threading.Barrier, made: list[str]) -> None:
            start.wait()
            made.append(load_pepper(settings).hash("device", "x"))

        threads = [threading.Thread(target=load, args=(settings, start, made)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(made) == 8
        assert len(set(made)) == 1, f"attempt {attempt}: {len(set(made))} peppers"
        kept = tmp_path / str(attempt) / "keys" / PEPPER_FILE
        assert len(kept.read_bytes()) == 64
        assert [p.name for p in kept.parent.iterdir()] == [PEPPER_FILE]  # no temporary left


def test_a_blank_pepper_setting_or_an_empty_pepper_file_is_refused(tmp_path: Path) -> None:
    for blank in ("", "   "):
        with pytest.raises(ValidationError, match="INCENTIVE_IDENTITY_PEPPER"):
            Settings(data_dir=tmp_path, identity_pepper=blank)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / PEPPER_FILE).write_bytes(b"")
    with pytest.raises(RuntimeError, match="empty"):
        load_pepper(Settings(data_dir=tmp_path))


def test_a_region_phonenumbers_does_not_know_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="INCENTIVE_PHONE_REGION"):
        Settings(data_dir=tmp_path, phone_region="XX")


def test_a_stored_name_with_bidi_controls_is_shown_without_them() -> None:
    assert shown_name("alice", "ad\u202enim") == "adnim"
    assert shown_name("alice", "\u202e\u2066") == "a***e"
