"""Token signing keys: Ed25519, identified by ``kid``, kept in ``<data_dir>/keys``.

The newest key signs; every key in the directory verifies, so rotating is: ``incentive keys
rotate-signing`` (new key signs from now), wait the access-token lifetime, delete the old file.
A process re-reads the directory whenever it changed (its mtime, one ``stat`` per
verification) and, when it meets a token with an unknown ``kid``, at most once per
``RELOAD_INTERVAL_SECONDS``; so processes sharing the directory pick up a rotation without a
restart, and a token signed by a deleted key is refused from then on. Until restarted, a
process keeps signing (and verifying) with the key that was newest at its start.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

RELOAD_INTERVAL_SECONDS = 5.0
_KEY_FILE = re.compile(r"^signing-(\d+)\.pem$")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()


def _kid_for(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest()[:12]).decode().rstrip("=")


def _load(path: Path) -> SigningKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return SigningKey(_kid_for(key), key)


def _numbered_key_files(directory: Path) -> list[tuple[int, Path]]:
    numbered = []
    for path in directory.glob("signing-*.pem"):
        match = _KEY_FILE.match(path.name)
        if match:
            numbered.append((int(match.group(1)), path))
    return sorted(numbered)


def _load_all(directory: Path) -> list[SigningKey]:
    keys = []
    for _, path in _numbered_key_files(directory):
        try:
            keys.append(_load(path))
        except FileNotFoundError:  # deleted by an operator between listing and reading
            continue
    return keys


def generate(directory: Path) -> SigningKey:
    """Write a new key numbered after the newest one, so it becomes the signing key."""
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Number after the highest existing file (not the count: old files get deleted), create
    # exclusively with 0600 from the start so the key is never readable by others.
    existing = _numbered_key_files(directory)
    number = existing[-1][0] + 1 if existing else 1
    while True:
        path = directory / f"signing-{number:04d}.pem"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process rotated at the same moment
            number += 1
            continue
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        return SigningKey(_kid_for(key), key)


class KeyRing:
    """The active signing key plus every key still accepted for verification."""

    def __init__(self, keys: list[SigningKey], directory: Path | None = None) -> None:
        if not keys:
            raise ValueError("no signing keys")
        self.active = keys[-1]
        self.by_kid = {k.kid: k for k in keys}
        self._directory = directory
        self._reloaded_at: float | None = None
        self._directory_version = self._current_directory_version()

    @classmethod
    def load(cls, directory: Path, key_file: Path | None = None) -> KeyRing:
        if key_file is not None:
            return cls([_load(key_file)])
        keys = _load_all(directory) or [generate(directory)]
        return cls(keys, directory)

    def _current_directory_version(self) -> int | None:
        if self._directory is None:
            return None
        try:
            return self._directory.stat().st_mtime_ns
        except OSError:
            return None

    def _reload(self, directory: Path) -> None:
        self.by_kid = {k.kid: k for k in _load_all(directory)} | {self.active.kid: self.active}

    def verification_key(self, kid: str) -> SigningKey | None:
        """The key for ``kid`` as the directory holds it now: a deleted key no longer
        verifies. An unknown kid re-reads the directory too, rate-limited (a file system
        whose mtime is coarse may hide a new key for a moment)."""
        if self._directory is None:
            return self.by_kid.get(kid)
        version = self._current_directory_version()
        if version != self._directory_version:
            self._directory_version = version
            self._reload(self._directory)
        key = self.by_kid.get(kid)
        if key is not None:
            return key
        now = time.monotonic()
        if self._reloaded_at is not None and now - self._reloaded_at < RELOAD_INTERVAL_SECONDS:
            return None
        self._reloaded_at = now
        self._reload(self._directory)
        return self.by_kid.get(kid)
