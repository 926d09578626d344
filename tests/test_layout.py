"""The layout holds: every import runs down the layers below, `embeddings/` imports nothing from
`knowledge/`, no module passes 400 lines, and the README's layout section names every folder.

Read from the source (imports inside functions count too), so a shortcut taken anywhere fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Bottom first: a unit may import only from units listed before it. A unit is a package folder of
# `knowledge/`, a module at the top of `knowledge/`, or `embeddings` as a whole.
LAYERS = [
    "embeddings",  # the models and their runtimes
    "knowledge",  # the package itself: its version
    "knowledge.errors",
    "knowledge.health",
    "knowledge.lsn",
    "knowledge.answers",  # what agent operations answer: the server and the client share it
    "knowledge.config",
    "knowledge.client",  # the typed HTTP client: errors and WAL positions only
    "knowledge.db",
    "knowledge.ingest",
    "knowledge.store",
    "knowledge.search",
    "knowledge.agents",
    "knowledge.api",
    "knowledge.cli",
    "knowledge.__main__",
]
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for top in ("knowledge", "embeddings"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _unit(module: str) -> str:
    """`embeddings`, `knowledge` itself, or the folder or top module of `knowledge` holding `module`."""
    parts = module.split(".")
    return "embeddings" if parts[0] == "embeddings" else ".".join(parts[:2])


def _imported(module: str, path: Path) -> set[str]:
    """The project modules `module` imports, by their full names."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    found = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


def _violations() -> list[str]:
    rank = {unit: i for i, unit in enumerate(LAYERS)}
    wrong = []
    for module, path in MODULES.items():
        for target in _imported(module, path):
            here, there = _unit(module), _unit(target)
            if here != there and rank[there] >= rank[here]:
                wrong.append(f"{module} imports {target}: {here} sits below {there}")
    return sorted(wrong)


def test_every_unit_has_a_layer() -> None:
    assert {_unit(m) for m in MODULES} <= set(LAYERS), "a new package or top module needs its place in LAYERS"


def test_imports_run_downward() -> None:
    assert _violations() == []


def test_embeddings_import_nothing_from_knowledge() -> None:
    leaks = [
        f"{m} imports {t}"
        for m in MODULES
        if m.startswith("embeddings")
        for t in _imported(m, MODULES[m])
        if t.startswith("knowledge")
    ]
    assert leaks == []


def test_no_module_over_400_lines() -> None:
    sizes = {m: len(path.read_text(encoding="utf-8").splitlines()) for m, path in MODULES.items()}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


def test_readme_layout_names_every_folder() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    folders = {path.relative_to(ROOT).parts[1] for path in MODULES.values() if path.parent.parent.name == "knowledge"}
    missing = sorted(f for f in folders if not re.search(rf"^ +{f}/ ", section, re.MULTILINE))
    assert missing == [], f"the README's layout section does not name {missing}"


def test_the_check_sees_a_wrong_import(tmp_path: Path) -> None:
    """The scan itself: an upward import written into a module's source is found."""
    path = tmp_path / "model.py"
    path.write_text("from knowledge.search import run\n", encoding="utf-8")
    assert "knowledge.search.run" in _imported("embeddings.model", path)
