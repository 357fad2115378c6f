"""CLI: users, merchants, partners, signing keys."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    return None
