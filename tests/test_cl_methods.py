"""bench/cl_methods.py, the tiny version CI runs: two methods and two task orders on a tiny LLaMA,
results as data (one JSON per method, the comparison table and plot), resumable, --summary."""

from __future__ import annotations

import json

import pytest

from bench import cl_methods
from tests.tiny import save_tiny_checkpoint

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_two_methods_over_two_orders_give_results_files_a_table_a_plot_and_a_summary(tmp_path, capsys) -> None:
    model = save_tiny_checkpoint(tmp_path / "tiny")
    results = tmp_path / "results"
    overrides = [f"output_dir={tmp_path / 'run'}", f"model.name_or_path={model}", "name=tinybench",
                 "data.synthetic_size=40", "train.max_steps=2", "train.micro_batch_size=4", "train.save_every=2",
                 "model.max_seq_len=64", "eval.max_records_per_task=4",
                 "orders=[{name: fwd, tasks: [sentiment, geography, animals]},"
                 " {name: rev, tasks: [animals, geography, sentiment]}]"]
    argv = ["-c", "default.yaml", "--methods", "slm,seq_lora", "--results-dir", str(results), *overrides]
    assert cl_methods.main(argv) == 0

    for method in ("slm", "seq_lora"):
        r = json.loads((results / f"cl-tinybench-{method}.json").read_text())
        assert set(r) == {"run_info", "train_info", "metrics", "meta_info"}
        assert r["run_info"]["method"] == method and list(r["run_info"]["orders"]) == ["fwd", "rev"]
        assert r["run_info"]["orders"]["rev"] == ["animals", "geography", "sentiment"]
        assert len(r["run_info"]["config_sha256"]) == 64 and r["run_info"]["command"]
        assert r["train_info"]["wall_s"] > 0 and r["train_info"]["peak_rss_mib"] > 0
        per_order = r["metrics"]["per_order"]
        assert [len(per_order[o]["matrix"]) for o in ("fwd", "rev")] == [3, 3]
        mean = sum(per_order[o]["AA"] for o in ("fwd", "rev")) / 2
        assert r["metrics"]["AA"] == pytest.approx(mean) and r["metrics"]["AA_std"] is not None
        assert (r["metrics"]["retrieval_accuracy"] is None) == (method == "seq_lora")
    table = (results / "cl-tinybench.md").read_text()
    assert "| `slm` |" in table and "| `seq_lora` |" in table and "over 2 task orders" in table
    assert (results / "cl-tinybench.png").read_bytes()[:8] == PNG_MAGIC

    # resumable: a recorded method with the same config is skipped; another order set reruns
    capsys.readouterr()
    assert cl_methods.main(argv) == 0
    assert capsys.readouterr().out.count("already recorded") == 4  # two methods x two orders, each kept
    assert cl_methods.main([*argv[:4], "--summary", "--results-dir", str(results), *overrides]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("method=")]
    assert [ln.split()[0] for ln in lines] == ["method=slm", "method=seq_lora"]
    assert all(ln.split()[1].startswith("AA=") and "wall_s=" in ln for ln in lines)
    assert "retrieval=na" in lines[1] and "retrieval=na" not in lines[0]


def _entry(tasks: list[str], aa: float, wall: float, date: str) -> dict:
    matrix = [[aa] * len(tasks)] * len(tasks)
    metrics = {k: None for k in cl_methods.PER_ORDER_KEYS} | {"AA": aa, "complete": True, "tasks": tasks,
                                                              "matrix": matrix}
    return {"metrics": metrics, "training": {"trainable_params": 10}, "data_sha256": {t: "0" * 64 for t in tasks},
            "wall_s": wall, "peak_rss_mib": 100, "meta_info": {"machine": "m"},
            "provenance": {"command": f"run {date}", "commit": "c", "dirty": False, "date": date}}


def test_orders_recorded_one_by_one_add_up_to_one_record_in_the_experiments_order(tmp_path) -> None:
    from pipeline.experiment import load_config

    cfg = load_config("default.yaml", ["orders=[{name: fwd, tasks: [sentiment, geography, animals]},"
                                       " {name: rev, tasks: [animals, geography, sentiment]}]"])
    path = tmp_path / "cl-x-slm.json"
    digest = cl_methods.config_sha256(cfg)
    assert cl_methods.recorded_orders(path, digest) == {}  # nothing recorded yet

    # rev ran first (on its own day), fwd later: the record lists the experiment's order
    rev = _entry(["animals", "geography", "sentiment"], 0.4, 30.0, "2026-12-01T10:00:00")
    cl_methods.atomic_write_json(path, cl_methods.result_record(cfg, "slm", {"rev": rev}))
    done = cl_methods.recorded_orders(path, digest)
    assert list(done) == ["rev"] and done["rev"]["metrics"]["AA"] == 0.4 and done["rev"]["wall_s"] == 30.0
    done["fwd"] = _entry(["sentiment", "geography", "animals"], 0.6, 50.0, "2026-12-02T10:00:00")
    r = cl_methods.result_record(cfg, "slm", done)

    assert list(r["run_info"]["orders"]) == ["fwd", "rev"]
    assert r["metrics"]["AA"] == pytest.approx(0.5) and r["metrics"]["AA_std"] > 0
    assert r["train_info"]["wall_s"] == 80.0 and r["train_info"]["wall_s_per_order"] == {"fwd": 50.0, "rev": 30.0}
    assert r["run_info"]["command"] == "run 2026-12-02T10:00:00"  # the latest run; each order keeps its own
    assert r["run_info"]["per_order"]["rev"]["command"] == "run 2026-12-01T10:00:00"
    assert set(r["meta_info"]["per_order"]) == {"fwd", "rev"}
    assert cl_methods.recorded_orders(path, digest)["rev"]["meta_info"] == {"machine": "m"}
    # another config (here: another seed) records nothing for this one to keep
    assert cl_methods.recorded_orders(path, cl_methods.config_sha256(load_config("default.yaml", ["seed=7"]))) == {}


def test_a_results_file_from_before_per_order_recording_is_read_as_its_orders(tmp_path) -> None:
    from pipeline.experiment import load_config

    cfg = load_config("default.yaml", [])
    old = {"run_info": {"experiment": "default", "method": "slm", "config_sha256": cl_methods.config_sha256(cfg),
                        "orders": {"as_listed": ["sentiment", "geography", "animals"]}, "data_sha256": {},
                        "command": "old", "commit": "c0", "dirty": False, "date": "2026-11-01"},
           "train_info": {"wall_s": 12.0, "peak_rss_mib": 99, "per_order": {"as_listed": {"trainable_params": 1}}},
           "metrics": {"AA": 0.7, "complete": True,
                       "per_order": {"as_listed": {"AA": 0.7, "tasks": ["sentiment", "geography", "animals"]}}},
           "meta_info": {"machine": "m"}}
    path = tmp_path / "cl-default-slm.json"
    path.write_text(json.dumps(old))
    entry = cl_methods.recorded_orders(path, cl_methods.config_sha256(cfg))["as_listed"]
    assert entry["wall_s"] == 12.0 and entry["metrics"]["complete"] is True
    assert entry["provenance"] == {"command": "old", "commit": "c0", "dirty": False, "date": "2026-11-01"}
    assert cl_methods.result_record(cfg, "slm", {"as_listed": entry})["metrics"]["AA"] == 0.7
