"""House rules for this domain, as code: it reads no other domain's tables, uses no other
domain's private names, and spells dialect-specific INSERTs through ``incentive.db.insert``."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import incentive.points_files

DOMAIN = "incentive.points_files"
ROOT = Path(incentive.points_files.__file__).parent
SOURCES = sorted(ROOT.rglob("*.py"))


def _imports() -> Iterator[tuple[str, str, list[str]]]:
    """(file, imported module, imported names) for every import of the domain's sources."""
    for path in SOURCES:
        where = str(path.relative_to(ROOT.parent))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                yield where, node.module, [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    yield where, alias.name, []


def _other_domain(module: str) -> bool:
    return module.startswith("incentive.") and not module.startswith(DOMAIN)


def test_sources_found() -> None:
    assert len(SOURCES) > 10


def test_no_other_domains_tables() -> None:
    offending = [
        (where, module)
        for where, module, names in _imports()
        if _other_domain(module) and (module.endswith(".models") or "models" in names)
    ]
    assert offending == []


def test_no_other_domains_private_names() -> None:
    offending = [
        (where, module, name)
        for where, module, names in _imports()
        if _other_domain(module)
        for name in names
        if name.startswith("_")
    ]
    assert offending == []


def test_no_dialect_specific_insert() -> None:
    offending = [
        (where, module)
        for where, module, _ in _imports()
        if module.startswith("sqlalchemy.dialects")
    ]
    assert offending == []
