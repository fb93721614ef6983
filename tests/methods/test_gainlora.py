"""gainlora: a LoRA branch and a gate per task; earlier branches and gates frozen, the new gate
trained only outside the earlier tasks' subspaces (so it stays at 0 on their inputs). Tested like
o_lora: byte-identical earlier files, earlier gates unchanged, plan load, export, a tiny run."""

from __future__ import annotations

import pytest
import torch

from pipeline.cli import main as slm
from pipeline.errors import ConfigError
from pipeline.experiment import load_experiment
from pipeline.methods.lora.gainlora import GATE_FILE
from pipeline.methods.lora.gates import (
    GateBank,
    TaskGate,
    complement,
    covariance,
    grow_basis,
    initial_key,
    prompt_means,
)
from pipeline.state.artifacts import read_safetensors, sha256_file
from tests.tiny import tiny_overrides

# ---- the gates on their own ---------------------------------------------------------------------


def _subspace_data(n: int, dim: int, rank: int, seed: int) -> torch.Tensor:
    """n points of a random `rank`-dimensional subspace of R^dim, of about equal spread along each of
    its directions (the threshold counts squared eigenvalues, which a lopsided spread would hide)."""
    gen = torch.Generator().manual_seed(seed)
    directions, _ = torch.linalg.qr(torch.randn(dim, rank, generator=gen))  # (dim, rank) orthonormal
    return torch.randn(n, rank, generator=gen) @ directions.T


def test_the_basis_rule_is_the_official_gpm_one() -> None:
    """The first task keeps the directions whose running share of squared singular values stays below
    the threshold (`torch.sum(torch.cumsum(ratio) < threshold)`: the one that crosses it is left out);
    a later task adds the residual's top directions until the covered share reaches the threshold."""
    old = _subspace_data(200, 16, 3, seed=0)  # three directions of equal spread: shares 1/3 each
    basis = grow_basis(None, covariance(old), 0.995)
    assert basis.shape == (16, 2) and torch.allclose(basis.T @ basis, torch.eye(2), atol=1e-5)
    grown = grow_basis(basis, covariance(old), 0.995)  # the crossing direction now counts
    assert grown.shape == (16, 3) and torch.equal(grown[:, :2], basis)
    assert (old - old @ grown @ grown.T).abs().max() < 1e-3  # the old inputs lie in its span
    assert grow_basis(grown, covariance(old), 0.995).shape == (16, 3)  # nothing new: nothing added
    more = grow_basis(grown, covariance(_subspace_data(200, 16, 2, seed=1)), 0.995)
    assert more.shape == (16, 5) and torch.allclose(more.T @ more, torch.eye(5), atol=1e-4)


