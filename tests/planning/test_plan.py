"""The memory plan: exact parameter counts from meta-device models, and the plan's logic.

Fast: no weights are ever built (LLaMA-2-70B on the meta device takes about a second, once).
"""

from __future__ import annotations

import math

import pytest

import pipeline.runtime.models
from pipeline import cli
from pipeline.errors import ConfigError
from pipeline.experiment import load_config
from pipeline.methods import METHOD_NAMES, get_method
from pipeline.planning.checks import check_fits
from pipeline.planning.memory import PlanRow, format_plan, load_of, plan_memory, recommend, shipped_mode
from pipeline.planning.shapes import LLAMA2_CONFIGS, config_for, model_shape


# The CLI resolves an experiment's method once; these tests plan configs directly, so they look it up.
def plan_of(cfg, *args, **kwargs) -> list[PlanRow]:
    return plan_memory(cfg, get_method(cfg.method), *args, **kwargs)


def fits_of(cfg, **kwargs) -> tuple[bool, str]:
    return check_fits(cfg, get_method(cfg.method), **kwargs)


def load_of_cfg(cfg):
    return load_of(cfg, get_method(cfg.method))


@pytest.fixture(scope="module")
def llama70b():
    return load_config("llama2_70b.yaml")


def _row(rows: list[PlanRow], zero: str, bits: int, ckpt: bool) -> PlanRow:
    return next(r for r in rows if (r.zero, r.base_bits, r.checkpointing) == (zero, bits, ckpt))


@pytest.mark.parametrize("hub_id, billions", [
    ("meta-llama/Llama-2-7b-hf", 6.74), ("meta-llama/Llama-2-13b-chat-hf", 13.0),
    ("meta-llama/Llama-2-70b-chat-hf", 68.98)])
def test_the_offline_llama2_shapes_have_the_published_parameter_counts(hub_id: str, billions: float) -> None:
    shape = model_shape(hub_id)
    assert shape.total_params / 1e9 == pytest.approx(billions, rel=0.01)


def test_every_llama2_size_has_a_base_and_a_chat_id_and_70b_uses_gqa() -> None:
    assert len(LLAMA2_CONFIGS) == 6
    big = LLAMA2_CONFIGS["meta-llama/Llama-2-70b-hf"]
    assert (big.num_attention_heads, big.num_key_value_heads, big.vocab_size) == (64, 8, 32000)
    assert LLAMA2_CONFIGS["meta-llama/Llama-2-70b-chat-hf"].to_dict() == big.to_dict()


def test_jare_slots_are_sized_from_the_target_linears() -> None:
    from pipeline.planning.loads import jare_load

    targets = model_shape("meta-llama/Llama-2-7b-hf").targets(["o_proj"])
    one_slot = jare_load(targets, 8, tasks=1, slots=1, gathered=1, encoder_dim=768, compute_bytes=2, method="slm")
    assert one_slot.trainable_params == 32 * 8 * (4096 + 4096)  # 32 layers of o_proj, U and V


def test_70b_on_8x80gb_does_not_fit_a_16bit_zero2_base_and_the_recommendation_fits(llama70b) -> None:
    rows = plan_of(llama70b, 1, 8, 80.0)
    assert not _row(rows, "2", 16, True).fits
    best = recommend(rows)
    assert best is not None and best.fits and best.total_gib <= 80.0


def test_zero3_shards_the_weights_over_more_gpus(llama70b) -> None:
    eight = _row(plan_of(llama70b, 1, 8, 80.0), "3", 16, True)
    sixteen = _row(plan_of(llama70b, 2, 8, 80.0), "3", 16, True)
    assert sixteen.weights_gib < eight.weights_gib < 128.5 / 8 + 2
    assert _row(plan_of(llama70b, 2, 8, 80.0), "2", 16, True).weights_gib == pytest.approx(128.5, abs=0.1)


def test_fewer_base_bits_mean_smaller_weights(llama70b) -> None:
    rows = plan_of(llama70b, 1, 8, 80.0)
    w4, w8, w16 = (_row(rows, "2", bits, True).weights_gib for bits in (4, 8, 16))
    assert w4 < w8 < w16


