"""Forward transfer without forgetting (methods.slm.transfer): a new task may start from, or route
through, earlier tasks' retrieved slots, and no byte of an earlier task ever changes."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import DtkrSpec
from pipeline.dtkr.keys import group_normalize
from pipeline.dtkr.router import Router
from pipeline.jare.inject import inject_jare
from pipeline.jare.routing import Routing
from pipeline.methods.jare.method import most_retrieved_slots
from tests.tiny import randomize_slots, tiny_llama

DIM, GROUPS, SLOTS = 48, 6, 4


def task_keys(seed: int) -> torch.Tensor:
    return group_normalize(torch.randn(SLOTS, DIM, generator=torch.Generator().manual_seed(seed)), GROUPS)


def router(through_earlier: bool, top_k: int = 2) -> Router:
    return Router.from_keys([(t, task_keys(i)) for i, t in enumerate("abc")], None,
                            DtkrSpec(groups=GROUPS, top_k=top_k), SLOTS, through_earlier=through_earlier)


def near(keys: torch.Tensor, slot: int, n: int, seed: int = 0) -> torch.Tensor:
    """n queries close to one slot's key (flattened back to the encoder's (D,) shape)."""
    noise = 0.05 * torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))
    return keys[slot].reshape(1, DIM) + noise


def test_through_earlier_adds_the_top_k_slots_of_the_tasks_before_the_samples_own_task() -> None:
    plain, through = router(False), router(True)
    q = torch.cat([near(task_keys(2), 1, 3), near(task_keys(1), 0, 3), near(task_keys(0), 2, 3)])  # c, b, a
    own = plain.route_embeddings(q)
    mixed = through.route_embeddings(q)
    assert plain.top1_tasks(own) == [2, 2, 2, 1, 1, 1, 0, 0, 0]
    assert torch.equal(mixed.slot_ids[:, :2], own.slot_ids) and torch.equal(mixed.weights[:, :2], own.weights)
    extra_tasks = (mixed.slot_ids[:, 2:] // SLOTS).tolist()
    assert all(t < 2 for row in extra_tasks[:3] for t in row)  # c's queries: slots of a or b
    assert all(t == 0 for row in extra_tasks[3:6] for t in row)  # b's queries: slots of a only
    assert torch.allclose(mixed.weights[:6, 2:].sum(1), torch.ones(6))  # earlier slots weighted among themselves
    assert not mixed.weights[6:, 2:].any()  # the first task has no earlier task: weight-0 padding
    # training task c (restricted to its own slots) routes through the same earlier slots as inference
    train = through.route_embeddings(q[:3], tasks=["c"])
    assert torch.equal(train.slot_ids[:, 2:], mixed.slot_ids[:3, 2:]) and train.task is None


def test_a_sample_of_the_first_task_keeps_the_one_task_fast_path() -> None:
    routing = router(True).route_embeddings(near(task_keys(0), 0, 4), tasks=["a"])
    assert routing.task == 0 and routing.slot_ids.shape == (4, 2)


def test_the_most_retrieved_earlier_slots_come_first_and_repeat_when_few_were_retrieved() -> None:
    r = router(False, top_k=1)
    q = torch.cat([near(task_keys(1), 3, 5), near(task_keys(0), 1, 2)])  # mostly b's slot 3, then a's slot 1
    assert most_retrieved_slots(r, q, ["a", "b"], 4) == [7, 1, 7, 1]
    assert all(s < 8 for s in most_retrieved_slots(r, near(task_keys(2), 0, 6), ["a", "b"], 4))  # never c's own


def test_training_with_copied_and_routed_earlier_slots_changes_no_byte_of_an_earlier_task() -> None:
    model = tiny_llama()
    bank = inject_jare(model, ["o_proj"], rank=3, slots_per_task=SLOTS)
    for i, name in enumerate("ab"):
        bank.add_task(name, seed=i)
        randomize_slots(bank, i, seed=10 + i)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    t = bank.add_task("c", seed=2)
    bank.copy_slots(t, [5, 1, 5, 1])
    for layer in bank.layers.values():
        u, v = layer.task_parameters(t)
        assert torch.equal(u[0], layer.task_parameters(1)[0][1]) and torch.equal(v[1], layer.task_parameters(0)[1][1])
    params = bank.train_only(t)
    opt = torch.optim.AdamW(params, lr=1e-2)
    routing = Routing(torch.tensor([[8, 9, 5, 1]] * 4), torch.tensor([[0.6, 0.4, 0.5, 0.5]] * 4))  # own + earlier
    inp = torch.randint(3, 100, (4, 8))
    for _ in range(3):
        with bank.routed(routing):
            loss = model(inp, labels=inp).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = {n for n, p in model.named_parameters() if n in frozen and not torch.equal(p, frozen[n])}
    assert not changed  # earlier tasks' slots and the base: byte for byte
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params if p.shape[-1] == 32)  # c trained


# ---- through the stages ------------------------------------------------------------------------


@pytest.mark.parametrize("transfer", ["init_from_retrieved", "route_retrieved"])
def test_a_transferring_task_leaves_every_file_of_the_earlier_task_untouched(tmp_path, tiny_model_dir, transfer):
    import json

    from pipeline.cli import main as slm
    from pipeline.state.artifacts import sha256_file

    overrides = [f"output_dir={tmp_path / 'run'}", f"model.name_or_path={tiny_model_dir}", "data.synthetic_size=40",
                 "train.max_steps=3", "train.micro_batch_size=4", "train.save_every=3",
                 "eval.max_records_per_task=4", "eval.max_new_tokens=3", "model.max_seq_len=64",
                 f"methods.slm.transfer={transfer}", "methods.slm.slots_per_task=4", "dtkr.top_k=2"]  # several slots
    assert slm(["prepare", *overrides]) == 0
    assert slm(["train", "--task", "0", *overrides]) == 0
    first = next((tmp_path / "run" / "slm" / "tasks").glob("0-*"))
    files = {p.name: sha256_file(p) for p in first.iterdir()}
    assert slm(["run", *overrides]) == 0  # task 1 transfers from task 0, then index, eval, report
    assert {p.name: sha256_file(p) for p in first.iterdir()} == files
    done = json.loads((next((tmp_path / "run" / "slm" / "tasks").glob("1-*")) / "DONE").read_text())
    if transfer == "init_from_retrieved":
        assert {d["task"] for d in done["init_from_slots"]} == {"sentiment"} and len(done["init_from_slots"]) == 4
    metrics = json.loads((tmp_path / "run" / "slm" / "eval" / "metrics.json").read_text())
    assert metrics["forgetting"] is not None and len(metrics["matrix"]) == 3
