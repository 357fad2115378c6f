"""QR codes as PNG or SVG: the one renderer of every code a person scans (a coupon's code at
the till, a share's link, a referral's)."""

from __future__ import annotations

import io
from typing import Literal

import segno

Format = Literal["png", "svg"]
Ecc = Literal["l", "m", "q", "h"]
MEDIA_TYPES = {"png": "image/png", "svg": "image/svg+xml"}
# Pixels per module when the caller names none (a PNG a phone camera reads at arm's length).
DEFAULT_SCALE = {"png": 8, "svg": 6}
MAX_SCALE = 40


class DataTooLong(ValueError):
    """``data`` does not fit in a QR code at this error correction level."""


def render(
    data: str, format: Format = "png", *, scale: int | None = None, ecc: Ecc = "m", border: int = 4
) -> tuple[bytes, str]:
    """``data`` as a QR code (never a micro QR): (the image's bytes, its media type).
    ``scale``: pixels (SVG units) per module; ``ecc``: error correction level.
    ``DataTooLong`` when ``data`` does not fit."""
    try:
        code = segno.make(data, error=ecc, micro=False)
    except segno.DataOverflowError as exc:
        raise DataTooLong(str(exc)) from None
    out = io.BytesIO()
    code.save(out, kind=format, scale=scale or DEFAULT_SCALE[format], border=border)
    return out.getvalue(), MEDIA_TYPES[format]
