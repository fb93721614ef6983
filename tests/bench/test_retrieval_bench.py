"""bench/retrieval.py end to end on a small slice of two real same-family tasks (CI's tiny version
of the benchmark; the real one is `python bench/retrieval.py`, minutes, not a test)."""

from __future__ import annotations

import json
import re

import yaml

from bench import retrieval
from bench.runner import check_result


def test_the_bench_reports_dtkr_and_the_baselines_per_task_and_its_last_line(cl_benchmark_dir, tmp_path,
                                                                             monkeypatch, capsys):
    monkeypatch.setenv("SLM_CACHE", str(tmp_path / "cache"))  # cold: the embeddings are computed here
    shipped = retrieval.load_settings("cl_benchmark").model_dump(exclude={"name"})
    experiment = tmp_path / "two.yaml"
    experiment.write_text(yaml.safe_dump({**shipped, "data_root": str(cl_benchmark_dir),
                                          "sequences": {"agnews_dbpedia": ["agnews", "dbpedia"]},
                                          "max_train": 120, "max_test": 60, "knn_per_task": 50, "seeds": []}))
    argv = [str(experiment), "--results-dir", str(tmp_path / "results")]
    result = retrieval.main(argv)

    saved = json.loads((tmp_path / "results" / "retrieval" / "two.json").read_text())
    assert check_result(saved) == []
    rows = saved["sequences"]["agnews_dbpedia"]["rows"]
    assert [r["task"] for r in rows] == ["agnews", "dbpedia"]
    assert all(r["n_test"] + r["test_dropped"] == 60 for r in rows)
    for r in rows:
        assert r["margin"] == r["dtkr"] - r["centroid"]
        assert r["dtkr"] >= 0.9  # news vs encyclopedia titles: learned keys separate them
    assert saved["retrieval_min_margin"] == min(r["margin"] for r in rows) == result["retrieval_min_margin"]
    assert saved["same_family_min_mean"] is None  # this sequence is not one of the named families
    info = saved["run_info"]
    assert info["embedding_cache"] == {"hits": 0, "misses": 4} and info["config_hash"]
    assert info["name"] == "two" and info["overrides"] == ["data.on_overlap=drop_test"]
    table = retrieval.markdown(saved, "bench/results/retrieval/two.json")  # what the README shows of the file
    for seq, r in saved["sequences"].items():
        assert f"| {seq} | " in table and f" | {r['mean']['dtkr']:.3f} | " in table
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"retrieval_min_margin=-?\d\.\d{3} same_family_min_mean=n/a", last)

    # a second run reads every embedding from the cache and gives the same numbers
    again = retrieval.main(argv)
    assert again["run_info"]["embedding_cache"] == {"hits": 4, "misses": 0}
    assert again["sequences"]["agnews_dbpedia"]["rows"] == rows

    # an ablation grid (from the cache too) writes one entry per setting, and a changed lever changes keys only
    ablation = tmp_path / "grid.yaml"
    ablation.write_text(yaml.safe_dump({**yaml.safe_load(experiment.read_text()),
                                        "ablation": {"default": {}, "epochs=0": {"key_epochs": 0}}}))
    retrieval.main([str(ablation), "--results-dir", str(tmp_path / "results")])
    grid = json.loads((tmp_path / "results" / "retrieval" / "grid.json").read_text())
    assert check_result(grid) == [] and list(grid["settings"]) == ["default", "epochs=0"]
    default = grid["settings"]["default"]["sequences"]["agnews_dbpedia"]
    assert default["dtkr"] == {r["task"]: r["dtkr"] for r in rows}  # the grid's default is the main run
    untrained = grid["settings"]["epochs=0"]["sequences"]["agnews_dbpedia"]
    assert untrained["centroid"] == default["centroid"] and grid["settings"]["epochs=0"]["dtkr_changes"] == {
        "key_epochs": 0}
