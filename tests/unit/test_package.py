"""Packaging read from the source: import names map to the card's layout, the runtime never imports
the training stack, train, export or bench, no import cycle, every docstring example runs,
and the extras installed together hold every extra."""

from __future__ import annotations

import ast
from pathlib import Path
from project import EXTRA_SETS, ROOT, extras


TRAINING_STACK = ("tensorflow", "keras", "tf2onnx", "onnx", "lightgbm", "sklearn")


def test_import_names_map_to_the_card_layout() -> None:
    import fraudscore
    import fraudscore.bench
    import fraudscore.export
    import fraudscore.train

    assert Path(fraudscore.__file__).parent == ROOT / "runtime"
    assert Path(fraudscore.train.__file__).parent == ROOT / "train"
    assert Path(fraudscore.export.__file__).parent == ROOT / "export"
    assert Path(fraudscore.bench.__file__).parent == ROOT / "bench"
    for top in ("train", "export", "runtime", "bench", "deploy", "tests", "pyproject.toml", "README.md"):
        assert (ROOT / top).exists(), top


SIBLINGS = ("fraudscore.train", "fraudscore.export", "fraudscore.bench")


def _imported_names(path: Path) -> list[str]:
    """Every module `path` imports, relative imports resolved against its package."""
    package = ("fraudscore",) + path.relative_to(ROOT / "runtime").parent.parts
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names += [module] + [f"{module}.{a.name}" for a in node.names]
    return names


def test_runtime_sources_never_import_the_training_stack() -> None:
    for path in (ROOT / "runtime").rglob("*.py"):
        for name in _imported_names(path):
            assert name.split(".")[0] not in TRAINING_STACK, f"{path.name} imports {name}"


def test_mlflow_is_imported_only_inside_the_tracking_functions() -> None:
    for path in (ROOT / "runtime").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "mlflow" for n in names):
                assert path.name == "tracking.py" and node not in top, f"{path.relative_to(ROOT)} imports mlflow"


def test_runtime_never_imports_train_export_or_bench() -> None:
    """The dependency runs one way: train, export and bench use the runtime, never back."""
    for path in (ROOT / "runtime").rglob("*.py"):
        for name in _imported_names(path):
            assert not name.startswith(SIBLINGS), f"{path.relative_to(ROOT)} imports {name}"


PACKAGE_DIRS = {"runtime": "fraudscore", "train": "fraudscore.train", "export": "fraudscore.export",
                "bench": "fraudscore.bench"}


def _modules() -> dict[str, Path]:
    """Every module of the four packages by import name (pyproject's package-dir mapping)."""
    found = {}
    for directory, package in PACKAGE_DIRS.items():
        for path in (ROOT / directory).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / directory).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def _runtime_imports(path: Path, name: str) -> set[str]:
    """Every module `path` imports when it runs, at the top or inside a function, relative imports
    resolved; `if TYPE_CHECKING:` blocks are left out (they never run)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) in (
               "TYPE_CHECKING", "typing.TYPE_CHECKING") for child in node.body for n in ast.walk(child)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names |= {module} | {f"{module}.{a.name}" for a in node.names}
    return names


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted.

    >>> import_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}})
    [['a', 'b']]
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_cycle_finder_finds_cycles() -> None:
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set(), "c": {"c"}}) == []
    assert sorted(import_cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}})) == [["a", "b"], ["c", "d"]]


def test_no_import_cycle_in_the_packages() -> None:
    """Function-level imports included: one once hid bench's harness -> kafka_mode -> harness."""
    modules = _modules()
    graph = {name: {m for m in _runtime_imports(path, name) if m in modules and m != name} for name, path in modules.items()}
    assert sum(len(deps) for deps in graph.values()) > 300, "the import graph looks empty: is the parsing broken?"
    assert import_cycles(graph) == []


def test_every_docstring_example_in_the_packages_runs() -> None:
    """Every module whose docstrings hold examples (`>>>`) passes `doctest`: an example that
    drifted from the code fails here, whichever module it is in."""
    import doctest
    import importlib

    with_examples = sorted(name for name, path in _modules().items() if ">>>" in path.read_text())
    assert len(with_examples) >= 10, with_examples
    for name in with_examples:
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, (name, result)


def test_optional_commands_register_themselves() -> None:
    from fraudscore.cli import app

    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert {"train", "export", "bench", "run", "score"} <= names


def test_the_resolved_combinations_hold_every_extra() -> None:
    assert set(extras()) <= {e for s in EXTRA_SETS for e in s.split(",")}


