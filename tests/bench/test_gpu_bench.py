"""bench/gpu_throughput.py: its arithmetic on CPU, its fail-fast without CUDA, and (GPU only) one short run."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml

from bench import gpu_throughput as bench
from bench.runner import check_result


def test_flops_per_token_is_4n_for_a_frozen_base_and_6n_with_recompute() -> None:
    assert bench.flops_per_token(1_000, recompute=False) == 4_000
    assert bench.flops_per_token(1_000, recompute=True) == 6_000


def test_mfu_of_a_7b_step_from_tokens_per_second_and_the_h100_peak() -> None:
    n = bench.matmul_params(bench.bench_config(None))
    # LLaMA-2-7B: 32 x (4 x 4096^2 + 3 x 4096 x 11008) + lm_head 32000 x 4096 (no embedding lookup)
    assert n == 32 * (4 * 4096**2 + 3 * 4096 * 11008) + 32000 * 4096 == 6_607_077_376
    peak = bench.peak_flops_for("NVIDIA H100 80GB HBM3")
    assert peak == 989e12
    # 15,000 tokens/s x 4N = 3.96e14 FLOP/s = 40.1 % of 989 TFLOP/s
    assert bench.mfu(15_000, bench.flops_per_token(n, False), peak) == pytest.approx(0.4008, abs=1e-4)
    assert bench.bench_config(8).num_hidden_layers == 8
    assert bench.bench_config(None).num_hidden_layers == 32  # the shared offline config is not edited


@pytest.mark.parametrize("name, tflops", [("NVIDIA H100 PCIe", 756), ("NVIDIA H100 80GB HBM3", 989),
                                          ("NVIDIA H200", 989), ("NVIDIA A100-SXM4-80GB", 312)])
def test_peak_flops_come_from_the_table_by_gpu_name(name: str, tflops: float) -> None:
    assert bench.peak_flops_for(name) == tflops * 1e12


def test_an_unknown_gpu_needs_peak_tflops() -> None:
    with pytest.raises(SystemExit, match="--peak-tflops"):
        bench.peak_flops_for("NVIDIA GeForce RTX 4090")
    assert bench.peak_flops_for("NVIDIA GeForce RTX 4090", peak_tflops=165.2) == pytest.approx(165.2e12)


def test_the_shipped_experiment_is_the_full_7b_shape_and_a_gpu_names_its_results_file() -> None:
    settings = bench.load_settings("llama2_7b")
    assert (settings.layers, settings.batch, settings.seq_len, settings.checkpointing) == (None, 4, 2048, False)
    assert bench.gpu_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"


def test_a_run_is_saved_per_experiment_and_gpu_in_the_one_results_schema(tmp_path) -> None:
    settings = bench.Settings(name="two_layers", layers=2)
    rows = [bench.Measurement("jare", 10, 900.0, 5.0, 1.5, 10.4, mfu=0.41),
            bench.Measurement("lora", 8, 1000.0, 4.5, 1.4, 10.4, mfu=0.45)]
    path = bench.save(settings, "NVIDIA H100 80GB HBM3", 989e12, 1234, rows, "missing", tmp_path)
    assert path == tmp_path / "gpu_throughput" / "two_layers-h100-80gb-hbm3.json"
    record = json.loads(path.read_text())
    assert check_result(record) == []
    assert record["train_info"]["lora"]["tokens_per_s"] == 1000.0 and record["train_info"]["faiss_gpu"] == "missing"
    assert record["run_info"]["settings"]["layers"] == 2 and record["run_info"]["peak_tflops"] == 989
    assert record["meta_info"]["gpu"] == "NVIDIA H100 80GB HBM3" and "cuda" in record["meta_info"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gets")
def test_main_without_cuda_exits_at_once_saying_it_needs_a_cuda_gpu() -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main([])
    assert "needs a CUDA GPU" in str(exit_info.value.code)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_two_layer_run_prints_the_final_summary_line_and_writes_its_results(tmp_path, capsys) -> None:
    experiment = tmp_path / "two_layers.yaml"
    experiment.write_text(yaml.safe_dump({"layers": 2, "batch": 2, "seq_len": 256, "steps": 2, "warmup": 1}))
    results = tmp_path / "results"
    assert bench.main([str(experiment), "--peak-tflops", "100", "--results-dir", str(results)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"jare_tokens_per_s=\d+ lora_tokens_per_s=\d+ ratio=[\d.]+ jare_mfu=[\d.]+ lora_mfu=[\d.]+",
                        last), last
    name = f"two_layers-{bench.gpu_slug(torch.cuda.get_device_name())}.json"
    record = json.loads((results / "gpu_throughput" / name).read_text())
    assert check_result(record) == [] and record["run_info"]["layers"] == 2
    assert record["train_info"]["jare"]["tokens_per_s"] > 0 and record["meta_info"]["cuda"] == torch.version.cuda
