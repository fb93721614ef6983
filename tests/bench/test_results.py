"""Every committed results file is data of one shape with its provenance (bench/runner.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.runner import RESULTS, check_committed, check_result, read_result, write_result

FILES = sorted(RESULTS.rglob("*.json"))
# Recorded before results had to carry their code fingerprint and config hash, or from a dirty tree:
# each is re-recorded by its bench on the final code of this round, and leaves this list then. The
# list may only shrink (a test below fails on an entry that no longer lacks anything).
NOT_YET_RERECORDED = {
    "lr_sweep/cl_benchmark_cpu-order1.json",
    "plasticity/cl_benchmark_cpu-order1.json", "plasticity/cl_benchmark_cpu_unrelated-order1.json",
    "retrieval/ablation-mpnet.json", "retrieval/cl_benchmark-mpnet.json",
}


def test_results_live_in_one_folder_per_bench_and_there_are_some() -> None:
    assert FILES, f"no results under {RESULTS}"
    assert all(p.parent.parent == RESULTS for p in FILES), [str(p) for p in FILES if p.parent.parent != RESULTS]
    assert not list(RESULTS.rglob("*.md")), "tables are rendered from the JSON (bench/tables.py), not committed"


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(RESULTS)) for p in FILES])
def test_a_results_file_has_the_schema_and_its_provenance(path: Path) -> None:
    problems = check_committed(read_result(path))
    if str(path.relative_to(RESULTS)) in NOT_YET_RERECORDED:
        assert problems, f"{path} now has its provenance: remove it from NOT_YET_RERECORDED"
        return
    assert problems == []


def test_the_check_refuses_a_file_without_provenance() -> None:
    assert check_result([{"AA": 0.5}])  # a bare list, as two old files were
    full = {"command": "x", "commit": "abc", "dirty": False, "date": "d", "code_fingerprint": "f", "config_sha256": "c"}
    record = {"schema": 1, "run_info": full, "meta_info": {"versions": {}, "machine": {}}, "metrics": {}}
    assert check_result(record) == []
    for key, value, problem in (("commit", None, "run_info.commit is unknown"),
                                ("code_fingerprint", None, "run_info has no code_fingerprint"),
                                ("config_sha256", None, "run_info has no config hash"),
                                ("dirty", True, "run_info.dirty is True")):
        broken = {**record, "run_info": {**full, key: value}}
        assert any(p.startswith(problem) for p in check_committed(broken)), (key, check_committed(broken))
    assert check_result({**record, "run_info": {**full, "dirty": True}}) == []  # a trial run may write it


def test_a_results_file_that_is_not_one_fails_with_its_path(tmp_path) -> None:
    written = write_result("tinybench", "ok", {"metrics": {"AA": 0.5}}, results=tmp_path,
                           run={"command": "x", "commit": "abc", "dirty": False, "date": "d",
                                "code_fingerprint": "f", "config_sha256": "c"},
                           meta={"versions": {}, "machine": {}})
    assert read_result(written)["metrics"] == {"AA": 0.5}
    cut = tmp_path / "cut.json"
    cut.write_text(written.read_text()[:40])  # a copy interrupted half-way
    with pytest.raises(ValueError, match=r"cut\.json: not a results file: .*line \d+"):
        read_result(cut)
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"AA": 0.5}]))
    with pytest.raises(ValueError, match=r"list\.json: not a results file: a list, not a mapping"):
        read_result(listed)


def test_a_tree_is_dirty_when_code_changed_or_a_code_file_is_not_committed(tmp_path, monkeypatch) -> None:
    import subprocess

    from bench import runner

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "a.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "c")
    monkeypatch.setattr(runner, "ROOT", tmp_path)
    assert runner.run_info()["dirty"] is False
    (tmp_path / "bench" / "results" / "new.json").write_text("{}")  # results are data, not code
    (tmp_path / "notes.txt").write_text("outside the code folders")
    assert runner.run_info()["dirty"] is False
    (tmp_path / "bench" / "new_bench.py").write_text("y = 2\n")  # a bench not yet committed
    assert runner.run_info()["dirty"] is True
    (tmp_path / "bench" / "new_bench.py").unlink()
    (tmp_path / "bench" / "a.py").write_text("x = 2\n")
    assert runner.run_info()["dirty"] is True
