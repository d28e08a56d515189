"""The package's floors: imports run one way (top → stages → models → core → ground), and stages never import
each other. Walks every module's imports (top-level and inside functions) with `ast`, so a lazy upward import
fails as surely as a top-level one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "pocketsd"

# floor number per room: a module may import from its own room or from any lower floor.
FLOORS = {
    "errors": 0, "artifacts": 0, "data": 0, "__init__": 0,
    "palettize": 1,
    "models": 2,
    "compress": 3, "convert": 3, "pipeline": 3, "eval": 3, "train": 3,
    "cli": 4, "commands": 4, "entry": 4, "bench": 4, "__main__": 4, "app": 4, "refmodel": 4, "demo": 4, "info": 4, "ui": 4, "evaluate": 4,
}
STAGES = {"compress", "convert", "pipeline", "eval", "train"}
# Modules that stand on another floor than their room: the model-family descriptors are pure data (they import
# only `errors`), and the ground floor reads them to tell a folder's family and migrate old manifests.
MODULE_FLOORS = {"pocketsd.models.family": 0}


def room_of(module: str) -> str:
    """'pocketsd.pipeline.run' → 'pipeline'; 'pocketsd' → '__init__'. A `__main__` module anywhere
    (`python -m pocketsd.eval`) is an entry script — run, never imported — so it stands on the top floor."""
    parts = module.split(".")
    if parts[-1] == "__main__":
        return "__main__"
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of every pocketsd import in the file, relative ones resolved."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source if source is not None else path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "pocketsd"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # `from . import x`: each name may be a submodule
                    found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
                    continue
            else:
                target = node.module or ""
            if target.split(".")[0] == "pocketsd":
                found.append((node.lineno, target))
    return found


def floor_of(module: str) -> int | None:
    for name, floor in MODULE_FLOORS.items():
        if module == name or module.startswith(name + "."):
            return floor
    return FLOORS.get(room_of(module))


def upward_edges() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = module_name(path)
        room = room_of(here)
        assert room in FLOORS, f"{path}: room {room!r} has no floor in tests/test_layering.py — give it one"
        floor = floor_of(here)
        for line, target in imports_of(path):
            other, other_floor = room_of(target), floor_of(target)
            if other_floor is None or (other == room and floor == other_floor):
                continue
            if other_floor > floor:
                bad.append(f"{path.relative_to(PACKAGE)}:{line} ({room}, floor {floor}) imports {target} "
                           f"(floor {other_floor})")
            elif room in STAGES and other in STAGES:
                bad.append(f"{path.relative_to(PACKAGE)}:{line}: stage {room} imports stage {other} ({target})")
    return bad


def test_nothing_imports_an_entry_script():
    # `__main__` modules sit on the top floor only because nobody imports them; keep it so.
    bad = [f"{path.relative_to(PACKAGE)}:{line} imports {target}" for path in sorted(PACKAGE.rglob("*.py"))
           for line, target in imports_of(path) if target.split(".")[-1] == "__main__"]
    assert not bad, bad


def test_no_import_runs_upward_and_stages_stay_apart():
    bad = upward_edges()
    assert not bad, "imports against the floors:\n" + "\n".join(bad)


@pytest.mark.parametrize("source,expected", [
    ("from ..pipeline import run\n", "pocketsd.pipeline"),
    ("from .. import cli\n", "pocketsd.cli"),
    ("import pocketsd.app.page\n", "pocketsd.app.page"),
])
def test_the_walker_sees_relative_lazy_and_absolute_imports(source, expected):
    # The check is only as good as its walker: an upward import planted inside a function of palettize is found.
    planted = f"def f():\n    {source.strip()}\n"
    targets = [t for _, t in imports_of(PACKAGE / "palettize" / "lora.py", planted)]
    assert any(t.startswith(expected) for t in targets), targets
    assert FLOORS[room_of(expected)] > FLOORS["palettize"]


# Pending, not a pattern: the manifest structure check being written now (artifacts/manifest.py) imports
# bundle.stage_of lazily, which closes manifest → bundle → atomic → outputs → manifest. Drop this edge once
# stage_of sits below the check (or the check beside the bundle reader).
PENDING_EDGES = {("pocketsd.artifacts.manifest", "pocketsd.artifacts.bundle")}


def import_cycles() -> list[list[str]]:
    """Groups of modules that import each other, directly or round a loop (lazy imports count: a cycle that only
    works because one side imports late still ties the two modules together)."""
    modules = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for _, target in imports_of(path):
            while target and target not in modules:  # `from .x import name`: the module x
                target = target.rpartition(".")[0]
            if target and target != name and (name, target) not in PENDING_EDGES:
                targets.add(target)
        graph[name] = targets
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle():
    cycles = import_cycles()
    assert not cycles, "modules importing each other:\n" + "\n".join(" ↔ ".join(c) for c in cycles)
