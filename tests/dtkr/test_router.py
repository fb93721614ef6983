"""The one routing path: Router over a KeyStore (restricted, all tasks, per_batch, top_k caps),
the restricted FAISS search that also runs on the GPU, and capture rates."""

import math

import faiss
import numpy as np
import pytest
import torch

from pipeline.config import DtkrSpec
from pipeline.dtkr.keys import group_normalize, retrieve, similarity
from pipeline.dtkr.router import Router, capture_rates
from pipeline.dtkr.store import KeyStore, faiss_gpu_available, search_allowed

DIM, GROUPS, SLOTS = 48, 6, 4


def task_keys(seed: int, slots: int = SLOTS) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return group_normalize(torch.randn(slots, DIM, generator=gen), GROUPS)


def make_router(tasks=("a", "b", "c"), top_k: int = 2, slots: int = SLOTS, **spec) -> Router:
    dtkr = DtkrSpec(groups=GROUPS, top_k=top_k, **spec)
    return Router.from_keys([(t, task_keys(i, slots)) for i, t in enumerate(tasks)], None, dtkr, slots)


def queries(n: int, seed: int = 7) -> torch.Tensor:
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))


def test_routing_over_all_tasks_equals_torch_brute_force():
    router = make_router(top_k=3)
    q = queries(32)
    routing = router.route_embeddings(q)
    brute, _ = retrieve(group_normalize(q, GROUPS), router.store.all_keys(), 3)
    assert torch.equal(routing.slot_ids, brute.slot_ids)
    assert torch.allclose(routing.weights, brute.weights, atol=1e-5)
    assert routing.task is None


def test_restricted_routing_stays_in_the_allowed_tasks_and_equals_brute_force():
    router = make_router(top_k=2)
    q = queries(32)
    routing = router.route_embeddings(q, tasks=["a", "c"])
    allowed = torch.zeros(12, dtype=torch.bool)
    allowed[0:4] = allowed[8:12] = True
    brute, _ = retrieve(group_normalize(q, GROUPS), router.store.all_keys(), 2, allowed=allowed)
    assert torch.equal(routing.slot_ids, brute.slot_ids)
    assert set(router.top1_tasks(routing)) <= {0, 2}
    one = router.route_embeddings(q, tasks=["b"])
    assert one.task == 1 and set(one.slot_ids.flatten().tolist()) <= {4, 5, 6, 7}


def test_top_k_larger_than_the_allowed_slots_is_capped_not_padded():
    router = make_router(top_k=5, slots=2)  # 3 tasks x 2 slots
    q = queries(8)
    one_task = router.route_embeddings(q, tasks=["b"])  # the oracle / training case: 2 < top_k
    assert one_task.slot_ids.shape == (8, 2) and set(one_task.slot_ids.flatten().tolist()) == {2, 3}
    assert torch.allclose(one_task.weights.sum(-1), torch.ones(8), atol=1e-6)
    first = make_router(tasks=("only",), top_k=5, slots=2).route_embeddings(q)  # the first task
    assert first.slot_ids.shape == (8, 2) and (first.slot_ids >= 0).all()
    everything = router.route_embeddings(q)
    assert everything.slot_ids.shape == (8, 5) and (everything.slot_ids >= 0).all()


def test_per_batch_routing_gives_every_sample_the_slots_of_the_mean_query():
    router = make_router(retrieval="per_batch")
    q = queries(16)
    routing = router.route_embeddings(q)
    assert (routing.slot_ids == routing.slot_ids[0]).all()
    mean = torch.nn.functional.normalize(group_normalize(q, GROUPS).mean(0), dim=-1).reshape(1, -1)
    alone = make_router().route_embeddings(mean)
    assert torch.equal(routing.slot_ids[0], alone.slot_ids[0])
    assert len({tuple(r) for r in make_router().route_embeddings(q).slot_ids.tolist()}) > 1  # per sample differs


