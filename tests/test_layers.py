"""The package's map cannot drift: the layers import only downwards, the core and below know
nothing of MLflow, and no two modules import each other, directly or round a loop.

The layers, from the top: cli > study > analysis, inference > tracking > core > config > runtime.
A module may import its own package and any package below it; analysis and inference stand side
by side and import neither each other. Imports under `if TYPE_CHECKING:` count for the layers (a
type is a dependency too) but not for cycles (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "resnet_mnist"
RANK = {
    "runtime": 0,
    "config": 1,
    "core": 2,
    "tracking": 3,
    "analysis": 4,
    "inference": 4,
    "study": 5,
    "cli": 6,
}
NO_MLFLOW = ("runtime", "config", "core")
TOP_LEVEL = {"__init__", "__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path) -> list[tuple[str, bool]]:
    """Every module `path` imports, anywhere in it, with whether it runs (not TYPE_CHECKING)."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, runs: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for stmt in child.body:
                    visit_stmt(stmt, False)
                for stmt in child.orelse:
                    visit_stmt(stmt, runs)
            else:
                visit_stmt(child, runs)

    def visit_stmt(child: ast.AST, runs: bool) -> None:
        if isinstance(child, ast.Import):
            found.extend((alias.name, runs) for alias in child.names)
        elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
            found.append((child.module, runs))
            # `from resnet_mnist.core import data` imports the module resnet_mnist.core.data.
            found.extend(
                (f"{child.module}.{alias.name}", runs)
                for alias in child.names
                if (SRC.parent / child.module.replace(".", "/") / f"{alias.name}.py").is_file()
            )
        visit(child, runs)

    visit(ast.parse(path.read_text()), True)
    return found


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def test_every_module_sits_in_a_layer() -> None:
    loose = [
        m for m, p in MODULES.items() if layer(m) is None and m != "resnet_mnist" and p.stem not in TOP_LEVEL
    ]
    assert not loose, f"modules outside the layers: {loose}"
    assert set(RANK) == {layer(m) for m in MODULES if layer(m)}, "a layer without modules"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m)))
def test_imports_only_downwards(module: str) -> None:
    own = layer(module)
    assert own is not None
    wrong = sorted(
        {
            name
            for name, _ in imports(MODULES[module])
            if (other := layer(name)) is not None and other != own and RANK[other] >= RANK[own]
        }
    )
    assert not wrong, f"{module} ({own}) imports a layer at or above its own: {wrong}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) in NO_MLFLOW))
def test_core_and_below_import_no_mlflow(module: str) -> None:
    tracked = sorted({n for n, _ in imports(MODULES[module]) if n.split(".")[0] in ("mlflow", "lightning")})
    assert not tracked, f"{module} imports {tracked}: MLflow belongs to tracking and above"


def test_the_package_never_imports_the_benchmarks() -> None:
    users = sorted(
        m for m, p in MODULES.items() if any(n.split(".")[0] == "benchmarks" for n, _ in imports(p))
    )
    assert not users, f"{users} import benchmarks/ (outside the package, as torchvision's references)"


def graph() -> dict[str, set[str]]:
    """module -> the project modules it imports at run time."""
    return {m: {n for n, runs in imports(p) if runs and n in MODULES and n != m} for m, p in MODULES.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import loop of `edges`, as the modules round it, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (loop := walk(nxt)):
                return loop
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (loop := walk(node)):
            return loop
    return None


def test_no_import_cycles() -> None:
    edges = graph()
    # A package's __init__ imports nothing here, so a module importing its package is no loop.
    loop = find_cycle({m: {n for n in e if MODULES[n].stem != "__init__"} for m, e in edges.items()})
    assert loop is None, "import cycle: " + " -> ".join(loop or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_layer_rule_sees_function_level_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "def f():\n    from resnet_mnist.cli import app\n"
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mlflow\n"
    )
    assert set(imports(source)) == {
        ("typing", True),
        ("resnet_mnist.cli", True),
        ("resnet_mnist.cli.app", True),
        ("mlflow", False),
    }


def test_only_the_study_engine_imports_ray() -> None:
    """Ray's start-up and memory belong to the study: one module imports it, and nothing imports
    that module at the top of a file outside the study (the CLI's `study` verb imports it when it
    runs), so `train`, `compare` and `predict` never load Ray."""
    users = sorted(m for m, p in MODULES.items() if any(n.split(".")[0] == "ray" for n, _ in imports(p)))
    assert users == ["resnet_mnist.study.cluster"]
    top_level = sorted(
        m
        for m, p in MODULES.items()
        for node in ast.parse(p.read_text()).body
        if isinstance(node, ast.ImportFrom | ast.Import)
        and any("resnet_mnist.study.cluster" in name for name, _ in imports_of(node))
        and layer(m) != "study"
    )
    assert not top_level, f"{top_level} import the Ray engine at module level"


def imports_of(node: ast.Import | ast.ImportFrom) -> list[tuple[str, bool]]:
    if isinstance(node, ast.Import):
        return [(a.name, True) for a in node.names]
    return [(f"{node.module}.{a.name}", True) for a in node.names] + [(node.module or "", True)]


def test_train_compare_and_predict_load_no_ray() -> None:
    """What those commands import, imported for real in a fresh interpreter: no Ray."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import resnet_mnist.cli.app, resnet_mnist.tracking.runner, resnet_mnist.analysis.compare\n"
        "import resnet_mnist.inference.predict, resnet_mnist.study.report\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
