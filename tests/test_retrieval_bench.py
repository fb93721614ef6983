"""bench/retrieval.py end to end on a small slice of two real same-family tasks (CI's tiny version
of the benchmark; the real one is `python bench/retrieval.py`, minutes, not a test)."""

from __future__ import annotations

import json
import re

from bench import retrieval


def test_the_bench_reports_dtkr_and_the_baselines_per_task_and_its_last_line(cl_benchmark_dir, tmp_path,
                                                                             monkeypatch, capsys):
    monkeypatch.setenv("SLM_CACHE", str(tmp_path / "cache"))  # cold: the embeddings are computed here
    out = tmp_path / "r.json"
    result = retrieval.main(["--tasks", "agnews,dbpedia", "--max-train", "120", "--max-test", "60",
                             "--knn-per-task", "50", "--data-root", str(cl_benchmark_dir), "--json", str(out)])

    saved = json.loads(out.read_text())
    rows = saved["sequences"]["agnews_dbpedia"]["rows"]
    assert [r["task"] for r in rows] == ["agnews", "dbpedia"]
    assert all(r["n_test"] + r["test_dropped"] == 60 for r in rows)
    for r in rows:
        assert r["margin"] == r["dtkr"] - r["centroid"]
        assert r["dtkr"] >= 0.9  # news vs encyclopedia titles: learned keys separate them
    assert saved["retrieval_min_margin"] == min(r["margin"] for r in rows) == result["retrieval_min_margin"]
    assert saved["same_family_min_mean"] is None  # a --tasks sequence is not one of the named families
    info = saved["run_info"]
    assert info["embedding_cache"] == {"hits": 0, "misses": 4} and info["config_hash"]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"retrieval_min_margin=-?\d\.\d{3} same_family_min_mean=n/a", last)

    # a second run reads every embedding from the cache and gives the same numbers
    again = retrieval.main(["--tasks", "agnews,dbpedia", "--max-train", "120", "--max-test", "60",
                            "--knn-per-task", "50", "--data-root", str(cl_benchmark_dir), "--json", str(out)])
    assert again["run_info"]["embedding_cache"] == {"hits": 4, "misses": 0}
    assert again["sequences"]["agnews_dbpedia"]["rows"] == rows
