"""bench/gpu_throughput.py: its arithmetic on CPU, its fail-fast without CUDA, and (GPU only) one short run."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_throughput.py"


@pytest.fixture(scope="module")
def bench():
    # bench/ is no package: load the script by path, as `python bench/gpu_throughput.py` would
    spec = importlib.util.spec_from_file_location("gpu_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_throughput"] = module
    spec.loader.exec_module(module)
    return module


def test_flops_per_token_is_4n_for_a_frozen_base_and_6n_with_recompute(bench) -> None:
    assert bench.flops_per_token(1_000, recompute=False) == 4_000
    assert bench.flops_per_token(1_000, recompute=True) == 6_000


def test_mfu_of_a_7b_step_from_tokens_per_second_and_the_h100_peak(bench) -> None:
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
def test_peak_flops_come_from_the_table_by_gpu_name(bench, name: str, tflops: float) -> None:
    assert bench.peak_flops_for(name) == tflops * 1e12


def test_an_unknown_gpu_needs_peak_tflops(bench) -> None:
    with pytest.raises(SystemExit, match="--peak-tflops"):
        bench.peak_flops_for("NVIDIA GeForce RTX 4090")
    assert bench.peak_flops_for("NVIDIA GeForce RTX 4090", peak_tflops=165.2) == pytest.approx(165.2e12)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gets")
def test_main_without_cuda_exits_at_once_saying_it_needs_a_cuda_gpu(bench) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main([])
    assert "needs a CUDA GPU" in str(exit_info.value.code)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_two_layer_run_prints_the_final_summary_line(bench, capsys) -> None:
    assert bench.main(["--layers", "2", "--batch", "2", "--seq-len", "256", "--steps", "2", "--warmup", "1",
                       "--no-save", "--peak-tflops", "100"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"jare_tokens_per_s=\d+ lora_tokens_per_s=\d+ ratio=[\d.]+ jare_mfu=[\d.]+ lora_mfu=[\d.]+",
                        last), last