def test_gradient_checkpointing_lowers_activations(llama70b) -> None:
    rows = plan_of(llama70b, 1, 8, 80.0)
    assert _row(rows, "2", 8, True).activations_gib < _row(rows, "2", 8, False).activations_gib / 5


def test_a_quantized_base_with_zero3_is_marked_unsupported(llama70b) -> None:
    rows = plan_of(llama70b, 1, 8, 80.0)
    for zero in ("3", "3+off"):
        row = _row(rows, zero, 4, True)
        assert row.unsupported and "zero2" in row.unsupported and not row.fits
        assert math.isnan(row.total_gib)
    assert "unsupported" in format_plan(rows)


def test_zero3_fits_70b_only_once_the_loader_loads_sharded(llama70b, monkeypatch) -> None:
    # The loader builds ZeRO-3 models under zero.Init (tests/runtime/test_zero3_loading.py), so this is on.
    assert pipeline.runtime.models.LOADS_ZERO3_SHARDED is True
    assert _row(plan_of(llama70b, 1, 8, 80.0), "3", 16, True).fits
    # A loader that moves the whole bf16 base to each GPU first (the old one) would not fit.
    monkeypatch.setattr(pipeline.runtime.models, "LOADS_ZERO3_SHARDED", False)
    row = _row(plan_of(llama70b, 1, 8, 80.0), "3", 16, True)
    assert row.total_gib < 80.0 and not row.fits
    assert "no (load)" in format_plan([row])


def test_recommend_prefers_precision_then_no_offload_then_zero2_then_no_checkpointing() -> None:
    def row(zero: str, bits: int, ckpt: bool) -> PlanRow:
        return PlanRow(zero=zero, deepspeed="x", base_bits=bits, checkpointing=ckpt, gpus=8, gpu_mem_gib=80,
                       weights_gib=1, adapters_gib=0, optim_gib=0, activations_gib=1, logits_gib=0, other_gib=1,
                       host_gib=1)

    rows = [row("2", 8, False), row("3+off", 16, False), row("3", 16, True), row("2", 16, True)]
    assert (r := recommend(rows)) is not None and (r.zero, r.base_bits, r.checkpointing) == ("2", 16, True)
    assert recommend([]) is None


def test_pinned_70b_8bit_zero2_row(llama70b) -> None:
    """Pinned numbers: update them only when the formulas change on purpose."""
    row = _row(plan_of(llama70b, 1, 8, 80.0), "2", 8, True)
    # 75.4 since the config retrieves with the reference's 125M-parameter RoBERTa (fp32), not MiniLM;
    # 75.7 since the recomputed layer keeps its 8-bit linears' inputs (+0.07 GiB) and each rank holds
    # FAISS GPU resources (0.25 GiB).
    assert (row.weights_gib, row.activations_gib, row.total_gib) == pytest.approx((65.2, 3.47, 75.7), abs=0.06)


def test_the_shipped_deepspeed_jsons_parse_into_zero_modes() -> None:
    assert (shipped_mode("zero2").stage, shipped_mode("zero2").reduce_bucket) == (2, 500_000_000)
    offload = shipped_mode("zero3_offload")
    assert offload.stage == 3 and offload.offload_param and offload.offload_optimizer and offload.label == "3+off"


def test_slm_plan_prints_the_table_for_70b(capsys) -> None:
    code = cli.main(["plan", "-c", "llama2_70b.yaml", "--nodes", "1", "--gpus-per-node", "8"])
    out = capsys.readouterr().out
    assert code == 0
    assert "68.98B parameters" in out and "total GiB/GPU" in out and "fits?" in out
    # bf16 under ZeRO-3 fits (73.5 GiB) now that the base loads sharded; precision comes first
    assert "recommended  train.deepspeed=zero3 model.quantization=none" in out


