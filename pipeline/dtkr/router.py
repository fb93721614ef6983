"""The one path from records to per-sample routing: query text -> frozen encoder -> KeyStore -> Routing.

Training (restricted to the task being learned), eval (all finished tasks, or the true task for the
oracle), generate, serve and bench/retrieval.py all route through `Router`, so the slots a query
gets are decided in exactly one place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pipeline.config import DtkrSpec
from pipeline.dtkr.keys import group_normalize, weights_from_similarity
from pipeline.dtkr.store import KeyStore
from pipeline.jare.routing import Routing


class Router:
    """Routes records over the tasks held by `store`, with the retrieval settings of `spec`.

    `through_earlier` (methods.slm.transfer=route_retrieved): each sample also routes through the top-k
    slots of the tasks *before* its own task (the task of its top-1 slot), frozen knowledge it
    learned with. Task t was trained with exactly that routing (its own slots + those of tasks
    < t), so an input that retrieves task t gets the mix task t learned, and a later task changes
    nothing of it: no forgetting, by construction.
    """

    def __init__(self, store: KeyStore, encoder, spec: DtkrSpec, through_earlier: bool = False) -> None:
        self.store = store
        self.encoder = encoder  # pipeline.dtkr.encoder.SentenceEncoder, or None for embeddings only
        self.spec = spec
        self.through_earlier = through_earlier

    @classmethod
    def from_keys(cls, keys: Sequence[tuple[str, torch.Tensor]], encoder, spec: DtkrSpec,
                  slots_per_task: int, through_earlier: bool = False) -> Router:
        """A router over tasks given as (name, keys (P, g, D/g)) in task order, stored as `slm index` does."""
        dim = keys[0][1].shape[1] * keys[0][1].shape[2]
        store = KeyStore(dim, spec.groups, slots_per_task, spec.encoder)
        for name, k in keys:
            store.add_task(name, k)
        return cls(store, encoder, spec, through_earlier)

    @property
    def tasks(self) -> list[str]:
        return self.store.tasks

    def add_task(self, name: str, keys: torch.Tensor) -> None:
        """Make a newly finished task retrievable: its keys (P, g, D/g) join the store (FAISS add)."""
        self.store.add_task(name, keys)

    def remove_task(self, name: str) -> None:
        """Stop retrieving task `name`: its keys leave the store; every other task's stay as they were."""
        self.store.remove_task(name)

    def embed(self, records: list[dict], progress: bool = False) -> torch.Tensor:
        from pipeline.prompts.batching import queries

        if self.encoder is None:
            raise RuntimeError("this router was built without an encoder: pass embeddings to route_embeddings")
        return self.encoder.encode(queries(records), progress=progress)

    def route(self, records: list[dict], tasks: list[str] | None = None) -> Routing:
        return self.route_embeddings(self.embed(records), tasks)

    def route_embeddings(self, embeddings: torch.Tensor, tasks: list[str] | None = None) -> Routing:
        """Top-k slots per sample among `tasks`' slots (None: every task in the store), followed,
        with `through_earlier`, by the top-k slots of the tasks before the sample's task."""
        routing = self.retrieve(embeddings, tasks)
        return self.with_earlier(routing, embeddings) if self.through_earlier else routing

    def retrieve(self, embeddings: torch.Tensor, tasks: list[str] | None = None) -> Routing:
        """Top-k slots per sample among `tasks`' slots (None: every task in the store).

        dtkr.task_score=max: the k most similar slots over all allowed slots; the sample's task is
        the task of its top-1 slot. logsumexp: the sample's task is the one with the best
        `task_scores`, and its slots are that task's k most similar ones (`rank_slots_by_task`).
        Either way slot_ids[:, 0] is the retrieved task's best slot (`top1_tasks`).

        k is capped at the number of allowed slots (one task of P < top_k slots, the oracle, the
        first task), so a small candidate set never yields FAISS's -1 padding ids.
        """
        allowed = len(tasks if tasks is not None else self.store.tasks) * self.store.slots_per_task
        k = min(self.spec.top_k, allowed)
        if self.spec.retrieval == "per_batch":  # the reference code's batch-averaged query
            mean = group_normalize(embeddings.float(), self.spec.groups).mean(0, keepdim=True)
            embeddings = F.normalize(mean, dim=-1).reshape(1, -1).expand(len(embeddings), -1)
        if self.spec.task_score == "max":  # top-k slots over all allowed slots (the paper)
            sims_np, ids_np = self.store.search(embeddings, k, tasks)
            sims, ids = torch.from_numpy(sims_np), torch.from_numpy(ids_np)
        else:  # every allowed slot, then tasks ranked by their aggregated score
            sims_np, ids_np = self.store.search(embeddings, allowed, tasks)
            sims, ids = rank_slots_by_task(torch.from_numpy(sims_np), torch.from_numpy(ids_np),
                                           self.store.slots_per_task, self.spec.task_temperature)
            sims, ids = sims[:, :k], ids[:, :k]
        weights = weights_from_similarity(sims, self.spec.weighting, self.spec.temperature)
        task = self.store.tasks.index(tasks[0]) if tasks is not None and len(tasks) == 1 else None
        return Routing(ids, weights, task)

    def with_earlier(self, routing: Routing, embeddings: torch.Tensor) -> Routing:
        """`routing` (B, k) plus, per sample, the top-k slots of the tasks before its top-1 slot's
        task, weighted among themselves (B, 2k). A sample of the first task has none: its extra
        columns repeat its own first slot at weight 0, which adds exactly 0."""
        p = self.store.slots_per_task
        own_task = routing.slot_ids[:, 0] // p  # (B,)
        k = self.spec.top_k
        extra_ids = routing.slot_ids[:, :1].repeat(1, k)  # (B, k): weight-0 padding by default
        extra_w = torch.zeros(routing.batch_size, k)
        for task in own_task.unique().tolist():
            if task == 0:
                continue
            rows = (own_task == task).nonzero().squeeze(1)
            earlier = self.retrieve(embeddings[rows], self.store.tasks[:task])  # (n, min(k, task * P))
            width = earlier.slot_ids.shape[1]
            extra_ids[rows, :width] = earlier.slot_ids
            extra_w[rows, :width] = earlier.weights
        if not extra_w.any():
            return routing  # no sample has an earlier task: keep the one-task fast path
        return Routing(torch.cat([routing.slot_ids, extra_ids], 1), torch.cat([routing.weights, extra_w], 1))

    def top1_tasks(self, routing: Routing) -> list[int]:
        """The store position of the task of each sample's top-1 slot."""
        return (routing.slot_ids[:, 0] // self.store.slots_per_task).tolist()

    def top1_names(self, routing: Routing) -> list[str]:
        """The name of the task of each sample's top-1 slot (retrieval accuracy, confusion)."""
        return [self.store.tasks[i] for i in self.top1_tasks(routing)]

    def describe_slot(self, slot: int) -> dict:
        """{task, slot} of one global slot id."""
        return {"task": self.store.task_of(slot), "slot": slot % self.store.slots_per_task}

    def describe(self, routing: Routing, row: int = 0) -> list[dict]:
        """[{task, slot, weight}] of one sample: what `slm generate` prints and `slm serve` returns."""
        p = self.store.slots_per_task
        return [{"task": self.store.task_of(s), "slot": s % p, "weight": w}
                for s, w in zip(routing.slot_ids[row].tolist(), routing.weights[row].tolist(), strict=True)]


def task_scores(slot_sims: torch.Tensor, temperature: float) -> torch.Tensor:
    """(..., P) similarities of a task's slots -> (...) its logsumexp score on the similarity scale:
    temperature * log(mean_p exp(sim_p / temperature)). It tends to the best slot (`max`) as the
    temperature falls and to the mean of the slots as it grows; in between, one stray slot near
    another task's queries counts for less than several slots that agree."""
    p = slot_sims.shape[-1]
    return temperature * (torch.logsumexp(slot_sims / temperature, dim=-1) - math.log(p))


def rank_slots_by_task(sims: torch.Tensor, ids: torch.Tensor, slots_per_task: int,
                       temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder every allowed slot of each sample: tasks by `task_scores`, best first, and within a
    task its slots by similarity. sims, ids (B, A): all slots of the allowed tasks, as the store
    returns them. The first k of the result are the sample's slots: with k <= P all come from the
    top-scoring task, a larger k continues with the next task's best slots.
    """
    b, a = ids.shape
    by_id = ids.argsort(dim=1)  # (B, A): task-major, slot order inside each task
    grouped_ids = ids.gather(1, by_id).reshape(b, a // slots_per_task, slots_per_task)  # (B, T, P)
    grouped = sims.gather(1, by_id).reshape(grouped_ids.shape)  # (B, T, P)
    task_rank = task_scores(grouped, temperature).argsort(dim=1, descending=True, stable=True)  # (B, T)
    pick = task_rank[:, :, None].expand_as(grouped)
    grouped, grouped_ids = grouped.gather(1, pick), grouped_ids.gather(1, pick)  # tasks best first
    slot_rank = grouped.argsort(dim=2, descending=True, stable=True)  # (B, T, P)
    return grouped.gather(2, slot_rank).reshape(b, a), grouped_ids.gather(2, slot_rank).reshape(b, a)


def capture_rates(router: Router, embeddings_by_task: dict[str, torch.Tensor]) -> dict[str, float]:
    """For each earlier task: the fraction of its held-out query embeddings whose top-1 slot
    (over every task in the store) now belongs to the newest task, the store's last one.

    What `slm train` and `slm report` warn about: a new task whose keys capture an old task's
    queries sends them to the wrong slots, before any value is trained or evaluated.
    """
    if not router.tasks:
        return {}
    newest = len(router.tasks) - 1
    rates = {}
    for name, emb in embeddings_by_task.items():
        if name == router.tasks[newest] or len(emb) == 0:
            continue
        if name not in router.tasks:
            raise ValueError(f"capture_rates: task {name!r} is not in the store (tasks: {router.tasks})")
        top1 = torch.tensor(router.top1_tasks(router.route_embeddings(emb)))
        rates[name] = float((top1 == newest).float().mean())
    return rates
