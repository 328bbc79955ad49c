"""Every relative link in the README and docs/ leads somewhere: the file exists and, for a
link with #anchor, a heading of that file makes the anchor the way GitHub does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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
