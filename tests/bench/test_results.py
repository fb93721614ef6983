"""Every committed results file is data of one shape with its provenance (bench/runner.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.runner import RESULTS, check_result

FILES = sorted(RESULTS.rglob("*.json"))


def test_results_live_in_one_folder_per_bench_and_there_are_some() -> None:
    assert FILES, f"no results under {RESULTS}"
    assert all(p.parent.parent == RESULTS for p in FILES), [str(p) for p in FILES if p.parent.parent != RESULTS]
    assert not list(RESULTS.rglob("*.md")), "tables are rendered from the JSON (bench/tables.py), not committed"


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(RESULTS)) for p in FILES])
def test_a_results_file_has_the_schema_and_its_provenance(path: Path) -> None:
    assert check_result(json.loads(path.read_text())) == []


def test_the_check_refuses_a_file_without_provenance() -> None:
    assert check_result([{"AA": 0.5}])  # a bare list, as two old files were
    assert "run_info.commit is unknown" in check_result(
        {"schema": 1, "run_info": {"command": "x", "commit": None, "dirty": False, "date": "d"},
         "meta_info": {"versions": {}, "machine": {}}, "metrics": {}})
