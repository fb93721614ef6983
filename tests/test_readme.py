"""The README states what the code and the committed results say, not what someone typed."""

from __future__ import annotations

from pathlib import Path

from pipeline.methods import METHOD_NAMES, get_method

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_methods_table_is_the_registry() -> None:
    text = README.read_text()
    start = text.index("<!-- methods table")
    rows = [line for line in text[start:].splitlines()[1:] if line.startswith("| `")]
    rows = rows[:len(METHOD_NAMES) + 1]
    want = [f"| `{n}` | {get_method(n).role} | {get_method(n).trains} | {get_method(n).infers} |" for n in METHOD_NAMES]
    assert rows[1:] == want  # rows[0] is the header


def test_every_results_table_in_the_readme_is_the_committed_results_files() -> None:
    """Each marked block (bench/readme_tables.py) holds exactly what the benchmark scripts write
    from bench/results/: AA, forgetting, retrieval... in the README were not typed by hand."""
    from bench.readme_tables import KINDS, blocks

    found = blocks(README.read_text())
    assert {kind for kind, *_ in found} == set(KINDS), "the README lacks a method or a retrieval results table"
    for kind, name, content, _ in found:
        assert content.strip() == KINDS[kind](name).strip(), \
            f"README {kind} {name!r} is stale: run `python bench/readme_tables.py`"
