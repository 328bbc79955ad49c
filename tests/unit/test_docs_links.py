"""Every relative link in the README and docs/ leads somewhere: the file exists and, for a
link with #anchor, a heading of that file makes the anchor the way GitHub does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from project import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def github_anchors(markdown: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation but `-` and `_` dropped, spaces to hyphens,
    a repeated id suffixed -1, -2, ... (headings inside code blocks are not headings)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        match = None if in_code else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_the_anchor_rule_matches_github() -> None:
    heading = "## Metrics and health (`--metrics-host` 127.0.0.1, `--metrics-port` 9464)"
    assert github_anchors(heading) == {"metrics-and-health---metrics-host-127001---metrics-port-9464"}
    assert github_anchors("# A\n# A\n```\n# not a heading\n```") == {"a", "a-1"}


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text()
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in github_anchors(file.read_text()):
            broken.append(f"{target}: no heading makes #{anchor}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_architecture_module_table_names_every_module_and_only_existing_ones() -> None:
    """docs/architecture.md's "Modules" table cannot drift from the tree: every module of the
    runtime has a row (its name in the first column), every module of train/export/bench is named
    in its package's row, and every name in the table is a module that exists."""
    from test_package import _modules

    modules = _modules()
    section = (ROOT / "docs" / "architecture.md").read_text().split("## Modules (one job each)")[1].split("\n## ")[0]
    named, package_rows = set(), {}
    for row in (line for line in section.splitlines() if line.startswith("| `")):
        _, first, job, *_ = row.split("|")
        for name in re.findall(r"`([^`]+)`", first):
            named.add(name if name.startswith("fraudscore") else f"fraudscore.{name}")
        if first.strip().strip("`") in ("fraudscore.train", "fraudscore.export", "fraudscore.bench"):
            package_rows[first.strip().strip("`")] = set(re.findall(r"`([a-z_]+)`", job))
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    missing, unknown = [], sorted(named - set(modules))
    for name in sorted(set(modules) - packages):
        if name.endswith("__main__"):
            continue
        owner = next((p for p in package_rows if name.startswith(p + ".")), None)
        if (name.rpartition(".")[2] not in package_rows[owner]) if owner else (name not in named):
            missing.append(name)
    assert not missing, f"modules without a row in docs/architecture.md: {missing}"
    assert not unknown, f"rows of docs/architecture.md naming no module: {unknown}"


def _runtime_definitions() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """The runtime's classes with their methods and attributes (base classes of the package
    included), and its modules' top-level functions, by file relative to runtime/."""
    import ast

    classes: dict[str, tuple[set[str], list[str]]] = {}
    functions: dict[str, set[str]] = {}
    for path in sorted((ROOT / "runtime").rglob("*.py")):
        tree = ast.parse(path.read_text())
        functions[path.relative_to(ROOT / "runtime").as_posix()] = {
            node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        for node in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            members = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            members |= {t.id for n in ast.walk(node) if isinstance(n, (ast.Assign, ast.AnnAssign))
                        for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
            bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
            known = classes.setdefault(node.name, (set(), []))
            known[0].update(members)
            known[1].extend(bases)
    resolved = {}
    for name, (members, bases) in classes.items():
        resolved[name] = members | {m for base in bases for m in classes.get(base, (set(), []))[0]}
    return resolved, functions


def test_the_one_batch_walk_through_names_only_code_that_exists() -> None:
    """docs/architecture.md's "One batch through the sidecar" cannot drift from the code: every
    `Class.method` it names is a method of a runtime class, every `function` (file.py) a
    top-level function of that file, and every file it names exists."""
    classes, functions = _runtime_definitions()
    section = (ROOT / "docs" / "architecture.md").read_text().split("## One batch through the sidecar")[1].split("\n## ")[0]
    methods = re.findall(r"`([A-Z]\w*)\.(\w+)`", section)
    calls = re.findall(r"`([a-z_]+)`\s+\(([\w/]+\.py)", section)
    files = set(re.findall(r"\b((?:[a-z_]+/)+[a-z_]+\.py)\b", section))
    assert len(methods) >= 15 and calls and files, "the walk-through's names were not found: has its format changed?"
    wrong = [f"{c}.{m}" for c, m in methods if m not in classes.get(c, set())]
    wrong += [f"{f} ({path})" for f, path in calls if f not in functions.get(path, set())]
    wrong += [path for path in sorted(files) if path not in functions and not (ROOT / path).exists()]
    assert not wrong, f"docs/architecture.md's one-batch walk-through names what does not exist: {wrong}"
