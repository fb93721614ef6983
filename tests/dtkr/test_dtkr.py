import numpy as np
import pytest
import torch

from pipeline.config import DtkrSpec
from pipeline.dtkr.keys import (
    centrifugal_loss,
    group_normalize,
    initial_keys,
    key_loss,
    learn_task_keys,
    retrieve,
    similarity,
)
from pipeline.dtkr.store import KeyStore
from pipeline.errors import CheckpointError


def random_keys(slots: int, groups: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return group_normalize(torch.randn(slots, dim, generator=g), groups)


def filled_store(tasks=("a", "b", "c"), slots=4, groups=6, dim=48) -> KeyStore:
    store = KeyStore(dim, groups, slots, encoder="test-encoder")
    for i, t in enumerate(tasks):
        store.add_task(t, random_keys(slots, groups, dim, seed=i))
    return store


def test_similarity_is_the_mean_of_per_group_cosines():
    q = torch.randn(3, 48)
    k = torch.randn(5, 48)
    qg, kg = group_normalize(q, 6), group_normalize(k, 6)
    manual = torch.stack([torch.stack([
        torch.nn.functional.cosine_similarity(q[b].view(6, 8), k[s].view(6, 8), dim=-1).mean()
        for s in range(5)]) for b in range(3)])
    assert torch.allclose(similarity(qg, kg), manual, atol=1e-6)


def test_groups_must_divide_the_dimension():
    with pytest.raises(ValueError, match="does not divide"):
        group_normalize(torch.randn(2, 50), 6)


def test_faiss_retrieval_equals_brute_force_torch():
    store = filled_store()
    q = torch.randn(16, 48)
    sims, ids = store.search(q, 3)
    routing, brute = retrieve(group_normalize(q, 6), store.all_keys(), 3)
    assert np.array_equal(ids, routing.slot_ids.numpy())
    assert np.allclose(sims, brute.gather(1, routing.slot_ids).numpy(), atol=1e-5)
    # restricted to one task, both agree as well and stay inside its slots
    allowed = torch.zeros(12, dtype=torch.bool)
    allowed[4:8] = True
    _, rid = store.search(q, 2, tasks=["b"])
    r2, _ = retrieve(group_normalize(q, 6), store.all_keys(), 2, allowed=allowed)
    assert np.array_equal(rid, r2.slot_ids.numpy()) and set(rid.ravel()) <= set(range(4, 8))


def test_weights_sum_to_one_in_both_weightings():
    store = filled_store()
    q = torch.randn(8, 48)
    for weighting in ("normalize", "softmax"):
        r = store.route(q, 2, weighting=weighting)
        assert torch.allclose(r.weights.sum(-1), torch.ones(8), atol=1e-6) and (r.weights >= 0).all()


def test_per_batch_mode_gives_every_sample_the_same_slots():
    store = filled_store()
    r = store.route(torch.randn(8, 48), 2, per_batch=True)
    assert (r.slot_ids == r.slot_ids[0]).all()
    per_sample = store.route(torch.randn(64, 48), 2)
    assert len({tuple(x) for x in per_sample.slot_ids.tolist()}) > 1


def test_removing_a_task_keeps_the_other_keys_and_renumbers_ids():
    store = filled_store()
    c_keys = store.all_keys()[8:12].clone()
    store.remove_task("b")
    assert store.tasks == ["a", "c"] and store.index.ntotal == 8
    assert torch.equal(store.all_keys()[4:8], c_keys)
    q = c_keys[0].reshape(1, -1)
    _, ids = store.search(q, 1)
    assert store.task_of(int(ids[0, 0])) == "c"


def test_save_load_round_trip_is_exact_and_checks_the_encoder(tmp_path):
    store = filled_store()
    store.save(tmp_path / "index")
    loaded = KeyStore.load(tmp_path / "index", encoder="test-encoder")
    assert loaded.tasks == store.tasks and torch.equal(loaded.all_keys(), store.all_keys())
    with pytest.raises(CheckpointError, match="encoder"):
        KeyStore.load(tmp_path / "index", encoder="another-encoder")


def test_key_loss_rewards_keys_near_the_queries():
    q = group_normalize(torch.randn(32, 48), 6)
    near = q[:4].clone()
    far = -q[:4].clone()
    assert key_loss(q, near, 0.0) < key_loss(q, far, 0.0)


def clustered_tasks(n_per_task: int, tasks: int = 3, dim: int = 48, seed: int = 0, spread: float = 3.0):
    """Well separated clusters stand in for different domains' query embeddings."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(tasks, dim, generator=gen) * spread
    return [centers[t] + torch.randn(n_per_task, dim, generator=gen) for t in range(tasks)]


def retrieval_accuracy(spec: DtkrSpec, train, held_out, slots: int = 4) -> float:
    store = KeyStore(train[0].shape[1], spec.groups, slots, "test")
    learned = []
    for t, emb in enumerate(train):
        keys, _ = learn_task_keys(emb, spec, slots, seed=t, previous_keys=torch.cat(learned) if learned else None)
        learned.append(keys)
        store.add_task(str(t), keys)
    truth = torch.arange(len(held_out)).repeat_interleave(len(held_out[0]))
    _, ids = store.search(torch.cat(held_out), 1)
    return (torch.from_numpy(ids[:, 0]) // slots == truth).float().mean().item()


def test_learned_keys_identify_their_task_on_held_out_queries():
    data = clustered_tasks(250)
    spec = DtkrSpec()  # the shipped defaults
    assert retrieval_accuracy(spec, [d[:200] for d in data], [d[200:] for d in data]) >= 0.95


def test_the_key_objective_is_what_makes_random_keys_retrieve():
    """From the reference's orthogonal (random) init, only the masked top-2 objective moves the
    keys onto their task: without learning (0 epochs) retrieval is near chance."""
    data = clustered_tasks(250)
    train, held_out = [d[:200] for d in data], [d[200:] for d in data]
    for objective in ("group_top2", "slot_top2"):
        learned = DtkrSpec(key_init="orthogonal", key_objective=objective, key_lr=0.05, key_epochs=10)
        assert retrieval_accuracy(learned, train, held_out) >= 0.95, objective
        assert retrieval_accuracy(learned.model_copy(update={"key_epochs": 0}), train, held_out) < 0.7


def test_learn_task_keys_is_deterministic_per_seed_and_normalised():
    emb = clustered_tasks(120)[0]
    for init in ("orthogonal", "queries", "partition_mean", "kmeans"):
        spec = DtkrSpec(key_init=init)
        a, losses = learn_task_keys(emb, spec, 4, seed=5)
        b, _ = learn_task_keys(emb, spec, 4, seed=5)
        c, _ = learn_task_keys(emb, spec, 4, seed=6)
        assert torch.equal(a, b) and not torch.equal(a, c), init
        assert a.shape == (4, 6, 8) and torch.allclose(a.norm(dim=-1), torch.ones(4, 6), atol=1e-5)
        assert len(losses) == spec.key_epochs * 4  # 120 queries / batch 32 -> 4 steps an epoch


def test_kmeans_init_finds_the_sub_clusters_of_a_task():
    gen = torch.Generator().manual_seed(0)
    modes = torch.randn(4, 48, generator=gen) * 4
    emb = torch.cat([m + torch.randn(50, 48, generator=gen) for m in modes])
    keys = initial_keys(group_normalize(emb, 6), 4, "kmeans", gen)
    owner = similarity(group_normalize(modes, 6), torch.nn.functional.normalize(keys, dim=-1)).argmax(1)
    assert sorted(owner.tolist()) == [0, 1, 2, 3]  # one key per mode


def test_centrifugal_term_pushes_new_keys_away_from_earlier_keys():
    data = clustered_tasks(200, tasks=2, spread=0.7)  # two overlapping tasks
    old, _ = learn_task_keys(data[0], DtkrSpec(centrifugal_weight=0.0), 4, seed=0)
    plain, _ = learn_task_keys(data[1], DtkrSpec(centrifugal_weight=0.0), 4, seed=1, previous_keys=old)
    pushed, _ = learn_task_keys(data[1], DtkrSpec(centrifugal_weight=1.0), 4, seed=1, previous_keys=old)
    assert centrifugal_loss(pushed, old) < centrifugal_loss(plain, old) - 0.01
    # without earlier keys the term is off: the first task learns the same keys either way
    assert torch.equal(learn_task_keys(data[0], DtkrSpec(centrifugal_weight=1.0), 4, seed=0)[0], old)


def test_a_task_without_queries_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one query"):
        learn_task_keys(torch.empty(0, 48), DtkrSpec(), 4, seed=0)


def test_keys_learned_with_the_real_encoder_retrieve_three_builtin_tasks_at_95_percent():
    """docs/design.md's retrieval check, end to end: the bundled MiniLM encoder, three built-in tasks
    from different domains, keys learned per task on its own training queries only."""
    from pipeline.data.synthetic import get_generator
    from pipeline.dtkr.encoder import SentenceEncoder
    from pipeline.prompts.templates import query_text

    encoder = SentenceEncoder("bundled:all-minilm-l6-v2")
    spec = DtkrSpec()
    store = KeyStore(encoder.dim, spec.groups, 4, encoder.name)
    held_out, truth, learned = [], [], []
    for t, name in enumerate(("sentiment", "geography", "animal_class")):
        records = get_generator(name).generate(300, seed=0)
        emb = encoder.encode([query_text(r["instruction"], r["input"]) for r in records])
        keys, _ = learn_task_keys(emb[:200], spec, 4, seed=t, previous_keys=torch.cat(learned) if learned else None)
        learned.append(keys)
        store.add_task(name, keys)
        held_out.append(emb[200:])
        truth += [t] * 100
    _, ids = store.search(torch.cat(held_out), 1)
    accuracy = (torch.from_numpy(ids[:, 0]) // 4 == torch.tensor(truth)).float().mean().item()
    assert accuracy >= 0.95
