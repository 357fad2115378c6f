"""House rules as code. Each rule reads the source (or the live class tree) and, when broken,
names the file and line so the fix is obvious. See ARCHITECTURE.md and CONTRIBUTING.md."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import incentive
from incentive import domains
from incentive.errors import IncentiveError

SRC = Path(incentive.__file__).parent
TESTS = Path(__file__).parent
DOMAIN_NAMES = {d.name for d in domains.DOMAINS}
KINDS = {d.name for d in domains.DOMAINS if d.kind}
MAX_MODULE_LINES = 500

# Code outside a request that owns its transactions, each for a stated reason: a whole
# module (a worker's driver) or one function of it ("path::Class.function").
OWN_TRANSACTIONS = {
    "events/service.py::handle": "each event delivery is its own unit of work",
    "kit/commands.py::in_unit_of_work": "an `incentive` command is an entry point: it commits",
    "events/relay.py": "the outbox relay claims and marks events in its own transactions",
    "config/live.py": "the refresher reads the live values outside any request",
    "flash_sales/purchases.py": "the purchase hot path: cached facts, group commit per batch",
    "flash_sales/service.py::set_flow": "the switch must be committed before the drain",
    "flash_sales/service.py::reconcile": "reconcile spans a drain: it reads and repairs in steps",
    "points_files/pipeline.py": "the points-file driver: one transaction per stage step",
    "points_files/intake.py": "a stored file is durable before it leaves the inbox",
    "points_files/staging.py": "staging commits chunk by chunk (resumable, bounded memory)",
    "points_files/crediting.py": "each crediting batch commits on its own (crash-safe)",
    "points_files/answers.py": "feedback is written and delivered in resumable steps",
    "coupons/calls.py": "provider calls are taken, sent outside any transaction, then recorded",
    "coupons/providers.py::sync": "a provider's batches are pulled outside any transaction",
    "coupons/reconcile.py::reconcile": "the provider's list is read outside any transaction",
    "rewards/stock.py": "rebuilds span a drain and work reward by reward, outside requests",
    "data_models/sync.py::deliver_due": "deliveries are claimed, written outside, then recorded",
    "data_models/sync.py::_record": "the outcome of a delivery round, after the writes",
}


def _modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        yield path, ast.parse(path.read_text(), str(path))


def _domain_of(path: Path) -> str | None:
    rel = path.relative_to(SRC).parts
    return rel[0] if len(rel) > 1 and rel[0] in DOMAIN_NAMES else None


def _imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, dotted module) of every import, ``from a import b`` also yielding ``a.b``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def _where(path: Path, line: int) -> str:
    return f"src/incentive/{path.relative_to(SRC)}:{line}"


def test_no_domain_imports_another_domains_models() -> None:
    broken = []
    for path, tree in _modules():
        domain = _domain_of(path)
        if domain is None:
            continue
        for line, module in _imports(tree):
            m = re.match(r"incentive\.(\w+)\.models(\.|$)", module)
            if m and m.group(1) != domain:
                broken.append(f"{_where(path, line)} imports {module}")
    assert not broken, "a domain reads another's tables:\n" + "\n".join(broken)


def test_kit_and_the_campaign_core_import_no_domain_they_serve() -> None:
    broken = []
    for path, tree in _modules():
        domain = _domain_of(path)
        forbidden = {
            "kit": DOMAIN_NAMES - {"kit"},
            "campaigns": KINDS,
        }.get(domain or "", set())
        for line, module in _imports(tree):
            m = re.match(r"incentive\.(\w+)", module)
            if m and m.group(1) in forbidden:
                broken.append(f"{_where(path, line)} imports {module}")
    assert not broken, "kit must stay generic; campaigns must not know a kind:\n" + "\n".join(
        broken
    )


def _calls_in_functions(
    node: ast.AST, names: tuple[str, ...], scope: tuple[str, ...] = ()
) -> Iterator[tuple[str, int, str]]:
    """(enclosing Class.function, line, attribute) of every ``.name`` use under ``node``."""
    for child in ast.iter_child_nodes(node):
        inner = scope
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            inner = (*scope, child.name)
        if isinstance(child, ast.Attribute) and child.attr in names:
            yield ".".join(scope), child.lineno, child.attr
        yield from _calls_in_functions(child, names, inner)


def test_transactions_are_committed_only_by_entry_points() -> None:
    broken = []
    for path, tree in _modules():
        rel = str(path.relative_to(SRC))
        if _domain_of(path) is None or path.name in ("api.py", "cli.py", "runtime.py"):
            continue
        if rel in OWN_TRANSACTIONS:
            continue
        for where, line, attr in _calls_in_functions(tree, ("commit", "unit_of_work")):
            if f"{rel}::{where}" not in OWN_TRANSACTIONS:
                broken.append(f"{_where(path, line)} calls .{attr} in {where or 'the module'}")
    assert not broken, (
        "services flush, the entry point commits (allow-list OWN_TRANSACTIONS with a reason):\n"
        + "\n".join(broken)
    )


def test_balances_are_written_only_by_the_ledger() -> None:
    broken = []
    for path, tree in _modules():
        if _domain_of(path) == "ledger":
            continue
        for node in ast.walk(tree):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr == "balance":
                    broken.append(f"{_where(path, node.lineno)} assigns .balance")
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if re.search(r"update\s+accounts\b", node.value, re.IGNORECASE):
                    broken.append(f"{_where(path, node.lineno)} updates accounts in SQL")
    assert not broken, "only ledger/ changes a balance:\n" + "\n".join(broken)


def test_no_grab_bag_modules() -> None:
    names = {"utils", "helpers", "manager", "common", "misc"}
    broken = [
        f"src/incentive/{p.relative_to(SRC)}"
        for p in SRC.rglob("*.py")
        if p.stem in names or p.parent.name in names
    ]
    assert not broken, "name modules for what they hold:\n" + "\n".join(broken)


def test_no_module_is_over_500_lines() -> None:
    broken = []
    for path in sorted(SRC.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            broken.append(f"src/incentive/{path.relative_to(SRC)}: {lines} lines")
    assert not broken, "split along a seam:\n" + "\n".join(broken)


@pytest.mark.parametrize("domain", sorted(DOMAIN_NAMES))
def test_every_domain_has_tests(domain: str) -> None:
    folder = TESTS / domain
    assert list(folder.glob("test_*.py")), f"tests/{domain}/ has no test_*.py"


def test_every_domain_part_the_list_declares_exists() -> None:
    for d in domains.DOMAINS:
        for flag, module in domains.MODULES.items():
            exists = (SRC / d.name / f"{module}.py").exists()
            assert exists == getattr(d, flag), (
                f"domains.py: {d.name} {flag}={getattr(d, flag)} but "
                f"src/incentive/{d.name}/{module}.py {'exists' if exists else 'is missing'}"
            )


# --------------------------------------------------------------------------- error tree

TREE_LINE = re.compile(
    r"^(?P<indent>[\s│├└─]*)(?P<name>\w+) \((?P<status>\d{3}) (?P<slug>[\w-]+)\)"
)


def _drawn_tree() -> dict[str, tuple[str | None, int, str, str | None]]:
    """name -> (parent, status, slug, domain) from the drawing in errors.py's docstring."""
    doc = importlib.import_module("incentive.errors").__doc__ or ""
    drawn: dict[str, tuple[str | None, int, str, str | None]] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        m = TREE_LINE.match(line.strip("\n")[4:] if line.startswith("    ") else "")
        if not m:
            continue
        depth = len(m.group("indent"))
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parent = stack[-1][1] if stack else None
        tag = re.search(r"\[(\w+)\]\s*$", line)
        drawn[m.group("name")] = (
            parent,
            int(m.group("status")),
            m.group("slug"),
            tag.group(1) if tag else None,
        )
        stack.append((depth, m.group("name")))
    return drawn


