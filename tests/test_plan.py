"""The memory plan: exact parameter counts from meta-device models, and the plan's logic.

Fast: no weights are ever built (LLaMA-2-70B on the meta device takes about a second, once).
"""

from __future__ import annotations

import math

import pytest

import pipeline.models
from pipeline import cli
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.model_shapes import LLAMA2_CONFIGS, config_for, model_shape
from pipeline.plan import (
    PlanRow,
    check_fits,
    format_plan,
    plan_memory,
    recommend,
    shipped_mode,
)


@pytest.fixture(scope="module")
def llama70b():
    return load_config("llama2_70b.yaml")


def _row(rows: list[PlanRow], zero: str, bits: int, ckpt: bool) -> PlanRow:
    return next(r for r in rows if (r.zero, r.base_bits, r.checkpointing) == (zero, bits, ckpt))


@pytest.mark.parametrize("hub_id, billions", [
    ("meta-llama/Llama-2-7b-hf", 6.74), ("meta-llama/Llama-2-13b-chat-hf", 13.0),
    ("meta-llama/Llama-2-70b-chat-hf", 68.98)])
def test_the_offline_llama2_shapes_have_the_published_parameter_counts(hub_id: str, billions: float) -> None:
    shape = model_shape(hub_id, ("o_proj",), 8)
    assert shape.total_params / 1e9 == pytest.approx(billions, rel=0.01)


def test_every_llama2_size_has_a_base_and_a_chat_id_and_70b_uses_gqa() -> None:
    assert len(LLAMA2_CONFIGS) == 6
    big = LLAMA2_CONFIGS["meta-llama/Llama-2-70b-hf"]
    assert (big.num_attention_heads, big.num_key_value_heads, big.vocab_size) == (64, 8, 32000)
    assert LLAMA2_CONFIGS["meta-llama/Llama-2-70b-chat-hf"].to_dict() == big.to_dict()


def test_jare_slots_are_sized_from_the_target_linears() -> None:
    shape = model_shape("meta-llama/Llama-2-7b-hf", ("o_proj",), 8)
    assert shape.slot_params == 32 * 8 * (4096 + 4096)  # 32 layers of o_proj, U and V


def test_70b_on_8x80gb_does_not_fit_a_16bit_zero2_base_and_the_recommendation_fits(llama70b) -> None:
    rows = plan_memory(llama70b, 1, 8, 80.0)
    assert not _row(rows, "2", 16, True).fits
    best = recommend(rows)
    assert best is not None and best.fits and best.total_gib <= 80.0


def test_zero3_shards_the_weights_over_more_gpus(llama70b) -> None:
    eight = _row(plan_memory(llama70b, 1, 8, 80.0), "3", 16, True)
    sixteen = _row(plan_memory(llama70b, 2, 8, 80.0), "3", 16, True)
    assert sixteen.weights_gib < eight.weights_gib < 128.5 / 8 + 2
    assert _row(plan_memory(llama70b, 2, 8, 80.0), "2", 16, True).weights_gib == pytest.approx(128.5, abs=0.1)


def test_fewer_base_bits_mean_smaller_weights(llama70b) -> None:
    rows = plan_memory(llama70b, 1, 8, 80.0)
    w4, w8, w16 = (_row(rows, "2", bits, True).weights_gib for bits in (4, 8, 16))
    assert w4 < w8 < w16


def test_gradient_checkpointing_lowers_activations(llama70b) -> None:
    rows = plan_memory(llama70b, 1, 8, 80.0)
    assert _row(rows, "2", 8, True).activations_gib < _row(rows, "2", 8, False).activations_gib / 5


def test_a_quantized_base_with_zero3_is_marked_unsupported(llama70b) -> None:
    rows = plan_memory(llama70b, 1, 8, 80.0)
    for zero in ("3", "3+off"):
        row = _row(rows, zero, 4, True)
        assert row.unsupported and "zero2" in row.unsupported and not row.fits
        assert math.isnan(row.total_gib)
    assert "unsupported" in format_plan(rows)


def test_zero3_fits_70b_only_once_the_loader_loads_sharded(llama70b, monkeypatch) -> None:
    # The loader builds ZeRO-3 models under zero.Init (tests/test_zero3_loading.py), so this is on.
    assert pipeline.models.LOADS_ZERO3_SHARDED is True
    assert _row(plan_memory(llama70b, 1, 8, 80.0), "3", 16, True).fits
    # A loader that moves the whole bf16 base to each GPU first (the old one) would not fit.
    monkeypatch.setattr(pipeline.models, "LOADS_ZERO3_SHARDED", False)
    row = _row(plan_memory(llama70b, 1, 8, 80.0), "3", 16, True)
    assert row.total_gib < 80.0 and not row.fits
    assert "no (load)" in format_plan([row])


