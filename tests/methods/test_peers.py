"""The published peers as their authors run them: N-LoRA's official loss (pinned against a
line-for-line reading of its trainer), the presets (uniform | official) and what they set, and the
per-task learning rate and schedule the train stage asks a method for."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from pipeline.cli import main as slm
from pipeline.errors import ConfigError
from pipeline.experiment import load_experiment
from pipeline.methods import get_method
from pipeline.methods.lora.n_lora import code_l1, paper_l1
from pipeline.methods.lora.peers import adapter_name, lora_layers
from pipeline.state.artifacts import sha256_file
from tests.tiny import tiny_overrides

# ---- N-LoRA's loss ------------------------------------------------------------------------------


def official_training_step_l1(named_parameters: list[tuple[str, torch.Tensor]], lamda_1: float) -> torch.Tensor:
    """PKU-YuanGroup/N-LoRA src/uie_trainer_lora.py `UIETrainer.training_step`, the regulariser,
    read line for line (the LM loss left out): every `loranew_A` / `loranew_B` weight by its module
    prefix, then `l1_loss += torch.norm(torch.mm(A, B), p=1)` and `loss + l1_loss * lamda_1`."""
    l1_loss = 0.
    loranew_A_params = {}
    loranew_B_params = {}
    for name, param in named_parameters:
        if "loranew_A" in name:
            loranew_A_params[name.split("loranew_A")[0]] = param
        elif "loranew_B" in name:
            loranew_B_params[name.split("loranew_B")[0]] = param
    for key in loranew_A_params:
        if key in loranew_B_params:
            l1_loss += torch.norm(torch.mm(loranew_A_params[key], loranew_B_params[key]), p=1)
    return l1_loss * lamda_1


def test_the_code_form_is_the_official_trainers_l1_of_the_r_by_r_product_on_fixed_tensors() -> None:
    # A: (r, d_in), B: (d_out, r), as both nn.Linear(d_in, r) / nn.Linear(r, d_out) and PEFT store them
    a = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, -1.0]])
    # A @ B = [[0, 2], [3, -3]]: L1 8; B @ A (the paper's d x d update) = [[2, -4], [1, -5]]: L1 12
    assert code_l1([(a, b)]).item() == 8.0 and paper_l1([(a, b)]).item() == 12.0
    gen = torch.Generator().manual_seed(0)
    layers = [(torch.randn(8, 32, generator=gen), torch.randn(32, 8, generator=gen)) for _ in range(3)]
    named = [(f"encoder.block.{i}.layer.0.SelfAttention.q.{part}.default.weight", w)
             for i, (a, b) in enumerate(layers) for part, w in (("loranew_A", a), ("loranew_B", b))]
    # an earlier task's LoRA: not in the term
    named += [("encoder.block.0.layer.0.SelfAttention.q.lora_A.default.weight", torch.randn(8, 32))]
    official = official_training_step_l1(named, 0.46)
    assert (0.46 * code_l1(layers)).item() == pytest.approx(official.item(), rel=1e-6)
    assert official.item() == pytest.approx(0.46 * sum((a @ b).abs().sum().item() for a, b in layers), rel=1e-6)


def test_n_lora_adds_the_official_term_on_the_new_lora_and_no_orthogonality(tmp_path, tiny_model_dir) -> None:
    """The trainer's extra loss, read off the model, is the official formula over the new LoRA's A and B,
    and it does not move when an earlier task's A does (O-LoRA's orthogonality is not in it)."""
    overrides = [*tiny_overrides(tmp_path / "run", tiny_model_dir), "method=n_lora", "methods.n_lora.sparsity=0.4"]
    assert slm(["prepare", *overrides]) == 0
    assert slm(["train", "--task", "0", *overrides]) == 0
    exp = load_experiment(None, overrides)
    trainer = exp.method.trainer(exp, 1, [], torch.device("cpu"), lambda: _tiny_base(exp))
    new = adapter_name(1)
    with torch.no_grad():
        for layer in lora_layers(trainer.model):
            layer.lora_B[new].weight.normal_()  # B starts at 0, which would make any L1 of A B vanish
    named = [(n.replace(f"lora_A.{new}", "loranew_A").replace(f"lora_B.{new}", "loranew_B"), p)
             for n, p in trainer.model.named_parameters() if f".{new}." in n]
    value = trainer.extra_loss().item()
    assert value == pytest.approx(official_training_step_l1(named, 0.4).item(), rel=1e-5) and value > 0
    with torch.no_grad():
        for layer in lora_layers(trainer.model):
            layer.lora_A[adapter_name(0)].weight.copy_(layer.lora_A[new].weight)  # maximally non-orthogonal
    assert trainer.extra_loss().item() == pytest.approx(value, rel=1e-6)


def _tiny_base(exp):
    from pipeline.runtime.models import load_base_model

    return load_base_model(exp.cfg.model.name_or_path, "float32", "none", torch.device("cpu"))


def test_the_code_form_refuses_a_non_square_target_by_name_and_the_paper_form_takes_it() -> None:
    # SmolLM2 (the default model) has grouped-query attention: v_proj is 576 -> 192
    with pytest.raises(ConfigError, match=r"v_proj \(576 -> 192\).*form=paper"):
        load_experiment(None, ["method=n_lora", "methods.n_lora.target_modules=[q_proj, v_proj]"])
    exp = load_experiment(None, ["method=n_lora", "methods.n_lora.target_modules=[q_proj, v_proj]",
                                 "methods.n_lora.form=paper"])
    assert exp.method.lora_settings(exp.cfg).targets == ("q_proj", "v_proj")
    load_experiment(None, ["method=n_lora", "methods.n_lora.target_modules=[q_proj]"])  # square: fine


def test_the_sparsity_default_is_the_official_scripts_and_no_longer_o_loras_lambdas() -> None:
    opts = get_method("n_lora").Options()
    assert opts.resolved("sparsity") == 0.4 and opts.form == "code"
    assert opts.model_copy(update={"preset": "official"}).resolved("sparsity") == 0.46
    assert "lambda1" not in get_method("n_lora").Options.model_fields


@pytest.mark.slow
def test_n_lora_keeps_earlier_loras_untouched_and_its_penalty_makes_the_new_lora_sparser(tmp_path, tiny_model_dir):
    def l1_of_task_1(sparsity: float) -> float:
        out = tmp_path / f"s{sparsity}"
        run = [*tiny_overrides(out, tiny_model_dir, steps=6), "method=n_lora", f"methods.n_lora.sparsity={sparsity}",
               "methods.n_lora.lr=0.02"]
        assert slm(["prepare", *run]) == 0
        assert slm(["train", "--task", "0", *run]) == 0
        first = out / "n_lora" / "tasks"
        before = sha256_file(next(first.glob("0-*")) / "adapter.safetensors")
        assert slm(["train", "--task", "1", *run]) == 0
        assert sha256_file(next(first.glob("0-*")) / "adapter.safetensors") == before
        saved = load_file(str(next(first.glob("1-*")) / "adapter.safetensors"))
        pairs = [(saved[k], saved[k.replace("lora_A", "lora_B")]) for k in saved if "lora_A" in k]
        return code_l1(pairs).item()

    assert 0 < l1_of_task_1(2.0) < l1_of_task_1(0.0)


# ---- presets ------------------------------------------------------------------------------------


def test_the_official_preset_is_the_o_lora_scripts_and_uniform_the_harnesss() -> None:
    uniform = load_experiment(None, ["method=o_lora"])
    official = load_experiment(None, ["method=o_lora", "methods.o_lora.preset=official"])
    u, o = uniform.method, official.method
    assert u.lora_settings(uniform.cfg).targets == tuple(uniform.cfg.adapter.target_modules)
    assert u.lora_settings(uniform.cfg).scaling == 1.0 and u.lora_settings(uniform.cfg).dropout == 0.0
    settings = o.lora_settings(official.cfg)
    assert (settings.rank, settings.alpha, settings.dropout, settings.targets) == (8, 32.0, 0.1, ("q_proj", "v_proj"))
    assert [u.learning_rate(uniform.cfg, t) for t in (0, 1)] == [5e-3, 5e-3]
    assert [o.learning_rate(official.cfg, t) for t in (0, 1, 3)] == pytest.approx([1e-3, 1e-4, 1e-4])
    assert [o.lr_schedule(official.cfg, 24)(s) for s in (0, 12, 23)] == [1.0, 1.0, 1.0]  # constant, no warmup
    warm = u.lr_schedule(uniform.cfg, 20)
    assert warm(0) < 1 and warm(19) < warm(2)  # warmup then linear decay
    # an option set explicitly wins over the preset
    mine = load_experiment(None, ["method=o_lora", "methods.o_lora.preset=official", "methods.o_lora.lr=0.002",
                                  "methods.o_lora.target_modules=[q_proj]"])
    assert mine.method.learning_rate(mine.cfg, 1) == pytest.approx(2e-4)
    assert mine.method.lora_settings(mine.cfg).targets == ("q_proj",)


def test_the_official_preset_carries_the_long_scripts_lambda_schedule() -> None:
    exp = load_experiment(None, ["method=o_lora", "methods.o_lora.preset=official"])
    opts = exp.method.options(exp.cfg)
    assert opts.lambdas(1, "dbpedia") == (0.5, 0.0) and opts.lambdas(8, "dbpedia") == (0.5, 0.0)
    assert opts.lambdas(9, "dbpedia") == (5.0, 0.0) and opts.lambdas(14, "WiC") == (5.0, 0.3)  # from its 10th task
    assert opts.lambdas(3, "QQP") == (0.5, 0.1)
    uniform = get_method("o_lora").Options()
    assert uniform.lambdas(9, "QQP") == (0.5, 0.0)


@pytest.mark.parametrize("method", ["o_lora", "n_lora", "gainlora"])
def test_every_peer_has_the_official_preset_and_its_task_hash_follows_it(method: str) -> None:
    from pipeline.state.artifacts import sha256_json

    m = get_method(method)
    assert m.presets == ("official",) and m.role == "peer"
    base = load_experiment(None, [f"method={method}"])
    # N-LoRA's official q/v LoRAs meet SmolLM2's non-square v_proj: the paper form takes it
    extra = ["methods.n_lora.form=paper"] if method == "n_lora" else []
    official = load_experiment(None, [f"method={method}", f"methods.{method}.preset=official", *extra])
    assert sha256_json(m.settings(base.cfg)) != sha256_json(m.settings(official.cfg))


def test_an_official_o_lora_builds_alpha_32_dropout_lora_on_q_and_v_and_exports_it_at_scaling_1(
        tmp_path, tiny_model_dir) -> None:
    overrides = [*tiny_overrides(tmp_path / "run", tiny_model_dir, steps=2), "method=o_lora",
                 "methods.o_lora.preset=official", "methods.o_lora.lr=0.02"]
    assert slm(["prepare", *overrides]) == 0
    assert slm(["train", "--task", "0", *overrides]) == 0
    exp = load_experiment(None, overrides)
    model = exp.method.predictor(exp, 0, torch.device("cpu")).model
    layers = lora_layers(model)
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m in layers}
    assert names == {"q_proj", "v_proj"}
    assert all(layer.scaling[adapter_name(0)] == 4.0 and layer.lora_dropout[adapter_name(0)].p == 0.1
               for layer in layers)
    exported = exp.method.export(exp, 0).lora
    layer = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
    a, b = exported["model.layers.0.self_attn.q_proj"]
    peft_delta = 4.0 * layer.lora_B[adapter_name(0)].weight @ layer.lora_A[adapter_name(0)].weight
    assert torch.allclose(b @ a, peft_delta, atol=1e-6) and peft_delta.abs().sum() > 0


def test_the_plan_sizes_a_peer_by_the_lora_its_preset_builds() -> None:
    from pipeline.planning.memory import load_of

    uniform = load_experiment(None, ["method=o_lora"])
    official = load_experiment(None, ["method=o_lora", "methods.o_lora.preset=official"])
    u, o = load_of(uniform.cfg, uniform.method), load_of(official.cfg, official.method)
    assert u.modules == ("o_proj",) and o.modules == ("q_proj", "v_proj")
    layers = 30  # SmolLM2: q_proj 576 -> 576, v_proj 576 -> 192, o_proj 576 -> 576; rank 8
    assert u.trainable_params == layers * 8 * (576 + 576)
    assert o.trainable_params == layers * 8 * ((576 + 576) + (576 + 192))
    assert o.saved_input_features > u.saved_input_features  # dropout: each LoRA keeps its own dropped input
