"""The repository's shape: folders of bmtard/ that import one way, no import circle, small stage
scripts, and nothing tracked that points outside the repository."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "bmtard"
#: bmtard's folders, lowest first: each may import only itself and the folders before it
LAYERS = (
    "core",
    "config",
    "models",
    "data",
    "attacks",
    "runtime",
    "methods",
    "evaluation",
    "training",
    "experiments",
)
#: entry points: import anything, imported by nothing
ENTRY = ("bmtard/__main__.py",)
MAX_STAGE_LINES = 80
#: the workshop folder beside the checkout, which a clone elsewhere does not have (written in two
#: pieces so that this file does not name it)
SIBLING = b".." + b"/shared"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every bmtard module ``path`` imports, at any depth (inside functions and TYPE_CHECKING
    blocks too): ``from bmtard.x import y`` counts as bmtard.x.y where that is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "bmtard"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "bmtard":
                continue
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if _is_module(sub) else node.module)
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel.with_suffix(".py")).is_file() or (ROOT / rel / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    files = [p for p in PACKAGE.rglob("*.py") if str(p.relative_to(ROOT)) not in ENTRY]
    return {module_name(p): imports(p) - {module_name(p)} for p in files}


def folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_lies_in_a_folder_of_the_layers():
    loose = [m for m in graph() if folder(m) not in LAYERS and m != "bmtard"]
    assert not loose, f"modules outside the layered folders: {loose}"
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name in LAYERS) == sorted(
        LAYERS
    )


def test_folders_import_one_way_downward():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for module, targets in graph().items():
        for target in targets:
            if module == "bmtard" or target == "bmtard":
                continue
            if rank[folder(target)] > rank[folder(module)]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports from a lower folder into a higher one:\n" + "\n".join(upward)


def test_no_import_circle():
    g = graph()
    state: dict[str, int] = {}  # 1 = on the path, 2 = done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(g.get(m, ())):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(t) :] + [t]))
            if t in g and state.get(t) is None:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_stage_scripts_stay_small():
    big = {
        p.name: n
        for p in (ROOT / "stages").glob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_STAGE_LINES
    }
    assert not big, f"stage scripts over {MAX_STAGE_LINES} lines (logic belongs in bmtard/): {big}"


def test_nothing_tracked_points_outside_the_repository():
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    outside = []
    for name in filter(None, tracked):
        path = ROOT / name.decode()
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        text = path.read_bytes()
        if SIBLING in text:
            outside.append(name.decode())
    assert not outside, f"tracked files naming a folder outside the repository: {outside}"


def test_the_layout_page_lists_every_module_once():
    """docs/layout.md's package block: one line per module of bmtard/ (its folder's files under
    the folder's line), each there, none that is not."""
    text = (ROOT / "docs" / "layout.md").read_text()
    block = text[text.index("```\nbmtard/\n") :]
    block = block[: block.index("```", 4)]
    listed, folder = set(), None
    for line in block.splitlines()[2:]:
        name = line.split()[0] if line.strip() else ""
        if line.startswith("  ") and not line.startswith("    ") and name.endswith("/"):
            folder = name.rstrip("/")
        elif name.endswith(".py"):
            listed.add(f"{folder}/{name}" if line.startswith("    ") else name)
    actual = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert listed == actual, (sorted(actual - listed), sorted(listed - actual))
