"""The drawing of pipeline/: rooms, the floors they stand on, and every import that goes up or round.

    python scripts/draw_layers.py            # the drawing and its counts
    python scripts/draw_layers.py --check    # exit 1 on an import loop or an upward import

A room is a package under pipeline/ (state, dtkr, methods, ...) or a module at its top (config,
cli, ...). An import is an edge between rooms; imports under `if TYPE_CHECKING:` are type hints,
not dependencies, and are left out. LAYERS below is the intended architecture, bottom floor
first: an edge to a room on a higher floor is an upward import. A loop is a cycle of rooms
(tests/test_layers.py keeps both at zero).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"

# Bottom floor first. Rooms on one floor may not import each other in a loop.
LAYERS: list[list[str]] = [
    ["errors", "spec", "encoder_config", "deepspeed_ops"],
    ["config"],
    ["distributed", "metrics", "prompts"],
    ["state"],
    ["runtime", "data", "jare"],
    ["dtkr", "peft_export", "tracking"],
    ["planning"],  # knows no method: a method hands the plan its own load
    ["methods"],
    ["experiment", "report", "preflight", "slurm", "error_report"],
    ["serve"],
    ["stages"],
    ["cli"],
]


def room_of(module: str) -> str | None:
    """`pipeline.state.layout` -> `state`; `pipeline.cli` -> `cli`; outside pipeline -> None."""
    parts = module.split(".")
    if parts[0] != "pipeline" or len(parts) < 2:
        return None
    return parts[1]


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _absolute(module: str | None, level: int, package: str) -> str:
    """`from ..x import y` inside `package` -> the absolute module name (level 0: as written)."""
    if level == 0:
        return module or ""
    base = package.split(".")[: len(package.split(".")) - (level - 1)]
    return ".".join([*base, *([module] if module else [])])


def imports(path: Path, package: str = "") -> set[str]:
    """Modules `path` imports at run time (anywhere in the file, function bodies included).
    Relative imports are resolved against `package`, the package the file lives in."""
    tree = ast.parse(path.read_text())
    hints = _type_checking_lines(tree)
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in hints:
            continue
        if isinstance(node, ast.ImportFrom):
            module = _absolute(node.module, node.level, package)
            if module:
                found.add(module)
            found.update(f"{module}.{a.name}" if module else a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def package_of(name: str, path: Path) -> str:
    """The package a module's relative imports start from: itself for an __init__.py."""
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def edges() -> dict[tuple[str, str], list[str]]:
    """(from room, to room) -> the module imports that make the edge."""
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    known = modules()
    for name, path in known.items():
        a = room_of(name)
        for target in imports(path, package_of(name, path)):
            if target not in known:
                continue
            b = room_of(target)
            if a and b and a != b:
                out[(a, b)].append(f"{name} -> {target}")
    return out


def floors() -> dict[str, int]:
    return {room: i for i, layer in enumerate(LAYERS) for room in layer}


def loops(graph: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one room (Tarjan)."""
    succ: dict[str, set[str]] = defaultdict(set)
    for a, b in graph:
        succ[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted({x for edge in graph for x in edge}):
        if v not in index:
            visit(v)
    return out


def report() -> dict:
    graph = edges()
    floor = floors()
    rooms = sorted({x for edge in graph for x in edge} | {room_of(m) for m in modules() if room_of(m)})
    unplaced = [r for r in rooms if r not in floor]
    upward = {edge: why for edge, why in graph.items()
              if edge[0] in floor and edge[1] in floor and floor[edge[1]] > floor[edge[0]]}
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    largest = max(sizes, key=sizes.get)
    return {"rooms": rooms, "floors": len(LAYERS), "unplaced": unplaced, "upward": upward, "loops": loops(graph),
            "edges": graph, "largest": (largest, sizes[largest])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 on a loop, an upward import or an unplaced room")
    args = p.parse_args(argv)
    r = report()
    floor = floors()
    for i, layer in reversed(list(enumerate(LAYERS))):
        below = {b for (a, b) in r["edges"] if a in layer}
        print(f"floor {i}: {', '.join(layer)}" + (f"   (uses: {', '.join(sorted(below))})" if below else ""))
    print(f"\n{len(r['rooms'])} rooms on {r['floors']} floors; {len(r['upward'])} upward imports; "
          f"{len(r['loops'])} loops; largest module: {r['largest'][0]} ({r['largest'][1]} lines)")
    for (a, b), why in sorted(r["upward"].items()):
        print(f"upward: {a} (floor {floor[a]}) -> {b} (floor {floor[b]}): {why[0]}")
    for group in r["loops"]:
        print(f"loop: {' <-> '.join(group)}")
    for room in r["unplaced"]:
        print(f"unplaced room: {room} (add it to LAYERS)")
    bad = r["upward"] or r["loops"] or r["unplaced"]
    return 1 if args.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
