import numpy as np
import pytest
import torch

from pipeline.dtkr.keys import group_normalize, key_loss, retrieve, similarity, train_keys
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


def test_learned_keys_identify_their_task_on_held_out_queries():
    # three well separated clusters stand in for three domains' query embeddings
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 48, generator=gen) * 3
    def sample(t, n):
        return centers[t] + torch.randn(n, 48, generator=gen)
    store = KeyStore(48, 6, 4, "test")
    for t in range(3):
        keys, _ = train_keys(sample(t, 200), 4, 6, lr=1e-3, weight_decay=0.01, grad_clip=0.1, epochs=3,
                                  batch_size=32, mask_ratio=0.25, seed=t, progress=False)
        store.add_task(str(t), keys)
    held_out = torch.cat([sample(t, 50) for t in range(3)])
    truth = torch.arange(3).repeat_interleave(50)
    _, ids = store.search(held_out, 1)
    accuracy = (torch.from_numpy(ids[:, 0]) // 4 == truth).float().mean()
    assert accuracy >= 0.95


def test_keys_learned_with_the_real_encoder_retrieve_three_builtin_tasks_at_95_percent():
    """DESIGN's retrieval check, end to end: the bundled MiniLM encoder, three built-in tasks
    from different domains, keys learned per task on its own training queries only."""
    from data_prep.synthetic import get_generator
    from data_prep.templates import query_text
    from pipeline.dtkr.encoder import SentenceEncoder

    encoder = SentenceEncoder("bundled:all-minilm-l6-v2")
    store = KeyStore(encoder.dim, 6, 4, encoder.name)
    held_out, truth = [], []
    for t, name in enumerate(("sentiment", "geography", "animal_class")):
        records = get_generator(name).generate(300, seed=0)
        emb = encoder.encode([query_text(r["instruction"], r["input"]) for r in records])
        keys, _ = train_keys(emb[:200], 4, 6, lr=1e-3, weight_decay=0.01, grad_clip=0.1, epochs=3,
                             batch_size=32, mask_ratio=0.25, seed=t, progress=False)
        store.add_task(name, keys)
        held_out.append(emb[200:])
        truth += [t] * 100
    _, ids = store.search(torch.cat(held_out), 1)
    accuracy = (torch.from_numpy(ids[:, 0]) // 4 == torch.tensor(truth)).float().mean().item()
    assert accuracy >= 0.95
