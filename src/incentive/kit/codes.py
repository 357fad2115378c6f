"""Codes people read aloud or type: random symbols without look-alike characters."""

from __future__ import annotations

import re
import secrets
from typing import TypeGuard

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"  # no 0 O 1 I L
RANDOM_LENGTH = 10  # 31**10 ~ 2**49.5

# Each byte below 248 (8 x 31) maps to one symbol, uniformly; bytes 248-255 are dropped.
_SYMBOLS = "".join(ALPHABET[b % len(ALPHABET)] for b in range(248)).encode("ascii")
_TABLE = bytes.maketrans(bytes(range(248)), _SYMBOLS)
_DROPPED = bytes(range(248, 256))


def random_codes(count: int, prefix: str = "", length: int = RANDOM_LENGTH) -> list[str]:
    """``count`` codes: ``prefix`` and ``length`` uniform symbols from ``secrets``."""
    need = count * length
    symbols = b""
    while len(symbols) < need:
        # 248/256 of the bytes are kept: draw ~4 % more than needed, then top up.
        more = need - len(symbols)
        symbols += secrets.token_bytes(more + more // 20 + 16).translate(_TABLE, _DROPPED)
    text_ = symbols[:need].decode("ascii")
    return [prefix + text_[i : i + length] for i in range(0, need, length)]


# Tokens in links people share (a share's /s/…, an invite's /i/…): opaque, URL-safe, short
# enough for a mini-program scene (<= 32 characters). 12 bytes: 96 random bits, 16 characters.
PUBLIC_TOKEN_BYTES = 12
PUBLIC_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,32}")


def public_token() -> str:
    """A new token for a public link."""
    return secrets.token_urlsafe(PUBLIC_TOKEN_BYTES)


def is_public_token(value: object) -> TypeGuard[str]:
    """Whether ``value`` could be a public link's token (checked before any lookup)."""
    return isinstance(value, str) and PUBLIC_TOKEN.fullmatch(value) is not None


def normalize_code(raw: str) -> str:
    """What a person typed, as stored: upper case, without spaces and hyphens."""
    return re.sub(r"[\s-]", "", raw).upper()
