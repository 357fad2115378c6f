"""kit/ is plumbing every domain may use, so it imports none of them."""

from __future__ import annotations

import ast
from pathlib import Path

import incentive
import incentive.kit

SRC = Path(incentive.__file__).parent
# Modules of the package that are not domains: kit may import these.
PLUMBING = {"db", "deps", "errors", "observability", "settings", "kit"}


def test_kit_imports_no_domain() -> None:
    broken = []
    for path in sorted(Path(incentive.kit.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "incentive" and len(parts) > 1 and parts[1] not in PLUMBING:
                    broken.append(f"{path.relative_to(SRC)}:{node.lineno} imports {name}")
    assert not broken, "kit must not import a domain:\n" + "\n".join(broken)
