"""The layers of docs/DESIGN.md §1, read from every import statement (function-level ones included).

core (clara/) and kernels < stages (pretrain, joint, rl) < eval < demo. A module imports only its own
layer or those below; stages never import one another (the core and the kernels may: the bank
searches with the kernels, which raise the core's errors); no two files import each other, however
indirectly. Run as a script for the figures: ``python tests/test_architecture.py``.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {"clara": "clara", "kernels": "clara.kernels", "pretrain": "clara.pretrain", "joint": "clara.joint",
           "rl": "clara.rl", "eval": "clara.eval", "demo": "clara.demo"}
LAYER = {"core": 0, "kernels": 0, "pretrain": 1, "joint": 1, "rl": 1, "eval": 2, "demo": 3}
STAGES = {"pretrain", "joint", "rl"}


def modules(repo: Path = REPO) -> dict[str, Path]:
    """Every module of the package by its import name."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in (repo / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(repo / folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def part(module: str) -> str:
    """core, kernels, a stage, eval or demo."""
    second = module.split(".")[1] if "." in module else ""
    return second if second in LAYER and second != "core" else "core"


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules that ``name`` imports anywhere in its file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(repo: Path = REPO) -> dict[str, set[str]]:
    known = modules(repo)
    return {name: imports(name, path, known) for name, path in known.items()}


def upward_edges(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports of a higher layer, and imports between two different stages."""
    bad = []
    for a, targets in graph.items():
        for b in targets:
            pa, pb = part(a), part(b)
            if LAYER[pb] > LAYER[pa] or (pa != pb and {pa, pb} <= STAGES):
                bad.append((a, b))
    return sorted(bad)


def import_loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one file (Tarjan, iterative)."""
    index, low, on_stack, stack, loops, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    loops.append(sorted(component))
    return sorted(loops, key=len, reverse=True)


def test_the_layers_hold():
    bad = upward_edges(import_graph())
    assert not bad, "imports against the layers of docs/DESIGN.md §1:\n" + "\n".join(f"{a} -> {b}" for a, b in bad)


def test_no_import_loops_between_files():
    loops = import_loops(import_graph())
    assert not loops, "files that import each other:\n" + "\n".join(" <-> ".join(c) for c in loops)


def test_the_checks_catch_what_they_forbid(tmp_path):
    # a tree with a core module importing a stage, two stages importing each other and a loop
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
    (tmp_path / "clara" / "a.py").write_text("def f():\n    from clara.joint import objective\n")
    (tmp_path / "joint" / "objective.py").write_text("from clara.pretrain.scp import ask\nimport clara.a\n")
    (tmp_path / "pretrain" / "scp.py").write_text("from . import other\n")
    (tmp_path / "pretrain" / "other.py").write_text("from .scp import ask\n")
    graph = import_graph(tmp_path)
    assert upward_edges(graph) == [("clara.a", "clara.joint.objective"), ("clara.joint.objective", "clara.pretrain.scp")]
    assert sorted(import_loops(graph)) == [["clara.a", "clara.joint.objective"], ["clara.pretrain.other", "clara.pretrain.scp"]]


if __name__ == "__main__":
    graph = import_graph(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO)
    loops, bad = import_loops(graph), upward_edges(graph)
    by_kind = defaultdict(int)
    for a, b in bad:
        by_kind["core -> above" if part(a) == "core" else "stage/eval -> across or above"] += 1
    print(f"modules {len(graph)}, import edges {sum(map(len, graph.values()))}")
    print(f"edges against the layers: {len(bad)} {dict(by_kind)}")
    print(f"import loops: {len(loops)}; largest: {max(map(len, loops), default=0)} files")
    for a, b in bad:
        print(f"  {a} -> {b}")
    for component in loops:
        print("  loop:", ", ".join(component))