def test_recommend_prefers_precision_then_no_offload_then_zero2_then_no_checkpointing() -> None:
    def row(zero: str, bits: int, ckpt: bool) -> PlanRow:
        return PlanRow(zero=zero, deepspeed="x", base_bits=bits, checkpointing=ckpt, gpus=8, gpu_mem_gib=80,
                       weights_gib=1, slots_gib=0, optim_gib=0, activations_gib=1, logits_gib=0, other_gib=1,
                       host_gib=1)

    rows = [row("2", 8, False), row("3+off", 16, False), row("3", 16, True), row("2", 16, True)]
    assert (r := recommend(rows)) is not None and (r.zero, r.base_bits, r.checkpointing) == ("2", 16, True)
    assert recommend([]) is None


def test_pinned_70b_8bit_zero2_row(llama70b) -> None:
    """Pinned numbers: update them only when the formulas change on purpose."""
    row = _row(plan_memory(llama70b, 1, 8, 80.0), "2", 8, True)
    # 75.4 since the config retrieves with the reference's 125M-parameter RoBERTa (fp32), not MiniLM.
    assert (row.weights_gib, row.activations_gib, row.total_gib) == pytest.approx((65.2, 3.4, 75.4), abs=0.06)


def test_the_shipped_deepspeed_jsons_parse_into_zero_modes() -> None:
    assert (shipped_mode("zero2").stage, shipped_mode("zero2").reduce_bucket) == (2, 500_000_000)
    offload = shipped_mode("zero3_offload")
    assert offload.stage == 3 and offload.offload_param and offload.offload_optimizer and offload.label == "3+off"


def test_slm_plan_prints_the_table_for_70b(capsys) -> None:
    code = cli.main(["plan", "-c", "llama2_70b.yaml", "--nodes", "1", "--gpus-per-node", "8"])
    out = capsys.readouterr().out
    assert code == 0
    assert "68.98B parameters" in out and "total GiB/GPU" in out and "fits?" in out
    # bf16 under ZeRO-3 fits (73.1 GiB) now that the base loads sharded; precision comes first
    assert "recommended  train.deepspeed=zero3 model.quantization=none" in out


@pytest.mark.parametrize("name", ["llama2_7b.yaml", "llama2_13b.yaml", "llama2_70b.yaml"])
def test_each_shipped_llama2_config_fits_its_own_slurm_resources(name: str) -> None:
    cfg = load_config(name)
    fits, text = check_fits(cfg, gpu_mem_gib=80.0)
    assert fits, text
    best = recommend(plan_memory(cfg, gpu_mem_gib=80.0))
    assert best is not None
    if name != "llama2_70b.yaml":
        assert (best.deepspeed, best.quantization) == (cfg.train.deepspeed, cfg.model.quantization)
    else:
        # 70B keeps an 8-bit base + zero2 on purpose, although bf16 + zero3 is cheapest for
        # training: the 1-GPU finish job (eval, generate) loads the whole base without ZeRO, and
        # only a quantised 70B (65 GiB) fits one 80 GiB GPU.
        assert (cfg.train.deepspeed, cfg.model.quantization) == ("zero2", "8bit")


def test_check_fits_on_a_cpu_config_is_true(write_yaml, small_experiment) -> None:
    assert check_fits(load_config(write_yaml(small_experiment))) == (True, "CPU run: no GPU memory plan")


def test_check_fits_says_what_to_change_when_the_config_does_not_fit(llama70b, monkeypatch) -> None:
    cfg = load_config("llama2_70b.yaml", ["model.quantization=none"])
    monkeypatch.setenv("SLM_GPU_MEM_GIB", "80")
    fits, text = check_fits(cfg)
    assert not fits
    assert "does not fit; the plan recommends train.deepspeed=zero3 model.quantization=none" in text


def test_an_unknown_model_is_a_config_error_naming_the_field(write_yaml, small_experiment) -> None:
    small_experiment["model"]["name_or_path"] = "someone/not-a-known-model"
    small_experiment["slurm"] = {"train": {"gpus_per_node": 1}}
    cfg = load_config(write_yaml(small_experiment))
    with pytest.raises(ConfigError, match=r"model\.name_or_path.*unknown offline.*local folder"):
        plan_memory(cfg)


def test_a_local_folder_is_read_and_a_missing_cluster_path_falls_back_to_its_known_name(tmp_path) -> None:
    LLAMA2_CONFIGS["meta-llama/Llama-2-7b-hf"].save_pretrained(tmp_path / "my-llama")
    assert config_for(str(tmp_path / "my-llama")).hidden_size == 4096
    assert config_for("/cluster/models/Llama-2-13b-chat-hf").hidden_size == 5120
