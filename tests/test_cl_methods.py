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
