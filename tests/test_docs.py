"""The docs state what the code and the committed results say, not what someone typed: generated
parts are current (scripts/docs.py --check), every config key has help, and every result-like
number in prose comes from the results file (or generated table) its paragraph names."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import docs  # noqa: E402

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# docs/config.md is generated from the schema's docstrings (its numbers are defaults), and current by test.
PROSE_DOCS = [p for p in DOCS if p.name != "config.md"]
RESULTS = REPO / "bench" / "results"
# Where a paragraph's numbers come from: files under bench/results (globs, #field) or generated tables.
SOURCES = re.compile(r"<!-- numbers: (.+?) -->", flags=re.S)
# A score, ratio or fraction as prose reports one: 0.425, 0.95, 1.26 (settings and commands are in code spans)
RESULT_NUMBER = re.compile(r"(?<![\w.`/-])[01]\.\d{2,3}(?![\w.%])")
# A block scripts/docs.py generates (bench/tables.py's markers): <!-- KIND: ARG --> ... <!-- end KIND -->
GENERATED_BLOCK = re.compile(r"<!-- ([\w-]+): \S+ -->\n.*?<!-- end \1 -->", flags=re.S)


def test_generated_docs_and_results_tables_are_current() -> None:
    assert docs.main(["--check"]) == 0, "run `python scripts/docs.py`"


def test_every_config_key_has_help() -> None:
    _, missing = docs.config_doc()
    assert not missing, f"give these keys a docstring: {missing}"


def _without_code(text: str) -> str:
    """`text` without fenced code and code spans (commands and settings, not claims)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _paragraphs(text: str) -> list[str]:
    """The prose paragraphs of a doc: generated blocks and fenced code left out, HTML comments kept."""
    text = GENERATED_BLOCK.sub("", text)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def _values(obj) -> set[str]:
    """Every number under `obj`, as prose rounds it (2 and 3 decimals)."""
    if isinstance(obj, dict):
        return set().union(*(_values(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_values(v) for v in obj)) if obj else set()
    if isinstance(obj, float | int) and not isinstance(obj, bool):
        return {f"{obj:.2f}", f"{obj:.3f}"}
    return set()


def source_numbers(source: str) -> set[str]:
    """The numbers a paragraph's source holds: `<glob under bench/results>[#dotted.key]`, or
    `table KIND: ARG`, a generated block of the docs (numbers code derived from results files)."""
    if source.startswith("table "):
        kind, _, arg = source.removeprefix("table ").partition(": ")
        marker = re.compile(rf"<!-- {re.escape(kind)}: {re.escape(arg.strip())} -->\n.*?<!-- end {re.escape(kind)} -->",
                            flags=re.S)
        blocks = [m.group(0) for path in DOCS for m in marker.finditer(path.read_text())]
        assert blocks, f"no generated block `<!-- {kind}: {arg} -->` in the docs"
        return {n for block in blocks for n in RESULT_NUMBER.findall(block)}
    pattern, _, field = source.partition("#")
    files = sorted(RESULTS.glob(pattern.strip()))
    assert files, f"numbers cite {pattern.strip()!r}, which matches no file under bench/results"
    found: set[str] = set()
    for path in files:
        node = json.loads(path.read_text())
        for key in [k for k in field.strip().split(".") if k]:
            node = node[key]
        found |= _values(node)
    return found


def unbacked_numbers(text: str) -> list[str]:
    """Result-like numbers of prose paragraphs that no source named in the paragraph holds: each
    paragraph that states one says where its numbers come from, `<!-- numbers: SOURCE; SOURCE -->`."""
    problems = []
    for paragraph in _paragraphs(text):
        numbers = RESULT_NUMBER.findall(_without_code(re.sub(r"<!--.*?-->", "", paragraph, flags=re.S)))
        if not numbers:
            continue
        sources = [x.strip() for m in SOURCES.finditer(paragraph) for x in m.group(1).split(";") if x.strip()]
        if not sources:
            problems.append(f"{', '.join(numbers)} in a paragraph with no `<!-- numbers: ... -->` source: "
                            f"{paragraph.strip()[:80]!r}")
            continue
        held = set().union(*(source_numbers(x) for x in sources))
        problems += [f"{n} is in none of {sources}" for n in numbers if n not in held]
    return problems


def test_every_result_number_in_prose_comes_from_the_file_its_paragraph_names() -> None:
    unbacked = [f"{path.relative_to(REPO)}: {problem}" for path in PROSE_DOCS
                for problem in unbacked_numbers(path.read_text())]
    assert not unbacked, "\n".join(unbacked)


def test_a_number_is_checked_against_its_own_source_not_any_results_file(tmp_path) -> None:
    some = next(p for p in sorted(RESULTS.rglob("*.json")) if _values(json.loads(p.read_text())))
    cited = str(some.relative_to(RESULTS))
    held = sorted(n for n in source_numbers(cited) if RESULT_NUMBER.fullmatch(n))  # a number prose would cite
    assert unbacked_numbers(f"AA {held[0]} here. <!-- numbers: {cited} -->") == []
    assert unbacked_numbers(f"AA {held[0]} here.")  # no source named: refused
    elsewhere = next(n for p in sorted(RESULTS.rglob("*.json")) for n in sorted(_values(json.loads(p.read_text())))
                     if RESULT_NUMBER.fullmatch(n) and n not in held)
    assert unbacked_numbers(f"AA {elsewhere} here. <!-- numbers: {cited} -->")  # held by another file only
    assert unbacked_numbers(f"AA `{elsewhere}` here.") == []  # a setting in a code span is no claim


def test_the_readme_is_for_users_and_its_links_resolve() -> None:
    text = (REPO / "README.md").read_text()
    assert 150 <= len(text.splitlines()) <= 260
    for target in re.findall(r"\]\(((?!https?:|#)[^)#]+)", text):
        assert (REPO / target).exists(), f"README links to a missing file: {target}"
