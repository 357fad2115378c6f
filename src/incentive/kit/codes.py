"""Codes people read aloud or type: random symbols without look-alike characters."""

from __future__ import annotations

import re
import secrets

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


def normalize_code(raw: str) -> str:
    """What a person typed, as stored: upper case, without spaces and hyphens."""
    return re.sub(r"[\s-]", "", raw).upper()
