"""Rewrite the README's results tables from the committed results files (no number typed by hand).

    python bench/readme_tables.py            # rewrite every marked block in README.md
    python bench/readme_tables.py --check    # exit 1 if a block is stale (tests/test_readme.py does the same)

A block is marked in README.md as

    <!-- cl-results: EXP -->          ... <!-- end cl-results -->          bench/cl_methods.py's table of EXP
    <!-- retrieval-results: NAME -->  ... <!-- end retrieval-results -->   bench/retrieval.py's table of NAME
    <!-- lr-sweep: NAME -->           ... <!-- end lr-sweep -->            bench/lr_sweep.py's table of NAME

and holds exactly what those scripts write next to their JSON (cl-EXP.md, retrieval-NAME.md,
lr_sweep-NAME.md).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.provenance import ROOT  # noqa: E402

README = ROOT / "README.md"
RESULTS = ROOT / "bench" / "results"


def cl_table(experiment: str) -> str:
    from bench.cl_methods import comparison_markdown, load_results

    rows = load_results(RESULTS, experiment)
    if not rows:
        raise SystemExit(f"README shows results of {experiment!r}, but {RESULTS} has no cl-{experiment}-*.json")
    return comparison_markdown(rows)


def retrieval_table(name: str) -> str:
    from bench.retrieval import markdown

    return markdown(json.loads((RESULTS / f"retrieval-{name}.json").read_text()))


def lr_sweep_table(name: str) -> str:
    from bench.lr_sweep import markdown

    source = RESULTS / f"lr_sweep-{name}.json"
    return markdown(json.loads(source.read_text()), source)


KINDS: dict[str, Callable[[str], str]] = {"cl-results": cl_table, "retrieval-results": retrieval_table,
                                          "lr-sweep": lr_sweep_table}


def blocks(text: str) -> list[tuple[str, str, str, tuple[int, int]]]:
    """(kind, name, current content, span of the content) of every marked block."""
    out = []
    for kind in KINDS:
        pattern = rf"<!-- {kind}: (\S+) -->\n(.*?)<!-- end {kind} -->"
        out += [(kind, m.group(1), m.group(2), m.span(2)) for m in re.finditer(pattern, text, flags=re.S)]
    return out


def rendered(text: str) -> str:
    """`text` with every block replaced by its table from the results files."""
    for kind, name, _, (start, end) in sorted(blocks(text), key=lambda b: -b[3][0]):
        text = text[:start] + KINDS[kind](name).strip() + "\n" + text[end:]
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only report stale blocks (exit 1)")
    args = p.parse_args(argv)
    text = README.read_text()
    new = rendered(text)
    if args.check:
        stale = [f"{k}: {n}" for k, n, content, _ in blocks(text) if content.strip() != KINDS[k](n).strip()]
        print("stale: " + ", ".join(stale) if stale else "README tables are current")
        return 1 if stale else 0
    if new != text:
        README.write_text(new)
    print(f"{len(blocks(text))} README table(s) from {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
