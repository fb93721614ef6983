"""The rules every format shares (data_prep.common), on hand-made examples: exact duplicates and
conflicting repeats, a seeded split that is stable and disjoint, overlap removal, caps, atomic
JSONL, and the package's one-way dependency on the pipeline."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from data_prep.common import DataPrepError, Example, Source, convert, dedupe, drop_overlap, split, write_jsonl

REPO = Path(__file__).resolve().parents[2]


def ex(text: str, output: str = "A", instruction: str = "Classify.", where: str = "f record 0") -> Example:
    return Example(instruction, text, output, where)


def test_exact_duplicates_and_conflicting_repeats_are_counted_apart_and_the_first_is_kept() -> None:
    rows = [ex("one"), ex("two"), ex("one"), ex(" ONE  "), ex("one", "B"), ex("one", "B"), ex("three")]
    kept, duplicates, conflicts = dedupe(rows)
    assert [k.input for k in kept] == ["one", "two", "three"] and kept[0].output == "A"
    # "one"/A again twice (normalised: case and spaces), "one"/B once as a conflict, then again exactly
    assert (duplicates, conflicts) == (3, 1)


def test_the_seeded_split_is_disjoint_stable_and_moves_with_the_seed() -> None:
    pool = [ex(f"text {i}") for i in range(50)]
    train, test = split(pool, 0.2, seed=3)
    assert len(test) == 10 and len(train) == 40
    assert not {t.input for t in train} & {t.input for t in test}
    assert split(pool, 0.2, seed=3) == (train, test)
    assert split(pool, 0.2, seed=4)[1] != test
    with pytest.raises(DataPrepError, match="at least 2"):
        split(pool[:1], 0.2, 0)


def test_a_test_input_that_is_also_a_training_input_is_dropped() -> None:
    test, dropped = drop_overlap([ex("a"), ex("b")], [ex("A ", "B"), ex("c")])
    assert [t.input for t in test] == ["c"] and dropped == 1


def test_convert_counts_what_each_rule_did() -> None:
    train = [ex(f"t{i}") for i in range(8)] + [ex("t0"), ex("t1", "B")]
    test = [ex("t2"), ex("u1"), ex("u2"), ex("u2")]
    result = convert(Source("src", train, test, skipped={"empty output": 2}), max_test=1)
    c = result.counts
    assert (c.read, c.duplicates, c.conflicts, c.overlap, c.train, c.test) == (14, 2, 1, 1, 8, 1)
    assert "2 skipped (empty output)" in c.line() and "train 8, test 1" in c.line()
    assert result.test[0].input in ("u1", "u2")


def test_a_source_without_a_test_split_gets_one_and_capping_keeps_it_disjoint() -> None:
    result = convert(Source("src", [ex(f"t{i}") for i in range(40)]), test_ratio=0.25, seed=0, max_train=5)
    assert (result.counts.train, result.counts.test) == (5, 10)
    assert not {t.input for t in result.train} & {t.input for t in result.test}


def test_nothing_left_to_test_is_an_error_naming_the_source() -> None:
    with pytest.raises(DataPrepError, match="src: 1 training and 0 test"):
        convert(Source("src", [ex("a")], [ex("a")]))


def test_jsonl_is_written_whole_or_not_at_all(tmp_path, monkeypatch) -> None:
    path = tmp_path / "out" / "train.jsonl"
    write_jsonl(path, [Example("I", "x", "y", "w", references=("y", "z"), history='[{"role": "user", "content": '
                                                                               '"hi"}]')])
    assert json.loads(path.read_text()) == {"instruction": "I", "input": "x", "output": "y", "references": ["y", "z"],
                                            "history": [{"role": "user", "content": "hi"}]}

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr("data_prep.common.os.replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_jsonl(path, [ex("new")])
    assert json.loads(path.read_text())["input"] == "x"  # the old file, untouched
    assert [p.name for p in path.parent.iterdir()] == ["train.jsonl"]  # no temporary left behind


def test_data_prep_imports_nothing_from_the_pipeline() -> None:
    offenders = []
    for file in sorted((REPO / "data_prep").rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{file.relative_to(REPO)}:{node.lineno} imports {n}" for n in names
                          if n == "pipeline" or n.startswith("pipeline.")]
    assert not offenders, "data_prep must not import the pipeline (the pipeline calls data_prep): " + \
        "; ".join(offenders)


def test_the_wheel_ships_data_prep() -> None:
    import tomllib

    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert "data_prep*" in include["include"]
