"""bench/gpu_smoke.py: its CPU mode end to end (the GPU run is the same code on a ~1B model), and
the verdicts it prints."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_smoke.py"
CHECKS = ["model", "train-zero2", "memory-zero2", "train-zero3", "memory-zero3", "zero2-zero3", "faiss", "generate"]


@pytest.fixture(scope="module")
def smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_smoke"] = module
    spec.loader.exec_module(module)
    return module


def test_the_memory_check_fails_when_the_plan_under_estimates(smoke) -> None:
    assert smoke.memory_check("zero2", 10.0, 12.5).status == "PASS"
    over = smoke.memory_check("zero2", 13.0, 12.5)
    assert over.status == "FAIL" and "13.00 GiB allocated vs 12.50 GiB planned" in over.detail
    assert smoke.memory_check("zero3", None, 12.5).status == "SKIP"


def test_tokens_per_second_leave_out_the_first_step(smoke) -> None:
    assert smoke.tokens_per_s([(10.0, 100), (1.0, 200), (1.0, 200)]) == 200
    assert smoke.tokens_per_s([(2.0, 100)]) == 50


@pytest.mark.slow
def test_the_cpu_tiny_mode_runs_every_check_and_writes_results_with_provenance(smoke, tmp_path, capsys) -> None:
    out = tmp_path / "smoke.json"
    assert smoke.main(["--device", "cpu", "--tiny", "--steps", "2", "--work", str(tmp_path / "work"),
                       "--out", str(out)]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith(("PASS ", "FAIL ", "SKIP "))]
    assert [x.split()[1].rstrip(":") for x in lines] == CHECKS  # one line per check, in order
    record = json.loads(out.read_text())
    status = {c["name"]: c["status"] for c in record["checks"]}
    assert status == {**dict.fromkeys(CHECKS, "PASS"), "memory-zero2": "SKIP", "memory-zero3": "SKIP"}
    assert record["passed"] and record["model"]["shape"] == "tiny"
    assert {"command", "commit", "machine", "versions", "device"} <= record["run_info"].keys()
    planned = [c["values"]["planned_gib"] for c in record["checks"] if c["name"].startswith("memory-")]
    assert all(p > 0 for p in planned)  # `slm plan`'s estimate is computed on CPU too