@pytest.mark.parametrize("name", ["llama2_7b.yaml", "llama2_13b.yaml", "llama2_70b.yaml"])
def test_each_shipped_llama2_config_fits_its_own_slurm_resources(name: str) -> None:
    cfg = load_config(name)
    fits, text = fits_of(cfg, gpu_mem_gib=80.0)
    assert fits, text
    best = recommend(plan_of(cfg, gpu_mem_gib=80.0))
    assert best is not None
    if name != "llama2_70b.yaml":
        assert (best.deepspeed, best.quantization) == (cfg.train.deepspeed, cfg.model.quantization)
    else:
        # 70B keeps an 8-bit base + zero2 on purpose, although bf16 + zero3 is cheapest for
        # training: the 1-GPU finish job (eval, generate) loads the whole base without ZeRO, and
        # only a quantised 70B (65 GiB) fits one 80 GiB GPU.
        assert (cfg.train.deepspeed, cfg.model.quantization) == ("zero2", "8bit")


def test_check_fits_on_a_cpu_config_is_true(write_yaml, small_experiment) -> None:
    assert fits_of(load_config(write_yaml(small_experiment))) == (True, "CPU run: no GPU memory plan")


def test_check_fits_says_what_to_change_when_the_config_does_not_fit(llama70b, monkeypatch) -> None:
    cfg = load_config("llama2_70b.yaml", ["model.quantization=none"])
    monkeypatch.setenv("SLM_GPU_MEM_GIB", "80")
    fits, text = fits_of(cfg)
    assert not fits
    assert "does not fit; the plan recommends train.deepspeed=zero3 model.quantization=none" in text


def test_an_unknown_model_is_a_config_error_naming_the_field(write_yaml, small_experiment) -> None:
    small_experiment["model"]["name_or_path"] = "someone/not-a-known-model"
    small_experiment["slurm"] = {"train": {"gpus_per_node": 1}}
    cfg = load_config(write_yaml(small_experiment))
    with pytest.raises(ConfigError, match=r"model\.name_or_path.*unknown offline.*local folder"):
        plan_of(cfg)


def test_a_local_folder_is_read_and_a_missing_cluster_path_falls_back_to_its_known_name(tmp_path) -> None:
    LLAMA2_CONFIGS["meta-llama/Llama-2-7b-hf"].save_pretrained(tmp_path / "my-llama")
    assert config_for(str(tmp_path / "my-llama")).hidden_size == 4096
    assert config_for("/cluster/models/Llama-2-13b-chat-hf").hidden_size == 5120


# ---- the method: full fine-tuning (seq_ft), the LoRA family, disk per task --------------------

GIB = 2**30
H, FF, L, V = 4096, 11008, 32, 32000  # LLaMA-2-7B (the published config.json)
P_7B = 6_738_415_616


def _seven_b(method: str, *overrides: str):
    return load_config("llama2_7b.yaml", [f"method={method}", "slurm.train.gpus_per_node=8", *overrides])


def test_full_ft_rows_of_llama2_7b_on_8_gpus_match_a_hand_calculation() -> None:
    """bf16, micro batch 4 x 1024, every decoder linear trained, ZeRO-2 and ZeRO-3 on 1 x 8 GPUs."""
    rows = plan_of(_seven_b("seq_ft"), 1, 8, 80.0)
    trained = L * (4 * H * H + 3 * H * FF)  # q, k, v, o + gate, up, down in every layer
    optim = 18 * trained / 8  # 16-bit grad, fp32 grad, master, Adam m and v, sharded over 8 GPUs
    tokens = 4 * 1024
    # per token and layer: 2 fp32 norm inputs, SDPA q/k/v/out, SwiGLU's 3, and the trained linears'
    # inputs: attention input (q/k/v share it), o_proj's, MLP input (gate/up share it), down_proj's
    layer = 8 * H + 4 * H * 2 + 3 * FF * 2 + (H + H + H + FF) * 2
    acts = L * layer * tokens + tokens * 4 * H + 4 * 1024**2 + tokens * V * (2 + 12)
    other = 125e6 * 4 + 5e8 * 2 + 1.5 * GIB  # RoBERTa encoder fp32, one reduce bucket (5e8 bf16), CUDA
    weights = {"2": 2 * P_7B, "3": 2 * P_7B / 8 + 4 * V * H + 2 * 5e7}  # ZeRO-3: shard + working set
    assert trained == 6_476_005_376
    for zero in ("2", "3"):
        row = _row(rows, zero, 16, False)
        assert row.weights_gib == pytest.approx(weights[zero] / GIB, rel=1e-3)
        assert row.optim_gib == pytest.approx(optim / GIB, rel=1e-3)
        assert row.activations_gib == pytest.approx(acts / GIB, rel=1e-3)
        hand_total = (weights[zero] + optim + acts + other) * 1.05  # + 5 % allocator fragmentation
        assert row.total_gib == pytest.approx(hand_total / GIB, rel=0.01)  # the keys index is left out
    assert _row(rows, "2", 16, False).total_gib == pytest.approx(55.2, abs=0.06)  # pinned


