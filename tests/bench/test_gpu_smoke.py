"""bench/gpu_smoke.py: its CPU mode end to end (the GPU run is the same code on a ~1B model), and
the verdicts it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench import gpu_smoke as smoke
from bench.runner import check_result

REPO = Path(__file__).resolve().parents[2]
CHECKS = ["model", "train-zero2", "memory-zero2", "train-zero3", "memory-zero3", "zero2-zero3", "faiss", "generate"]


def test_the_memory_check_fails_when_the_plan_under_estimates() -> None:
    assert smoke.memory_check("zero2", 10.0, 12.5).status == "PASS"
    over = smoke.memory_check("zero2", 13.0, 12.5)
    assert over.status == "FAIL" and "13.00 GiB allocated vs 12.50 GiB planned" in over.detail
    assert smoke.memory_check("zero3", None, 12.5).status == "SKIP"


def test_tokens_per_second_leave_out_the_first_step() -> None:
    assert smoke.tokens_per_s([(10.0, 100), (1.0, 200), (1.0, 200)]) == 200
    assert smoke.tokens_per_s([(2.0, 100)]) == 50


def test_the_shipped_experiments_are_a_1b_model_and_the_tiny_one() -> None:
    default, tiny = smoke.load_settings("default"), smoke.load_settings("tiny")
    assert (default.model.hidden, default.model.layers, default.model.kv_heads) == (2048, 22, 4)
    assert (tiny.model.hidden, tiny.model.layers, tiny.seq_len) == (32, 2, 64)
    assert smoke.device_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3" and smoke.device_slug("cpu") == "cpu"


@pytest.mark.slow
def test_the_cpu_tiny_mode_runs_every_check_and_writes_results_with_provenance(tmp_path) -> None:
    # the shipped tiny experiment, with 2 steps instead of 4
    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(yaml.safe_dump({**smoke.load_settings("tiny").model_dump(exclude={"name"}), "steps": 2}))
    results = tmp_path / "results"
    # A process of its own, as on the GPU machine: training under ZeRO-3 in this one would leave
    # DeepSpeed's process-wide loading state behind for the tests after it.
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_smoke.py"), str(experiment), "--device", "cpu",
                           "--work", str(tmp_path / "work"), "--results-dir", str(results)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith(("PASS ", "FAIL ", "SKIP "))]
    assert [x.split()[1].rstrip(":") for x in lines] == CHECKS  # one line per check, in order
    record = json.loads((results / "gpu_smoke" / "tiny-cpu.json").read_text())
    assert check_result(record) == []
    status = {c["name"]: c["status"] for c in record["checks"]}
    assert status == {**dict.fromkeys(CHECKS, "PASS"), "memory-zero2": "SKIP", "memory-zero3": "SKIP"}
    assert record["passed"] and record["model"]["shape"]["layers"] == 2
    assert record["run_info"]["device"] == "cpu" and record["run_info"]["settings"]["steps"] == 2
    train = next(c for c in record["checks"] if c["name"] == "train-zero2")
    assert train["values"]["steps"] == 2  # the settings' steps ran
    planned = [c["values"]["planned_gib"] for c in record["checks"] if c["name"].startswith("memory-")]
    assert all(p > 0 for p in planned)  # `slm plan`'s estimate is computed on CPU too
