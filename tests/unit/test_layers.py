"""Imports point down the layers and close no cycle, at module level or inside a function.

An import inside a function is still an edge: it runs when a pod calls that function, so a cycle kept
alive only by an import's position breaks at start-up once someone moves the import. The layers are the
README's (Layout): L0 schema, paths, images, templates · L1 data, models · L2 train, optimize, eval,
features, apps · L3 tracking, serving, kube · L4 config, stages, pipeline_runs, cli, demo, console · L5 components ·
L6 pipelines. A module may import its own layer or a lower one, never a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

ROOTS = {"shipyard": REPO / "platform" / "shipyard", "shipyard.components": REPO / "components",
         "shipyard.pipelines": REPO / "pipelines"}
LAYERS = [
    ["shipyard", "shipyard.schema", "shipyard.paths", "shipyard.images", "shipyard.templates"],
    ["shipyard.data", "shipyard.models"],
    ["shipyard.train", "shipyard.optimize", "shipyard.eval", "shipyard.features", "shipyard.apps"],
    ["shipyard.tracking", "shipyard.serving", "shipyard.kube"],
    ["shipyard.config", "shipyard.stages", "shipyard.pipeline_runs", "shipyard.cli", "shipyard.demo",
     "shipyard.console"],
    ["shipyard.components"],
    ["shipyard.pipelines"],
]


def modules() -> dict[str, Path]:
    found = {}
    for root, folder in ROOTS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([root, *parts])] = path
    return found


def layer_of(module: str) -> int:
    best = max((p for group in LAYERS for p in group if module == p or module.startswith(p + ".")), key=len,
               default=None)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS here and to the README's Layout")
    return next(i for i, group in enumerate(LAYERS) if best in group)


def edges(sources: dict[str, str], known: set[str]) -> list[tuple[str, str, int]]:
    """(importer, imported module, line) for every shipyard import, wherever it stands in the file."""
    out = []
    for name, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [[f"{node.module}.{a.name}", node.module] for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [[a.name] for a in node.names]
            else:
                continue
            for candidates in targets:
                target = next((t for t in candidates if t in known), None)
                if target and target != name:
                    out.append((name, target, node.lineno))
    return sorted(set(out))


def problems(sources: dict[str, str], files: dict[str, Path]) -> list[str]:
    """Every upward import and every cycle, each naming both files and the line of each import."""
    where = lambda m: files[m].relative_to(REPO).as_posix()
    found = edges(sources, set(sources))
    out = [f"{where(a)}:{line} imports {where(b)}: layer L{layer_of(a)} -> L{layer_of(b)} goes up"
           for a, b, line in found if layer_of(b) > layer_of(a)]
    graph: dict[str, list[tuple[str, int]]] = {}
    for a, b, line in found:
        graph.setdefault(a, []).append((b, line))
    seen_cycles = set()
    for start in sorted(graph):
        for cycle in _cycles_from(start, graph):
            key = frozenset(m for m, _ in cycle)
            if key not in seen_cycles:
                seen_cycles.add(key)
                out.append("import cycle: " + " -> ".join(f"{where(m)}:{line}" for m, line in cycle)
                           + f" -> {where(cycle[0][0])}")
    return out


def _cycles_from(start: str, graph: dict) -> list[list[tuple[str, int]]]:
    """The shortest path from ``start`` back to itself, if any (breadth first)."""
    queue, parent = [start], {start: None}
    while queue:
        node = queue.pop(0)
        for nxt, line in graph.get(node, []):
            if nxt == start:
                path, cur = [(node, line)], node
                while parent[cur] is not None:
                    cur, ln = parent[cur]
                    path.insert(0, (cur, ln))
                return [path]
            if nxt not in parent:
                parent[nxt] = (node, line)
                queue.append(nxt)
    return []


def _sources() -> tuple[dict[str, str], dict[str, Path]]:
    files = modules()
    return {m: p.read_text(encoding="utf-8") for m, p in files.items()}, files


def test_imports_point_down_and_close_no_cycle():
    sources, files = _sources()
    found = problems(sources, files)
    assert not found, "\n".join(found)


# The five cycles this test was written against, each by the import that closed it: put any of them back
# (at the top of the file or inside a function) and the test above fails, naming both files.
HISTORICAL = [
    ("shipyard.models.causal_lm", "from shipyard.optimize.quantize import load_quantized"),
    ("shipyard.eval.evaluate_config", "from shipyard.config import PipelineConfig"),
    ("shipyard.tracking.tags", "from shipyard.tracking.registry import promote"),
    ("shipyard.eval.result", "from shipyard.eval.rag_suite import run_rag_suite"),
    ("shipyard.pipeline_runs", "from shipyard.demo import run_demo"),
]


@pytest.mark.parametrize(("module", "line"), HISTORICAL)
def test_each_old_cycle_would_fail(module, line):
    sources, files = _sources()
    sources[module] += f"\n\ndef _back_edge():\n    {line}\n"
    found = problems(sources, files)
    target = files[line.split()[1]].relative_to(REPO).as_posix()
    assert any(target in p and files[module].relative_to(REPO).as_posix() in p for p in found), found


def test_every_module_has_a_layer():
    for module in modules():
        layer_of(module)
