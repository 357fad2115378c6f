"""Peppered hashes of what identifies a person beyond their login — a phone number, a device
id, a payment instrument's hash, a client address — so they can be compared (the same phone
behind two accounts) without being stored.

The pepper is ``INCENTIVE_IDENTITY_PEPPER``, else 32 random bytes kept in
``data_dir/keys/identity-pepper`` (made once, mode 0600). Every process of a deployment must
share it: a hash made with another pepper never matches.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable

from fastapi import Request

from incentive.settings import Settings

PEPPER_FILE = "identity-pepper"
MIN_PHONE_DIGITS = 5


class Pepper:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def hash(self, kind: str, value: str) -> str:
        """64 hex characters; ``kind`` (phone, device, instrument, address) separates spaces."""
        return hmac.new(
            self._secret, f"{kind}\n{normalise(kind, value)}".encode(), "sha256"
        ).hexdigest()

    def signals(self, given: Iterable[tuple[str, str | None]]) -> dict[str, str]:
        """``{kind: hash}`` of the given values that identify someone: a value that
        normalises to a placeholder (no real phone number, an empty or all-zero device id)
        would make strangers look like one person, so it is left out."""
        return {
            kind: self.hash(kind, value)
            for kind, value in given
            if value is not None and identifying(kind, normalise(kind, value))
        }


def identifying(kind: str, normalised: str) -> bool:
    if kind == "phone":
        return len(re.sub(r"[^0-9]", "", normalised)) >= MIN_PHONE_DIGITS
    return bool(re.sub(r"[\s0\-:.]", "", normalised))


def normalise(kind: str, value: str) -> str:
    if kind == "phone":
        return re.sub(r"[^0-9+]", "", value)
    return value.strip().lower() if kind == "instrument" else value.strip()


def load_pepper(settings: Settings) -> Pepper:
    if settings.identity_pepper is not None:
        return Pepper(settings.identity_pepper.get_secret_value().encode())
    path = settings.data_dir / "keys" / PEPPER_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(32).hex().encode())
    return Pepper(hashlib.sha256(path.read_bytes().strip()).digest())


def pepper(request: Request) -> Pepper:
    found: Pepper = request.app.state.identity_pepper
    return found


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None
