"""Token signing keys: Ed25519, identified by ``kid``, kept in ``<data_dir>/keys``.

The newest key signs; every key in the directory verifies, so rotating is: ``incentive keys
rotate-signing`` (new key signs from now), wait the access-token lifetime, delete the old file.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


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


def generate(directory: Path) -> SigningKey:
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    existing = sorted(directory.glob("signing-*.pem"))
    path = directory / f"signing-{len(existing) + 1:04d}.pem"
    path.write_bytes(pem)
    path.chmod(0o600)
    return SigningKey(_kid_for(key), key)


class KeyRing:
    """The active signing key plus every key still accepted for verification."""

    def __init__(self, keys: list[SigningKey]) -> None:
        if not keys:
            raise ValueError("no signing keys")
        self.active = keys[-1]
        self.by_kid = {k.kid: k for k in keys}

    @classmethod
    def load(cls, directory: Path, key_file: Path | None = None) -> KeyRing:
        if key_file is not None:
            return cls([_load(key_file)])
        paths = sorted(directory.glob("signing-*.pem"))
        keys = [_load(p) for p in paths] or [generate(directory)]
        return cls(keys)