def test_full_ft_zero2_model_states_agree_with_deepspeeds_estimator() -> None:
    """DeepSpeed's estimate trains every parameter; seq_ft leaves embeddings and lm_head (3.9 %) frozen."""
    from pipeline.planning.memory import dense_reference_gib, shape_of_config

    cfg = _seven_b("seq_ft")
    row = _row(plan_of(cfg, 1, 8, 80.0), "2", 16, True)
    deepspeed = dense_reference_gib(shape_of_config(cfg), 1, 8)["zero2"]
    assert row.weights_gib + row.optim_gib == pytest.approx(deepspeed, rel=0.03)
    assert row.weights_gib + row.optim_gib < deepspeed


def test_trained_linears_save_their_inputs_in_the_activation_plan() -> None:
    jare = _row(plan_of(_seven_b("slm"), 1, 8, 80.0), "2", 16, False)
    full = _row(plan_of(_seven_b("seq_ft"), 1, 8, 80.0), "2", 16, False)
    # JARe on o_proj saves o_proj's input (H); seq_ft saves 3 H + FF per layer. JARe's gathered
    # slots (4 x 4 slots x 8 x 8192 per layer, bf16) come on top of its own row.
    gathered = L * 4 * 4 * 8 * (H + H) * 2
    extra = L * 4 * 1024 * (2 * H + FF) * 2
    assert (full.activations_gib - jare.activations_gib) * GIB == pytest.approx(extra - gathered, rel=1e-6)


def test_seq_ft_stores_the_whole_model_per_task_in_bf16() -> None:
    cfg = _seven_b("seq_ft")
    load = load_of_cfg(cfg)
    assert (load.stored_per_task_bytes, load.stored_total_bytes) == (2 * P_7B, 3 * 2 * P_7B)
    _, text = fits_of(cfg, gpu_mem_gib=80.0)
    assert "method seq_ft: full fine-tuning" in text
    assert f"stored per task: {2 * P_7B / GIB:.2f} GiB (the whole model" in text
    assert f"over the T=3 tasks: {3 * 2 * P_7B / GIB:.2f} GiB" in text


def test_jare_and_lora_store_their_adapters_per_task() -> None:
    slot = L * 8 * (H + H)  # rank 8 on o_proj
    assert load_of_cfg(_seven_b("slm")).stored_per_task_bytes == 4 * slot * 2 + 4 * 768 * 4  # + fp32 keys
    assert load_of_cfg(_seven_b("seq_lora")).stored_per_task_bytes == slot * 2
    assert load_of_cfg(_seven_b("o_lora", "adapter.rank=16")).stored_per_task_bytes == 2 * slot * 2
    assert load_of_cfg(_seven_b("seq_lora", "model.dtype=float32")).stored_per_task_bytes == slot * 4


def test_o_lora_keeps_every_tasks_lora_resident_and_trains_one() -> None:
    one, per_task = load_of_cfg(_seven_b("seq_lora")), load_of_cfg(_seven_b("o_lora"))
    assert per_task.resident_params == 3 * one.resident_params
    assert per_task.trainable_params == one.trainable_params == L * 8 * (H + H)
    rows = plan_of(_seven_b("o_lora"), 1, 8, 80.0)
    assert all(r.unsupported and "o_lora does not support ZeRO-3" in r.unsupported for r in rows if "3" in r.zero)
    assert _row(rows, "2", 16, True).fits


