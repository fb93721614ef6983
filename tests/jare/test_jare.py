import copy

import pytest
import torch

from pipeline.errors import CheckpointError, NoTargetModuleError
from pipeline.jare.inject import inject_jare
from pipeline.jare.layer import JareLinear
from pipeline.jare.routing import Routing
from tests.tiny import randomize_slots, tiny_llama


def make_bank(tasks=("a", "b", "c"), targets=("o_proj",), slots=4, rank=3):
    model = tiny_llama()
    bank = inject_jare(model, list(targets), rank=rank, slots_per_task=slots)
    for i, name in enumerate(tasks):
        bank.add_task(name, seed=i)
        randomize_slots(bank, i, seed=10 + i)
    return model, bank


def random_routing(batch: int, total_slots: int, k: int, seed: int = 0) -> Routing:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(total_slots, generator=gen)[:k] for _ in range(batch)])
    w = torch.rand(batch, k, generator=gen) + 0.1
    return Routing(ids, w / w.sum(-1, keepdim=True))


def test_injection_wraps_every_target_and_keeps_the_transformers_class():
    model, bank = make_bank(targets=("o_proj", "v_proj"))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert len(bank.layers) == 2 * model.config.num_hidden_layers
    assert all(isinstance(model.get_submodule(n), JareLinear) for n in bank.layers)
    # GQA: v_proj is narrower than the hidden size, and the slots follow out_features
    v = model.get_submodule("model.layers.0.self_attn.v_proj")
    assert v.task_parameters(0)[0].shape == (4, 3, v.out_features) and v.out_features < v.in_features


def test_unknown_target_raises_a_named_error_before_touching_the_model():
    model = tiny_llama()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(NoTargetModuleError, match="o_proj"):
        inject_jare(model, ["does_not_exist"], rank=2, slots_per_task=2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_side_branch_equals_the_dense_reparameterised_weight():
    model, bank = make_bank()
    x = torch.randn(5, 7, model.config.hidden_size)
    routing = random_routing(5, 12, k=2)
    for layer in bank.layers.values():
        with bank.routed(routing):
            side = layer(x)
        for b in range(5):
            dense_w = layer.base_layer.weight + layer.delta_weight(routing.slot_ids[b], routing.weights[b])
            expected = x[b] @ dense_w.T
            assert (side[b] - expected).abs().max().item() <= 1e-5
        assert (side - layer.base_layer(x)).abs().max() > 1e-3  # the branch is not a no-op


def test_merge_equals_side_branch_and_unmerge_restores_w():
    model, bank = make_bank()
    ids = torch.tensor([[1, 6]])
    w = torch.tensor([[0.3, 0.7]])
    inp = torch.randint(3, 100, (1, 9))
    before = {n: layer.base_layer.weight.detach().clone() for n, layer in bank.layers.items()}
    with bank.routed(Routing(ids, w)):
        routed_logits = model(inp).logits
    with bank.merged(ids[0], w[0]):
        merged_logits = model(inp).logits
    assert (routed_logits - merged_logits).abs().max().item() <= 1e-4
    for n, layer in bank.layers.items():
        assert (layer.base_layer.weight - before[n]).abs().max().item() <= 1e-6


def test_routing_restricted_to_one_task_equals_a_single_task_adapter():
    model, bank = make_bank()
    single, single_bank = make_bank(tasks=("b",))
    with torch.no_grad():
        for mine, theirs in zip(bank.task_parameters(1), single_bank.task_parameters(0), strict=True):
            theirs.copy_(mine)
    inp = torch.randint(3, 100, (3, 6))
    with bank.routed(Routing.single_task(1, 4, 3)):
        a = model(inp).logits
    with single_bank.routed(Routing.single_task(0, 4, 3)):
        b = single(inp).logits
    assert torch.allclose(a, b, atol=1e-5)
    # the same slots through the all-tasks gather path (no task hint) agree too
    r = Routing.single_task(1, 4, 3)
    with bank.routed(Routing(r.slot_ids, r.weights, task=None)):
        c = model(inp).logits
    assert torch.allclose(a, c, atol=1e-5)


def test_training_task_t_changes_no_byte_of_earlier_tasks_or_the_base():
    model, bank = make_bank(tasks=("a", "b"))
    t = bank.add_task("c", seed=7)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = bank.train_only(t)
    assert {id(p) for p in params} == {id(p) for p in model.parameters() if p.requires_grad}
    opt = torch.optim.AdamW(params, lr=1e-2)
    inp = torch.randint(3, 100, (4, 8))
    for _ in range(3):
        with bank.routed(Routing.single_task(t, 4, 4)):
            loss = model(inp, labels=inp).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = {id(p) for p in bank.task_parameters(t)}
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, frozen[n])]
    assert changed and all(id(dict(model.named_parameters())[n]) in trained for n in changed)


def test_routing_expands_for_beam_search():
    model, bank = make_bank()
    inp = torch.randint(3, 100, (2, 5))
    routing = random_routing(2, 12, k=2, seed=3)
    with bank.routed(routing):
        out = model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=4, num_beams=3,
                             do_sample=False, pad_token_id=0)
    # sample 1 alone must give the same beams: routing rows stayed with their samples
    with bank.routed(Routing(routing.slot_ids[1:], routing.weights[1:])):
        solo = model.generate(inp[1:], attention_mask=torch.ones_like(inp[1:]), max_new_tokens=4, num_beams=3,
                              do_sample=False, pad_token_id=0)
    assert torch.equal(out[1], solo[0])


def test_gradient_checkpointing_recompute_sees_the_same_routing():
    model, bank = make_bank(tasks=("a",))
    inp = torch.randint(3, 100, (2, 6))
    routing = Routing.single_task(0, 4, 2)
    bank.train_only(0)

    def grads(checkpointing: bool):
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
        model.zero_grad()
        with bank.routed(routing):
            model(inp, labels=inp).loss.backward()
        return [p.grad.clone() for p in bank.task_parameters(0)]

    plain, ckpt = grads(False), grads(True)
    model.eval()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, ckpt, strict=True))
    assert any(g.abs().sum() > 0 for g in plain)


def test_save_load_round_trip_is_exact(tmp_path):
    model, bank = make_bank(tasks=("a", "b"))
    bank.save_task(1, tmp_path / "b.safetensors")
    _, other = make_bank(tasks=("a",))
    t = other.load_task("b", tmp_path / "b.safetensors")
    for x, y in zip(bank.task_parameters(1), other.task_parameters(t), strict=True):
        assert torch.equal(x, y)


def test_loading_an_adapter_of_another_rank_fails_clearly_and_leaves_no_task(tmp_path):
    _, bank = make_bank(tasks=("a",), rank=3)
    bank.save_task(0, tmp_path / "a.safetensors")
    _, other = make_bank(tasks=(), rank=5)
    with pytest.raises(CheckpointError, match="rank"):
        other.load_task("a", tmp_path / "a.safetensors")
    assert other.num_tasks == 0


def test_removing_a_task_keeps_the_others_byte_for_byte():
    _, bank = make_bank()
    a = [p.detach().clone() for p in bank.task_parameters(0)]
    c = [p.detach().clone() for p in bank.task_parameters(2)]
    bank.remove_task("b")
    assert bank.task_names == ["a", "c"]
    assert all(torch.equal(x, y) for x, y in zip(a, bank.task_parameters(0), strict=True))
    assert all(torch.equal(x, y) for x, y in zip(c, bank.task_parameters(1), strict=True))
