"""Imports go one way: each layer may import only the layers below it, and no module imports itself back.

Every import counts, function-local ones included (a lazy import hides a cycle, it does not
remove it). Layers, lowest first; the groups of one layer (training and preference) must not
import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

from cme_vlm.config_files import REPO_ROOT

LAYERS: tuple[tuple[str, ...], ...] = (
    ("cme_vlm",),  # the package's own foundation: errors, schema, atomic, config, anatomy, layout, tracking
    ("cme_vlm.data",),
    ("cme_vlm.review_server",),
    ("cme_vlm.review_sheet",),
    ("cme_vlm.teacher",),
    ("cme_vlm.scoring",),
    ("cme_vlm.models",),
    ("cme_vlm.callbacks",),
    ("cme_vlm.training", "cme_vlm.preference"),
    ("cme_vlm.evaluation",),
    ("cme_vlm.bench", "cme_vlm.inference"),
    ("cme_vlm.stages",),
    ("cme_vlm.workload", "cme_vlm.comparison"),
    ("cme_vlm.planning",),
    ("cme_vlm.pipeline",),
    ("cme_vlm.cli",),
)
FOUNDATION = {"cme_vlm", "cme_vlm.errors", "cme_vlm.schema", "cme_vlm.atomic", "cme_vlm.config", "cme_vlm.config_files",
              "cme_vlm.anatomy", "cme_vlm.families",
              "cme_vlm.layout", "cme_vlm.tracking", "cme_vlm.console", "cme_vlm.threads",
              "cme_vlm.cli_help"}
LAYER_GROUPS = [name for layer in LAYERS for name in layer]


def modules() -> dict[str, Path]:
    """Module name -> file, for the package and the repository's ``callbacks/`` (installed as ``cme_vlm.callbacks``)."""
    found = {}
    for path in [*REPO_ROOT.glob("cme_vlm/**/*.py"), *REPO_ROOT.glob("callbacks/**/*.py")]:
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        parts = ("cme_vlm", *parts) if parts[0] == "callbacks" else parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports anywhere in its body."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in known else node.module)
    return {m for m in out if m in known}


def group(module: str) -> str:
    """The layer group a module belongs to (foundation modules are the group ``cme_vlm``)."""
    if module in FOUNDATION:
        return "cme_vlm"
    matches = [g for g in LAYER_GROUPS if g != "cme_vlm" and (module == g or module.startswith(g + "."))]
    assert matches, f"module '{module}' belongs to no layer: add it to LAYERS or FOUNDATION in {__file__}"
    return max(matches, key=len)


def rank(module: str) -> int:
    g = group(module)
    return next(i for i, layer in enumerate(LAYERS) if g in layer)


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def test_every_import_points_to_a_lower_layer_or_within_its_group():
    wrong = [
        f"{a} ({group(a)}) imports {b} ({group(b)})"
        for a, targets in graph().items()
        for b in targets
        if group(a) != group(b) and rank(b) >= rank(a)
    ]
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_layer_test_sees_the_lazy_imports():
    edges = graph()
    assert "cme_vlm.training.sft_stage" in edges["cme_vlm.stages"]  # imported inside a loader function
    assert "cme_vlm.pipeline" in edges["cme_vlm.cli"]