def test_a_quantized_seq_ft_row_is_unsupported() -> None:
    rows = plan_of(_seven_b("seq_ft"), 1, 8, 80.0)
    for zero in ("2", "2+off", "3", "3+off"):
        for bits in (8, 4):
            row = _row(rows, zero, bits, True)
            assert row.unsupported and "seq_ft trains the base weights" in row.unsupported and not row.fits
    assert recommend(rows) is not None and recommend(rows).base_bits == 16
    fits, text = fits_of(_seven_b("seq_ft", "model.quantization=8bit"), gpu_mem_gib=80.0)
    assert not fits and "unsupported: method seq_ft trains the base weights" in text
    assert "the plan recommends train.deepspeed=zero2 model.quantization=none" in text


def test_full_ft_adds_zero2_offload_which_moves_the_optimizer_state_to_the_host() -> None:
    rows = plan_of(_seven_b("seq_ft"), 1, 8, 80.0)
    on_gpu, offload = _row(rows, "2", 16, True), _row(rows, "2+off", 16, True)
    assert offload.optim_gib == 0.0 and offload.weights_gib == on_gpu.weights_gib
    trained = L * (4 * H * H + 3 * H * FF)
    assert (offload.host_gib - on_gpu.host_gib) * GIB == pytest.approx(16 * trained, rel=1e-9)
    assert "2+off" not in {r.zero for r in plan_of(_seven_b("slm"), 1, 8, 80.0)}


def test_train_ft_modules_selects_what_the_plan_counts_and_only_seq_ft_reads_it() -> None:
    from pipeline.errors import NoTargetModuleError
    from pipeline.planning.memory import shape_of_config

    cfg = _seven_b("seq_ft", "methods.seq_ft.modules=[q_proj,v_proj]")
    load = load_of_cfg(cfg)
    assert load.trainable_params == L * 2 * H * H and "64 decoder linears" in load.summary
    assert load.saved_input_features == L * H  # q and v read one saved input
    # the plan's selection is the one training makes: mark_trainable on the meta model
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.methods.seq_ft import mark_trainable

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config_for(cfg.model.name_or_path))
    assert sum(p.numel() for p in mark_trainable(model, ["q_proj", "v_proj"])) == load.trainable_params
    assert shape_of_config(cfg).total_params == P_7B
    assert load_of_cfg(_seven_b("slm", "methods.seq_ft.modules=[nope]")).method == "slm"  # ignored
    with pytest.raises(NoTargetModuleError):
        plan_of(_seven_b("seq_ft", "methods.seq_ft.modules=[nope]"))


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_methods_plan_runs_and_names_the_method(method: str, capsys) -> None:
    cfg = _seven_b(method)
    rows = plan_of(cfg, 1, 8, 80.0)
    assert recommend(rows) is not None and all(r.method == method for r in rows)
    fits, text = fits_of(cfg, gpu_mem_gib=80.0)  # what `slm submit` runs first
    assert fits, text
    assert f"method {method}: " in text and "stored per task: " in text
    assert cli.main(["plan", "-c", "llama2_7b.yaml", "--method", method, "--gpus-per-node", "8"]) == 0
    out = capsys.readouterr().out
    assert f"method     {method} (" in out and f"method {method}: " in out and "stored per task" in out


def test_a_new_method_is_planned_by_the_load_it_declares_and_refused_without_one() -> None:
    import pipeline.planning.memory as memory
    from pipeline.errors import ConfigError
    from pipeline.methods.base import Method
    from pipeline.planning.loads import lora_load

    class Ewc(Method):  # derives from no family: it says itself what it holds
        name, role, trains, infers = "ewc", "baseline", "everything, with a penalty", "the last model"

    class PlannedEwc(Ewc):
        def memory_load(self, cfg, shape, encoder_dim):
            return lora_load(shape.targets(["o_proj"]), 4, len(cfg.tasks), False, 2, self.name)

    cfg = _seven_b("slm")
    planned = memory.load_of(cfg, PlannedEwc())
    assert planned.method == "ewc" and planned.resident_params == 4 * L * 2 * H
    with pytest.raises(ConfigError, match="method ewc declares no memory load"):
        memory.load_of(cfg, Ewc())