def brute_force_task_routing(q: torch.Tensor, keys: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """dtkr.task_score=logsumexp written out per sample: tasks by T*log(mean exp(sim/T)) over their
    slots, then each task's slots by similarity, the first k of that order."""
    sims = similarity(group_normalize(q, GROUPS), keys).double()  # (B, S)
    rows = []
    for row in sims:
        per_task = row.reshape(-1, SLOTS)
        scores = [temperature * math.log(float(torch.exp(s / temperature).mean())) for s in per_task]
        order = sorted(range(len(scores)), key=lambda t: -scores[t])
        rows.append([t * SLOTS + int(p) for t in order for p in per_task[t].argsort(descending=True)][:k])
    return torch.tensor(rows)


@pytest.mark.parametrize("top_k", [1, 2, SLOTS + 2])  # SLOTS + 2: the next-best task fills the rest
def test_logsumexp_task_score_routes_to_the_best_scoring_task_then_its_best_slots(top_k: int):
    router = make_router(tasks=tuple("abcde"), top_k=top_k, task_score="logsumexp", task_temperature=0.05)
    q = queries(64)
    routing = router.route_embeddings(q)
    assert torch.equal(routing.slot_ids, brute_force_task_routing(q, router.store.all_keys(), top_k, 0.05))
    assert torch.allclose(routing.weights.sum(-1), torch.ones(64), atol=1e-6)
    restricted = router.route_embeddings(q, tasks=["b", "d"])
    assert set(router.top1_tasks(restricted)) <= {1, 3}
    own = router.route_embeddings(q, tasks=["c"])  # training / oracle: the task's own best slots
    plain = make_router(tasks=tuple("abcde"), top_k=top_k).route_embeddings(q, tasks=["c"])
    assert torch.equal(own.slot_ids, plain.slot_ids) and own.task == 2


def keys_at_cosines(q: torch.Tensor, cosines: list[float], seed: int) -> torch.Tensor:
    """Keys (len(cosines), g, dg) whose every group has exactly the given cosine to the query's."""
    qg = group_normalize(q, GROUPS)[0]  # (g, dg)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for c in cosines:
        u = torch.randn(qg.shape, generator=gen)
        u = torch.nn.functional.normalize(u - (u * qg).sum(-1, keepdim=True) * qg, dim=-1)  # unit, orthogonal to q
        out.append(c * qg + math.sqrt(1 - c * c) * u)
    return torch.stack(out)


def test_logsumexp_prefers_a_task_whose_slots_agree_over_one_stray_slot():
    """The query sits near one slot of task "stray" (its other slots are orthogonal to it) and a
    little less near all four slots of task "agree": max takes the stray slot, logsumexp the task
    that agrees (0.1 log mean exp(sim / 0.1): stray 0.81, agree 0.90)."""
    q = queries(1)
    keys = [("stray", keys_at_cosines(q, [0.95, 0.0, 0.0, 0.0], 1)), ("agree", keys_at_cosines(q, [0.9] * 4, 2))]
    by_max = Router.from_keys(keys, None, DtkrSpec(groups=GROUPS), SLOTS)
    by_lse = Router.from_keys(keys, None, DtkrSpec(groups=GROUPS, task_score="logsumexp", task_temperature=0.1),
                              SLOTS)
    assert by_max.top1_tasks(by_max.route_embeddings(q)) == [0]
    routing = by_lse.route_embeddings(q)
    assert by_lse.top1_tasks(routing) == [1] and set(routing.slot_ids[0].tolist()) <= {4, 5, 6, 7}


def test_logsumexp_at_a_low_temperature_picks_the_task_of_the_top_1_slot():
    q = queries(128)
    by_max = make_router(tasks=tuple("abcdef"))
    by_lse = make_router(tasks=tuple("abcdef"), task_score="logsumexp", task_temperature=1e-4)
    assert by_lse.top1_tasks(by_lse.route_embeddings(q)) == by_max.top1_tasks(by_max.route_embeddings(q))


def test_describe_names_task_slot_and_weight_of_each_pick():
    router = make_router()
    routing = router.route_embeddings(router.store.all_keys()[6].reshape(1, -1))  # task b, slot 2 itself
    picks = router.describe(routing)
    assert picks[0]["task"] == "b" and picks[0]["slot"] == 2
    assert sum(p["weight"] for p in picks) == pytest.approx(1.0)


def test_restricted_search_path_equals_a_faiss_id_selector_search_on_cpu():
    """search_allowed is what runs on the GPU index (GPU flat indexes ignore id selectors);
    on the CPU index it must return exactly what FAISS's own selector search returns."""
    store = make_router(tasks=tuple("abcdef")).store
    q = group_normalize(queries(64), GROUPS).reshape(64, DIM).numpy()
    for tasks in (["a"], ["b", "e"], ["a", "c", "d", "f"]):
        allowed = np.concatenate([store.slot_ids(t) for t in tasks]).astype(np.int64)
        for k in (1, 3, len(allowed)):
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
            ref_sims, ref_ids = store.index.search(q, k, params=params)
            sims, ids = search_allowed(store.index, q, k, allowed)
            assert np.array_equal(ids, ref_ids), (tasks, k)
            assert np.allclose(sims, ref_sims, atol=1e-6)


def test_search_allowed_refuses_more_neighbours_than_allowed_ids():
    store = make_router().store
    with pytest.raises(ValueError, match="allowed"):
        search_allowed(store.index, np.zeros((1, DIM), dtype=np.float32), 5, store.slot_ids("a"))


def test_capture_rate_is_the_share_of_old_queries_the_newest_task_takes():
    old = task_keys(0)
    near_copy = old + 0.01 * torch.randn(old.shape, generator=torch.Generator().manual_seed(3))
    dtkr = DtkrSpec(groups=GROUPS)
    held_out = old.reshape(SLOTS, DIM).repeat(5, 1) + 0.3 * queries(20)
    far = Router.from_keys([("old", old), ("new", -old)], None, dtkr, SLOTS)
    assert capture_rates(far, {"old": held_out}) == {"old": 0.0}
    # the new task's keys sit on the old task's queries: it takes a large share of them
    close = Router.from_keys([("old", old), ("new", torch.nn.functional.normalize(near_copy, dim=-1))], None,
                             dtkr, SLOTS)
    assert capture_rates(close, {"old": held_out, "new": held_out})["old"] > 0.2
    assert "new" not in capture_rates(close, {"old": held_out, "new": held_out})
    with pytest.raises(ValueError, match="not in the store"):
        capture_rates(close, {"missing": held_out})


@pytest.mark.gpu
@pytest.mark.skipif(not faiss_gpu_available(), reason="needs faiss-gpu and a CUDA GPU")
def test_gpu_index_returns_the_cpu_ids_for_restricted_and_full_searches():
    router = make_router(tasks=tuple("abcdefgh"), top_k=3)
    store = router.store
    q = queries(256)
    gpu_full, gpu_restricted = store.search(q, 3), store.search(q, 3, ["b", "g"])
    assert store._gpu_index is not None  # the GPU copy served both
    cpu = KeyStore(DIM, GROUPS, SLOTS, "test")
    for t in store.tasks:
        cpu.add_task(t, torch.from_numpy(store._vectors[t]).reshape(SLOTS, GROUPS, -1))
    qn = group_normalize(q, GROUPS).reshape(len(q), DIM).numpy()
    _, cpu_ids = cpu.index.search(qn, 3)
    allowed = np.concatenate([cpu.slot_ids("b"), cpu.slot_ids("g")]).astype(np.int64)
    _, cpu_restricted = cpu.index.search(qn, 3, params=faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed)))
    assert np.array_equal(gpu_full[1], cpu_ids) and np.array_equal(gpu_restricted[1], cpu_restricted)
