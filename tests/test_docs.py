"""The docs state what the code and the committed results say, not what someone typed: generated
parts are current (scripts/docs.py --check), every config key has help, and every result-like
number in prose is one of the committed results."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import docs  # noqa: E402

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# A score, ratio or fraction as prose reports one: 0.425, 0.95, 1.26 (settings and commands are in code spans)
RESULT_NUMBER = re.compile(r"(?<![\w.`/-])[01]\.\d{2,3}(?![\w.%])")
# A block scripts/docs.py generates (bench/tables.py's markers): <!-- KIND: ARG --> ... <!-- end KIND -->
GENERATED_BLOCK = re.compile(r"<!-- ([\w-]+): \S+ -->\n.*?<!-- end \1 -->", flags=re.S)


def test_generated_docs_and_results_tables_are_current() -> None:
    assert docs.main(["--check"]) == 0, "run `python scripts/docs.py`"


def test_every_config_key_has_help() -> None:
    _, missing = docs.config_doc()
    assert not missing, f"give these keys a docstring: {missing}"


def _prose(text: str) -> str:
    """`text` without generated blocks, fenced code and code spans."""
    text = GENERATED_BLOCK.sub("", text)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _recorded_numbers() -> set[str]:
    """Every number of every committed results file, as prose rounds it (2 and 3 decimals)."""
    found: set[str] = set()

    def walk(obj) -> None:
        if isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)
        elif isinstance(obj, float | int) and not isinstance(obj, bool):
            found.update({f"{obj:.2f}", f"{obj:.3f}"})

    for path in (REPO / "bench" / "results").rglob("*.json"):
        walk(json.loads(path.read_text()))
    return found


def _tabled_numbers() -> set[str]:
    """Every number of the generated tables in the docs (derived from the results files by code,
    e.g. a mean diagonal of the matrices)."""
    blocks = [m.group(0) for path in DOCS for m in GENERATED_BLOCK.finditer(path.read_text())]
    return {n for block in blocks for n in RESULT_NUMBER.findall(block)}


def test_every_result_number_in_prose_comes_from_a_results_file() -> None:
    recorded = _recorded_numbers() | _tabled_numbers()
    unbacked = [f"{path.relative_to(REPO)}: {n}" for path in DOCS
                for n in RESULT_NUMBER.findall(_prose(path.read_text())) if n not in recorded]
    assert not unbacked, f"numbers no results file holds (put them in a generated table or cite a file): {unbacked}"


def test_the_readme_is_for_users_and_its_links_resolve() -> None:
    text = (REPO / "README.md").read_text()
    assert 150 <= len(text.splitlines()) <= 260
    for target in re.findall(r"\]\(((?!https?:|#)[^)#]+)", text):
        assert (REPO / target).exists(), f"README links to a missing file: {target}"
