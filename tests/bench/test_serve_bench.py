"""bench/serve.py end to end with --quick on a tiny finished run: both comparisons start their two
`slm serve` processes, load them, and write their results (the real one is minutes, not a test)."""

from __future__ import annotations

import json
import re

import pytest

from bench import serve
from bench.runner import check_result
from tests.tiny import finish_tasks, save_tiny_checkpoint, tiny_overrides


@pytest.fixture(scope="module")
def run_overrides(tmp_path_factory) -> list[str]:
    """A finished, indexed run of the embedded default's three tasks on a tiny LLaMA."""
    root = tmp_path_factory.mktemp("serve-bench")
    model = save_tiny_checkpoint(root / "tiny")
    return finish_tasks(tiny_overrides(root / "run", model, steps=2))


def test_the_shipped_experiments_compare_merged_and_batching() -> None:
    assert serve.load_settings("default").compare == "retrieval_vs_merged"
    assert serve.load_settings("batching").compare == "continuous_vs_static"


@pytest.mark.slow
def test_retrieval_vs_merged_quick_serves_both_and_prints_the_ratios(run_overrides, tmp_path, capsys) -> None:
    result = serve.main(["default", *run_overrides, "--quick", "--threads", "1", "--results-dir", str(tmp_path)])
    record = json.loads((tmp_path / "serve" / "default-quick.json").read_text())
    assert check_result(record) == []
    info = record["serve_info"]
    assert set(info["summary"]) == {"retrieval", "merged"} and len(info["rounds"]["retrieval"]) == 1
    assert all(len(r["latencies_s"]) == 16 for r in info["rounds"]["merged"])  # --quick: 16 requests a round
    assert record["run_info"]["merged_task"] == "sentiment" and record["run_info"]["threads"] == 1
    assert record["run_info"]["settings"]["overrides"] == run_overrides  # the run served is recorded
    assert result["serve_info"]["rps_ratio"] == info["rps_ratio"] > 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"rps_ratio=\d+\.\d{3} p50_ratio=\d+\.\d{3}", last), last
    table = serve.markdown(record, "x.json")  # what docs/benchmarks.md shows of such a file
    assert f"| merged | {info['summary']['merged']['rps']:.2f} |" in table and "1 thread(s) a server" in table


@pytest.mark.slow
def test_continuous_vs_static_quick_loads_each_client_count(run_overrides, tmp_path) -> None:
    serve.main(["batching", *run_overrides, "--quick", "--threads", "1", "--results-dir", str(tmp_path)])
    record = json.loads((tmp_path / "serve" / "batching-quick.json").read_text())
    assert check_result(record) == []
    by_clients = record["serve_info"]["by_clients"]
    assert list(by_clients) == ["1", "4"] and all(set(r) == {"continuous", "static"} for r in by_clients.values())
    assert set(record["serve_info"]["ratios"]) == {"1", "4"} and len(record["serve_info"]["table"]) == 2 + 4
    assert serve.markdown(record, "x.json").startswith("\n".join(record["serve_info"]["table"]))
