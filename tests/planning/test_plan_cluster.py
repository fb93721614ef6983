"""What the first real cluster run needs the plan to know: host RAM against slurm.*.mem, the
finish job's own GPUs, an 8-bit base's saved inputs, FAISS's GPU resources, the usable memory
of an 80 GB card. Each test pins a number derived by hand from the formula it names."""

from __future__ import annotations

import pytest

from pipeline.cli import main as slm
from pipeline.experiment import load_experiment
from pipeline.planning import memory
from pipeline.planning.checks import check_fits
from pipeline.planning.inference import plan_finish
from pipeline.planning.memory import GIB, HOST_BASE_GIB, LOAD_WORKERS, plan_memory
from pipeline.planning.shapes import model_shape

LLAMA7B = "meta-llama/Llama-2-7b-chat-hf"


def _row(rows, zero: str, bits: int, ckpt: bool):
    return next(r for r in rows if (r.zero, r.base_bits, r.checkpointing) == (zero, bits, ckpt))


def test_the_default_gpu_is_what_an_80gb_card_offers_not_80_gib() -> None:
    assert 79.0 <= memory.DEFAULT_GPU_MEM_GIB < 80.0


def test_host_ram_follows_the_loader_ranks_stream_the_base_and_zero3_reads_it_once_on_rank_0() -> None:
    exp = load_experiment("llama2_7b.yaml")
    rows = plan_memory(exp.cfg, exp.method, 1, 8, 79.2)
    shape = model_shape(LLAMA7B)
    streamed = 8 * (HOST_BASE_GIB * GIB + LOAD_WORKERS * 32000 * 4096 * 2)  # 4 embedding-sized tensors per rank
    assert _row(rows, "2", 16, True).host_gib * GIB == pytest.approx(streamed)
    assert _row(rows, "2", 8, True).host_gib * GIB == pytest.approx(streamed)
    whole_once = 8 * HOST_BASE_GIB * GIB + shape.total_params * 2
    assert _row(rows, "3", 16, True).host_gib * GIB == pytest.approx(whole_once)
    # the old figure (every rank the whole bf16 base): 164 GiB, over the shipped 128G
    assert _row(rows, "2", 16, True).host_gib < 80


def test_seq_ft_plans_rank_0_gathering_the_whole_model_to_save_it() -> None:
    exp = load_experiment("llama2_7b.yaml", ["method=seq_ft"])
    row = _row(plan_memory(exp.cfg, exp.method, 1, 8, 79.2), "2", 16, True)
    shape = model_shape(LLAMA7B)
    assert row.host_gib * GIB == pytest.approx(8 * HOST_BASE_GIB * GIB + shape.total_params * 2)


def test_a_slurm_mem_below_the_host_figure_is_refused_with_the_mem_to_set() -> None:
    exp = load_experiment("llama2_7b.yaml", ["slurm.train.gpus_per_node=8", "slurm.train.mem=64G"])
    fits, text = check_fits(exp.cfg, exp.method, 79.2)
    assert not fits
    assert "exceeds slurm.train.mem=64G" in text and "the smallest fix: slurm.train.mem=72G" in text
    fixed = load_experiment("llama2_7b.yaml", ["slurm.train.gpus_per_node=8", "slurm.train.mem=72G"])
    assert check_fits(fixed.cfg, fixed.method, 79.2)[0]
    # 0 is "all of the node's memory": nothing to compare
    whole_node = load_experiment("llama2_7b.yaml", ["slurm.train.gpus_per_node=8", "slurm.train.mem='0'"])
    assert check_fits(whole_node.cfg, whole_node.method, 79.2)[0]


def test_submit_dry_run_is_refused_with_the_host_memory_reason(tmp_path, capsys) -> None:
    args = ["submit", "--dry-run", "-c", "llama2_7b.yaml", "slurm.train.mem=64G", "slurm.train.gpus_per_node=8",
            "train.grad_accum=4", f"output_dir={tmp_path}", "slurm.setup=[]"]
    assert slm(args) == 2
    captured = capsys.readouterr()
    assert "host RAM ~72 GiB per node for the train job (8 ranks" in captured.out
    assert "the smallest fix: slurm.train.mem=72G" in captured.out
    assert "host RAM" in captured.err and "--ignore-plan" in captured.err
    assert slm([*args, "--ignore-plan"]) == 0


def test_an_8bit_base_keeps_its_linears_inputs_for_backward() -> None:
    """MatMul8bitLt saves its input A; MatMul4Bit saves only the packed weight. Beyond the input of
    o_proj that JARe's side branch saves already: q/k/v's (h), gate/up's (h), down_proj's (I)."""
    exp = load_experiment("llama2_7b.yaml")
    rows = plan_memory(exp.cfg, exp.method, 1, 4, 79.2)
    extra = _row(rows, "2", 8, False).activations_gib - _row(rows, "2", 4, False).activations_gib
    tokens, layers = 4 * 1024, 32
    assert extra * GIB == pytest.approx(tokens * layers * (4096 + 4096 + 11008) * 2)
    assert extra == pytest.approx(4.69, abs=0.01)


def test_faiss_gpu_resources_are_planned_for_methods_that_search_keys_on_the_gpu() -> None:
    def other(overrides: list[str]) -> float:
        exp = load_experiment("llama2_7b.yaml", overrides)
        return _row(plan_memory(exp.cfg, exp.method, 1, 4, 79.2), "2", 16, True).other_gib

    with_faiss = other([]) - other(["dtkr.faiss=cpu"])
    assert with_faiss == pytest.approx(memory.FAISS_GPU_GIB * (1 + memory.FRAGMENTATION))
    assert other(["method=seq_lora"]) == pytest.approx(other(["method=seq_lora", "dtkr.faiss=cpu"]))


def test_the_finish_job_has_its_own_row_and_a_bf16_70b_needs_two_gpus_for_it(capsys) -> None:
    exp = load_experiment("llama2_70b.yaml", ["model.quantization=none", "train.deepspeed=zero3"])
    one = plan_finish(exp.cfg, exp.method, 1, 79.2)
    assert not one.fits and one.weights_gib == pytest.approx(128.5, abs=0.1)
    fits, text = check_fits(exp.cfg, exp.method, 79.2)
    assert not fits and "the smallest fix: slurm.finish.gpus_per_node=2" in text
    two = load_experiment("llama2_70b.yaml", ["model.quantization=none", "train.deepspeed=zero3",
                                              "slurm.finish.gpus_per_node=2"])
    assert plan_finish(two.cfg, two.method, 2, 79.2).fits and check_fits(two.cfg, two.method, 79.2)[0]
    assert slm(["plan", "-c", "llama2_70b.yaml"]) == 0
    out = capsys.readouterr().out
    assert "finish       finish job (index, eval, report; one process, the base across 1 GPU(s)): weights 65.2" in out
    assert "fits slurm.finish.mem=128G" in out


def test_the_finish_jobs_kv_cache_is_what_generation_keeps() -> None:
    exp = load_experiment("llama2_70b.yaml")
    row = plan_finish(exp.cfg, exp.method, 1, 79.2)
    # 8 sequences x (512 prompt + 512 new tokens) x 80 layers x keys and values x 8 kv heads x 128 x bf16
    assert row.kv_cache_gib * GIB == pytest.approx(8 * 1024 * 80 * 2 * 1024 * 2)