def _span(x: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of the rows' span (d, k)."""
    u, s, _ = torch.linalg.svd(x.T.double(), full_matrices=False)
    return u[:, s > 1e-6 * s[0]].float()


def test_a_new_gate_is_zero_on_inputs_of_the_recorded_subspaces_whatever_its_training_does() -> None:
    """The official mechanism, exactly: the new gate starts as the previous one, its key outside the
    earlier outputs' subspace, and trains only outside the earlier subspaces."""
    dim, hidden = 16, 8
    gen = torch.Generator().manual_seed(0)
    prev = TaskGate(torch.randn(hidden, dim, generator=gen) * 0.3, torch.randn(dim, hidden, generator=gen) * 0.3,
                    torch.randn(dim, generator=gen))
    # few earlier inputs, so that their features span a proper subspace at every layer (the
    # nonlinearities make a large sample span everything; the threshold rule then keeps the dominant part)
    old, new = _subspace_data(5, dim, 3, seed=1), _subspace_data(300, dim, 3, seed=2)
    h_old, f_old = prev.features(old)
    b_in, b_hidden, b_out = _span(old), _span(h_old), _span(f_old)
    assert b_out.shape[1] < dim
    w1, w2, _ = prev.weights()
    key = initial_key(prev.features(new)[1], b_out, 3.0)
    assert (key @ b_out).abs().max() < 1e-4 and key.norm().item() == pytest.approx(3.0, rel=1e-4)
    gate = TaskGate(w1, w2, key, (complement(b_in, dim), complement(b_hidden, hidden), complement(b_out, dim)))
    with torch.no_grad():  # stands for any training: arbitrary updates of every trained tensor
        for p in gate.trainable():
            p.copy_(torch.randn(p.shape, generator=gen))
    assert torch.allclose(gate.features(old)[1], f_old, atol=1e-4)  # every layer computes what it did
    assert gate(old).max() < 1e-3  # earlier inputs: the gate stays shut
    assert gate(new).mean() > 0.05  # its own task's inputs: open


def test_the_gate_weights_repeat_per_beam_and_a_branch_without_weights_is_an_error() -> None:
    bank = GateBank([])
    with pytest.raises(RuntimeError, match="without gate weights"):
        bank.weight_of(0, 2)
    bank.current = torch.tensor([[0.1, 0.9], [0.5, 0.2]])
    assert bank.weight_of(1, 4).flatten().tolist() == pytest.approx([0.9, 0.9, 0.2, 0.2])
    with pytest.raises(RuntimeError, match="batch of 3"):
        bank.weight_of(0, 3)


def test_a_prompt_mean_ignores_padding_on_either_side() -> None:
    embed = torch.nn.Embedding(10, 4)
    right = prompt_means(embed, torch.tensor([[3, 4, 5, 0, 0]]), torch.tensor([[1, 1, 1, 0, 0]]))
    left = prompt_means(embed, torch.tensor([[0, 3, 4, 5]]), torch.tensor([[0, 1, 1, 1]]))
    assert torch.allclose(right, left) and torch.allclose(right, embed.weight[3:6].mean(0, keepdim=True))


# ---- the method on a tiny model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory, tiny_model_dir):
    """Tasks 0 and 1 trained with gainlora on the tiny model; task 0's file hashes taken before task 1."""
    out = tmp_path_factory.mktemp("gainlora")
    overrides = [*tiny_overrides(out / "run", tiny_model_dir, steps=3), "method=gainlora", "methods.gainlora.lr=0.02"]
    assert slm(["prepare", *overrides]) == 0
    assert slm(["train", "--task", "0", *overrides]) == 0
    exp = load_experiment(None, overrides)
    first = exp.layout.task_dir(0, exp.cfg.tasks[0].name)
    before = {f: sha256_file(first / f) for f in ("adapter.safetensors", GATE_FILE)}
    gate0_after_task0 = exp.method.predictor(exp, 0, torch.device("cpu"))
    assert slm(["train", "--task", "1", *overrides]) == 0
    return exp, overrides, before, gate0_after_task0


def _train_records(exp, t: int) -> list[dict]:
    from pipeline.data.prepared import load_prepared

    return [dict(r) for r in load_prepared(exp.cfg, exp.layout)[exp.cfg.tasks[t].name]["train"]]


def test_training_a_later_task_leaves_the_earlier_branch_and_gate_files_byte_identical(two_tasks) -> None:
    exp, _, before, _ = two_tasks
    first = exp.layout.task_dir(0, exp.cfg.tasks[0].name)
    assert {f: sha256_file(first / f) for f in before} == before


def test_an_earlier_gate_answers_its_inputs_as_it_did_before_the_later_task(two_tasks) -> None:
    exp, _, _, after_task0 = two_tasks
    after_task1 = exp.method.predictor(exp, 1, torch.device("cpu"))
    records = _train_records(exp, 0)
    w0 = after_task0.route(records, 0).weights  # (N, 1): gate 0 alone
    w1 = after_task1.route(records, 0).weights  # (N, 2): gates 0 and 1
    assert torch.equal(w0[:, 0], w1[:, 0])
    # and the new gate is far more open on its own task's inputs than on the earlier task's
    own = after_task1.route(_train_records(exp, 1), 1).weights[:, 1]
    assert w1[:, 1].mean() < 0.5 * own.mean()


def test_the_new_gate_moved_only_outside_the_earlier_tasks_subspaces(two_tasks) -> None:
    exp, *_ = two_tasks
    g0, g1 = (read_safetensors(exp.layout.task_dir(j, exp.cfg.tasks[j].name) / GATE_FILE) for j in (0, 1))
    assert (g1["w1"] - g0["w1"]).abs().max() > 0  # it trained
    assert ((g1["w1"] - g0["w1"]) @ g0["basis_in"]).abs().max() < 1e-5
    assert ((g1["w2"] - g0["w2"]) @ g0["basis_hidden"]).abs().max() < 1e-5
    assert (g1["key"] @ g0["basis_out"]).abs().max() < 1e-4
    assert g1["basis_in"].shape[1] >= g0["basis_in"].shape[1]  # task 1's subspace grown onto task 0's


def test_only_the_new_branch_and_the_new_gate_train(two_tasks) -> None:
    from pipeline.runtime.models import load_base_model

    exp, *_ = two_tasks
    trainer = exp.method.trainer(exp, 1, _train_records(exp, 1), torch.device("cpu"),
                                 lambda: load_base_model(exp.cfg.model.name_or_path, "float32", "none",
                                                         torch.device("cpu")))
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert {id(p) for p in trainer.params} == {id(p) for p in trainer.model.parameters() if p.requires_grad}
    assert trainable and all(".task1." in n or "gainlora_gates.gates.1." in n for n in trainable)
    assert {n.rsplit(".", 1)[-1] for n in trainable if "gainlora_gates" in n} == {"d1", "d2", "dk"}


def test_generate_computes_the_gates_from_its_prompt_as_eval_does(two_tasks) -> None:
    from pipeline.prompts.batching import TokenCaps, encode_prompts_left_padded
    from pipeline.runtime.models import load_tokenizer

    exp, *_ = two_tasks
    predictor = exp.method.predictor(exp, 1, torch.device("cpu"))
    record = _train_records(exp, 1)[0]
    enc = encode_prompts_left_padded(load_tokenizer(exp.cfg.model.name_or_path), exp.cfg.model.prompt_format,
                                     [record], TokenCaps.of(exp.cfg.model))
    with torch.no_grad():
        predictor.model.generate(**enc, max_new_tokens=2, do_sample=False)
    assert torch.allclose(predictor.model.gainlora_gates.current, predictor.route([record], 1).weights)


def test_eval_reports_how_often_the_top_gate_is_the_inputs_own_task(two_tasks) -> None:
    import json

    exp, overrides, *_ = two_tasks
    assert slm(["eval", "--after", "1", *overrides]) == 0
    row = json.loads(exp.layout.eval_row(1).read_text())
    assert row["split"] == "test" and 0.0 <= row["retrieval"]["accuracy"] <= 1.0
    assert sum(map(sum, row["retrieval"]["confusion"])) > 0


def test_export_and_serve_refuse_with_the_reason(two_tasks) -> None:
    from pipeline.serve.session import load_session

    exp, *_ = two_tasks
    with pytest.raises(ConfigError, match="weighted by its gate per input"):
        exp.method.export(exp, 1)
    with pytest.raises(ConfigError, match="slm serve cannot serve method gainlora"):
        load_session(exp, torch.device("cpu"))


def test_the_plan_counts_every_task_s_branch_and_gate_resident_and_the_newest_trainable() -> None:
    from pipeline.planning.memory import load_of

    exp = load_experiment(None, ["method=gainlora"])
    lora = load_experiment(None, ["method=o_lora"])
    load, plain = load_of(exp.cfg, exp.method), load_of(lora.cfg, lora.method)
    gate = 2 * 576 * 100 + 576  # SmolLM2: d 576, the gate's hidden width 100
    tasks = len(exp.cfg.tasks)
    assert load.trainable_params == plain.trainable_params + gate
    assert load.resident_params == tasks * (plain.trainable_params + gate)
    assert load.stored_per_task_bytes > plain.stored_per_task_bytes


def test_a_checkpoint_of_the_model_holds_the_new_gates_training_and_restores_it(two_tasks) -> None:
    """What `slm train` resumes from: DeepSpeed saves the module's state dict and loads it strictly. The
    new gate's trained tensors are in it; the frozen gates and subspaces are rebuilt from the task files."""
    from pipeline.runtime.models import load_base_model

    exp, *_ = two_tasks

    def build():
        return exp.method.trainer(exp, 1, _train_records(exp, 1), torch.device("cpu"),
                                  lambda: load_base_model(exp.cfg.model.name_or_path, "float32", "none",
                                                          torch.device("cpu")))

    trained, fresh = build(), build()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in trained.params:
            p.add_(torch.randn(p.shape, generator=gen) * 0.01)
    state = trained.model.state_dict()
    assert {k for k in state if "gainlora_gates" in k} == {f"gainlora_gates.gates.1.{n}" for n in ("d1", "d2", "dk")}
    fresh.model.load_state_dict(state, strict=True)
    new_trained, new_fresh = trained.model.gainlora_gates.gates[1], fresh.model.gainlora_gates.gates[1]
    assert all(torch.equal(a, b) for a, b in zip(new_trained.weights(), new_fresh.weights(), strict=True))
