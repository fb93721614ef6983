"""The per-routing branch cache of JareLinear: same tokens as without it, and never stale."""

from __future__ import annotations

import torch

from pipeline.jare.inject import inject_jare
from pipeline.jare.routing import Routing
from tests.tiny import randomize_slots, tiny_llama


def make_bank(tasks: int = 3, slots: int = 4, rank: int = 3):
    model = tiny_llama()
    bank = inject_jare(model, ["o_proj", "v_proj"], rank=rank, slots_per_task=slots)
    for t in range(tasks):
        bank.add_task(f"t{t}", seed=t)
        randomize_slots(bank, t, seed=10 + t)
    return model, bank


def mixed_routing(batch: int, total_slots: int, k: int = 2, seed: int = 0) -> Routing:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(total_slots, generator=gen)[:k] for _ in range(batch)])
    w = torch.rand(batch, k, generator=gen) + 0.1
    return Routing(ids, w / w.sum(-1, keepdim=True))


def set_cache(bank, enabled: bool) -> None:
    for layer in bank.layers.values():
        layer.jare_cache = enabled
        layer._branch_cache = None


def greedy(model, bank, routing, ids, mask, new: int = 12):
    with torch.no_grad(), bank.routed(routing):
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                              do_sample=False, pad_token_id=0)


def test_cached_branch_generates_the_same_tokens_as_the_uncached_one():
    model, bank = make_bank()
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 128, (4, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # one left-padded row
    routing = mixed_routing(4, 12)
    set_cache(bank, False)
    plain = greedy(model, bank, routing, ids, mask)
    set_cache(bank, True)
    cached = greedy(model, bank, routing, ids, mask)
    assert torch.equal(plain, cached)
    assert all(layer._branch_cache is not None for layer in bank.layers.values())
    # and the logits of a no-grad forward are bit-identical, cached or not
    with torch.no_grad(), bank.routed(routing):
        again = model(input_ids=ids, attention_mask=mask).logits
        set_cache(bank, False)
        fresh = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(again, fresh)


def logits(model, bank, routing, ids) -> torch.Tensor:
    with torch.no_grad(), bank.routed(routing):
        return model(input_ids=ids).logits


def uncached_logits(model, bank, routing, ids) -> torch.Tensor:
    set_cache(bank, False)
    try:
        return logits(model, bank, routing, ids)
    finally:
        set_cache(bank, True)


def test_the_cache_follows_parameter_changes_tasks_merges_and_new_routings():
    model, bank = make_bank()
    ids = torch.randint(3, 128, (2, 5), generator=torch.Generator().manual_seed(0))
    routing = mixed_routing(2, 12)
    logits(model, bank, routing, ids)  # fills the cache
    randomize_slots(bank, 1, seed=99)  # an in-place change of slot values (copy_)
    assert torch.equal(logits(model, bank, routing, ids), uncached_logits(model, bank, routing, ids))

    bank.add_task("t3", seed=3)  # a new task empties the cache; old slot ids still mean the same
    randomize_slots(bank, 3, seed=7)
    wider = Routing(torch.tensor([[12, 13], [0, 14]]), torch.tensor([[0.5, 0.5], [0.3, 0.7]]))
    assert torch.equal(logits(model, bank, wider, ids), uncached_logits(model, bank, wider, ids))
    bank.remove_task("t0")  # ids shift down: task 3 is now slots 8..11
    shifted = Routing(torch.tensor([[8, 9], [0, 10]]), wider.weights)
    assert torch.equal(logits(model, bank, shifted, ids), uncached_logits(model, bank, shifted, ids))

    base = logits(model, bank, None, ids)
    with bank.merged(shifted.slot_ids[0], shifted.weights[0]):
        assert all(layer._branch_cache is None for layer in bank.layers.values())
    assert torch.allclose(logits(model, bank, None, ids), base, atol=1e-6)  # W + d - d, in float
    # an equal routing in a new object is a new cache entry, not a stale hit
    other = Routing(shifted.slot_ids.flip(0), shifted.weights.flip(0))
    assert torch.equal(logits(model, bank, other, ids), uncached_logits(model, bank, other, ids))


def test_nothing_is_cached_while_gradients_are_on():
    model, bank = make_bank()
    params = bank.train_only(2)
    routing = Routing.single_task(2, 4, batch_size=2)
    ids = torch.randint(3, 128, (2, 5), generator=torch.Generator().manual_seed(1))
    with bank.routed(routing):
        model(input_ids=ids, labels=ids).loss.backward()
    assert all(layer._branch_cache is None for layer in bank.layers.values())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params[0::2])  # U gets gradients
