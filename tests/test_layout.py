"""The package's shape: modules of one job and modest size, constriction behind one module, one
place that sets PyTorch's thread count, and imports without a cycle."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "bench_codecs")
MAX_LINES = 420  # about 400: a module past it has grown a second job


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            found[name] = path
    return found


def imported(path: Path) -> set[str]:
    """Every module an import statement anywhere in the file names (also inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


@pytest.mark.parametrize("name", modules())
def test_no_module_is_long(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines"


def test_exactly_one_module_imports_constriction():
    users = [name for name, path in modules().items()
             if any(m.split(".")[0] == "constriction" for m in imported(path))]
    assert users == ["bench.entropy"]


def test_exactly_one_place_sets_the_pytorch_thread_count():
    calls = [(name, node.lineno) for name, path in modules().items()
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Attribute) and node.attr == "set_num_threads"]
    assert [name for name, _ in calls] == ["bench.learned"] * len(calls) and calls
    assert len({name for name, _ in calls}) == 1


def test_the_imports_between_the_packages_have_no_cycle():
    mods = modules()
    graph = {name: {m for m in imported(path) if m in mods and m != name} | {
        m.rsplit(".", 1)[0] for m in imported(path) if m not in mods and m.rsplit(".", 1)[0] in mods
        and m.rsplit(".", 1)[0] != name} for name, path in mods.items()}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for name in sorted(mods):
        if name not in state:
            visit(name, [])
