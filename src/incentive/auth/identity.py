"""Peppered hashes of what identifies a person beyond their login — a phone number, a device
id, a payment instrument's hash, a client address — so they can be compared (the same phone
behind two accounts) without being stored.

A phone number is hashed in E.164 (``phonenumbers``; a number without its country code is of
``INCENTIVE_PHONE_REGION``, CN by default), so ``+86 138…``, ``0086 138…`` and ``138…`` are one
number. A client address is grouped before it is counted or hashed: an IPv6 address by its /64
(one subscriber's prefix), an IPv4 address as is.

The pepper is ``INCENTIVE_IDENTITY_PEPPER`` (refused blank, ``settings``), else 32 random bytes
kept in ``data_dir/keys/identity-pepper`` (mode 0600): written to a temporary file and linked
into place, so a process starting at the same moment reads the whole pepper or makes the file
itself, never an empty one. Every process of a deployment must share it: a hash made with
another pepper never matches.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

import phonenumbers
from fastapi import Request

from incentive.settings import Settings

PEPPER_FILE = "identity-pepper"
#: an IPv6 client is counted by this prefix (a subscriber gets at least a /64)
IPV6_PREFIX = 64


class Pepper:
    def __init__(self, secret: bytes, phone_region: str = "CN") -> None:
        self._secret = secret
        self.phone_region = phone_region

    def hash(self, kind: str, value: str) -> str:
        """64 hex characters; ``kind`` (phone, device, instrument, address) separates spaces."""
        return hmac.new(
            self._secret, f"{kind}\n{self.normalise(kind, value)}".encode(), "sha256"
        ).hexdigest()

    def normalise(self, kind: str, value: str) -> str:
        if kind == "phone":
            return e164(value, self.phone_region) or ""
        return value.strip().lower() if kind == "instrument" else value.strip()

    def signals(self, given: Iterable[tuple[str, str | None]]) -> dict[str, str]:
        """``{kind: hash}`` of the given values that identify someone: a value that
        normalises to a placeholder (no phone number, an empty or all-zero device id) would
        make strangers look like one person, so it is left out."""
        return {
            kind: self.hash(kind, value)
            for kind, value in given
            if value is not None and identifying(self.normalise(kind, value))
        }


def e164(value: str, region: str) -> str | None:
    """``value`` as an E.164 number (``+8613800000000``), a number without its country code
    read as of ``region``; None when it is no possible phone number."""
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def identifying(normalised: str) -> bool:
    return bool(re.sub(r"[\s0\-:.+]", "", normalised))


def _read_pepper(path: Path) -> bytes:
    secret = path.read_bytes().strip()
    if not secret:
        raise RuntimeError(
            f"{path} is empty: delete it (only if no hash made with it must still match) or "
            "set INCENTIVE_IDENTITY_PEPPER"
        )
    return secret


def load_pepper(settings: Settings) -> Pepper:
    region = settings.phone_region
    if settings.identity_pepper is not None:
        return Pepper(settings.identity_pepper.get_secret_value().encode(), region)
    path = settings.data_dir / "keys" / PEPPER_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{PEPPER_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(32).hex().encode())
                out.flush()
                os.fsync(out.fileno())
            # A link fails if the name exists: the first process's pepper stays, whole.
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process made it first
        finally:
            temporary.unlink(missing_ok=True)
    return Pepper(hashlib.sha256(_read_pepper(path)).digest(), region)


def pepper(request: Request) -> Pepper:
    found: Pepper = request.app.state.identity_pepper
    return found


def client_address(request: Request) -> str | None:
    """The client's address as counted: an IPv6 address by its /64, an IPv4 address (also
    when IPv4-mapped) as is; None when the server knows no client address."""
    host = request.client.host if request.client else None
    if not host:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # not an IP (a test transport's name): as is
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)
