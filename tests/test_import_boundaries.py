"""The import boundaries between the programs, read from the source (nothing is imported).

- The launcher (`router.launch`) is a program of its own beside the request path: of our
  packages it imports only `common` and itself, and no module of router/, replica/, common/ or
  examples/ outside it imports it (scripts and tests may).
- `common` imports nothing of router/ or replica/; the replica imports nothing of the router.
- No import cycle, counting the imports that run (not those under `if TYPE_CHECKING:`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("router", "replica", "common", "examples")
LAUNCHER = "router.launch"


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    where: str
    typing_only: bool

    def __str__(self) -> str:
        return f"{self.where} imports {self.target}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    _module_name(path): path
    for package in PACKAGES
    for path in sorted((ROOT / package).rglob("*.py"))
}


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(f"{package}.")


def _typing_only_nodes(tree: ast.Module) -> set[int]:
    nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            nodes.update(id(child) for statement in node.body for child in ast.walk(statement))
    return nodes


def _imports(source: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    typing_only = _typing_only_nodes(tree)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *filter(None, [base])])
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if any(_in(target, ours) for ours in PACKAGES):
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                yield Import(source, target, where, id(node) in typing_only)


IMPORTS = [imp for name, path in MODULES.items() for imp in _imports(name, path)]


def test_the_scan_sees_the_packages_and_their_imports() -> None:
    assert {"router.launch", "router.launch._cli", "router.server", "replica", "common.config"} <= (
        MODULES.keys()
    )
    assert any(i.source == "router.launch._cli" and i.target == "common.config" for i in IMPORTS)


def test_the_launcher_imports_only_common_and_itself() -> None:
    crossing = [
        str(i)
        for i in IMPORTS
        if _in(i.source, LAUNCHER) and not (_in(i.target, LAUNCHER) or _in(i.target, "common"))
    ]
    assert crossing == []


def test_only_the_launcher_imports_the_launcher() -> None:
    crossing = [str(i) for i in IMPORTS if _in(i.target, LAUNCHER) and not _in(i.source, LAUNCHER)]
    assert crossing == []


def test_common_imports_neither_router_nor_replica() -> None:
    crossing = [
        str(i)
        for i in IMPORTS
        if _in(i.source, "common") and (_in(i.target, "router") or _in(i.target, "replica"))
    ]
    assert crossing == []


def test_the_replica_imports_nothing_of_the_router() -> None:
    crossing = [str(i) for i in IMPORTS if _in(i.source, "replica") and _in(i.target, "router")]
    assert crossing == []


def test_no_import_cycle() -> None:
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for i in IMPORTS:
        if not i.typing_only and i.target in MODULES and i.target != i.source:
            edges[i.source].add(i.target)
    done: set[str] = set()

    def cycle_from(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for target in sorted(edges[name]):
            found = cycle_from(target, [*path, name])
            if found:
                return found
        done.add(name)
        return None

    cycles = [cycle for name in sorted(MODULES) if (cycle := cycle_from(name, []))]
    assert cycles == [], " -> ".join(cycles[0])