def _markers() -> dict[str, str]:
    doc = importlib.import_module("incentive.errors").__doc__ or ""
    text = doc[doc.index("one marker base") :]
    return dict(re.findall(r"(\w+Error) \[(\w+)\]", text))


def _real_errors() -> list[type[IncentiveError]]:
    for module in pkgutil.walk_packages(incentive.__path__, "incentive."):
        if ".migrations" not in module.name:
            importlib.import_module(module.name)
    seen: list[type[IncentiveError]] = []
    todo: list[type[IncentiveError]] = [IncentiveError]
    while todo:
        cls = todo.pop()
        if cls not in seen and cls.__module__.startswith("incentive."):
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return seen


def test_error_tree_in_errors_docstring_matches_the_code() -> None:
    drawn, markers = _drawn_tree(), _markers()
    broken = []
    real = {cls.__name__: cls for cls in _real_errors()}
    for name, cls in real.items():
        where = f"{cls.__module__}.{name}"
        domain = cls.__module__.split(".")[1] if cls.__module__ != "incentive.errors" else None
        if name in markers:
            if markers[name] != domain:
                broken.append(f"{where}: drawn as the marker of [{markers[name]}]")
            continue
        if name not in drawn:
            broken.append(f"{where} ({cls.status} {cls.slug}) is missing from the tree")
            continue
        parent, status, slug, tag = drawn[name]
        if (status, slug) != (cls.status, cls.slug):
            broken.append(f"{where}: drawn ({status} {slug}), is ({cls.status} {cls.slug})")
        if tag != domain:
            broken.append(f"{where}: drawn in [{tag}], defined in [{domain}]")
        if parent is not None and real.get(parent) not in cls.__mro__[1:]:
            broken.append(f"{where}: drawn under {parent}, which it does not derive from")
        if domain is not None and domain in set(markers.values()):
            marker = next(m for m, d in markers.items() if d == domain)
            if real.get(marker) not in cls.__mro__:
                broken.append(f"{where}: does not derive from its domain's base {marker}")
    for name in drawn.keys() - real.keys():
        broken.append(f"errors.py docstring draws {name}, which no module defines")
    assert not broken, "src/incentive/errors.py docstring tree:\n" + "\n".join(broken)
