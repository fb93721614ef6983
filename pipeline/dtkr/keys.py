"""DTKR keys: grouped query vectors, the key objectives, and how one task's keys are learned.

A query embedding (D,) is split into g groups of D/g and each group is L2-normalised. A slot's
key has the same (g, D/g) shape. Similarity of a query and a slot = mean over groups of the
per-group cosine. Keys of task t are learned on task t's queries only (plus, optionally, the
frozen keys of earlier tasks), before its values; `learn_task_keys` is the one entry point.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.config import DtkrSpec
from pipeline.errors import CheckpointError, DataError
from pipeline.jare.routing import Routing


def group_normalize(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(..., D) -> (..., g, D/g), each group L2-normalised."""
    d = x.shape[-1]
    if d % groups:
        raise ValueError(f"dtkr.groups={groups} does not divide the encoder dimension {d}")
    return F.normalize(x.reshape(*x.shape[:-1], groups, d // groups), dim=-1)


def similarity(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Mean-over-groups cosine. queries (B, g, dg), keys (S, g, dg), both normalised -> (B, S)."""
    return torch.einsum("bgd,sgd->bs", queries, keys) / queries.shape[1]


# ---- initialisation ---------------------------------------------------------------------------
def initial_keys(queries: torch.Tensor, slots: int, init: str, gen: torch.Generator,
                 kmeans_iters: int = 25) -> torch.Tensor:
    """(P, g, dg) starting keys from one task's normalised queries (N, g, dg)."""
    n, g, dg = queries.shape
    if init == "orthogonal":  # the reference: per group, P orthonormal random directions
        return torch.stack([_orthogonal(slots, dg, gen) for _ in range(g)], dim=1)
    if init == "queries":  # P random queries of the task, slightly perturbed
        pick = torch.randperm(n, generator=gen)[:slots] if n >= slots else torch.randint(n, (slots,), generator=gen)
        return queries[pick] + 0.01 * torch.randn((slots, g, dg), generator=gen)
    if init == "partition_mean":  # the reference's group_avg_initialization: means of P random parts
        order = torch.randperm(n, generator=gen)
        return torch.stack([_mean_direction(queries[order[p::slots]]) for p in range(slots)])
    if init == "centroid_partition":  # slot 0 at the task's mean query, the rest partition means
        order = torch.randperm(n, generator=gen)
        rest = [_mean_direction(queries[order[p::slots - 1]]) for p in range(slots - 1)]
        return torch.stack([_mean_direction(queries), *rest])
    if init == "kmeans":
        return spherical_kmeans(queries, slots, gen, kmeans_iters)
    raise ValueError(f"unknown dtkr.key_init {init!r}")


def _orthogonal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """`rows` orthonormal directions in R^cols (blocks of `cols` when rows > cols)."""
    blocks = []
    for start in range(0, rows, cols):
        m = torch.randn(cols, min(cols, rows - start), generator=gen)
        q, r = torch.linalg.qr(m)  # (cols, b) orthonormal columns; sign fix makes it Haar-uniform
        blocks.append((q * torch.sign(torch.diagonal(r))).T)
    return torch.cat(blocks)


def _mean_direction(queries: torch.Tensor) -> torch.Tensor:
    """(n, g, dg) -> (g, dg): the per-group mean, renormalised (the best single key for them)."""
    return F.normalize(queries.mean(0), dim=-1)


def spherical_kmeans(queries: torch.Tensor, slots: int, gen: torch.Generator, iters: int) -> torch.Tensor:
    """P centres of the queries under DTKR's own similarity (mean group cosine), k-means++ seeded.

    Written in torch rather than faiss.Kmeans: the result must be bit-identical for one seed
    (keys are cached and hashed), and the centre update must renormalise per group, which a
    flat spherical k-means over the concatenation does not.
    """
    n = len(queries)
    centres = queries[torch.randint(n, (1,), generator=gen)]
    while len(centres) < min(slots, n):  # k-means++: far points are likelier picks
        dist = (1 - similarity(queries, centres)).min(1).values.clamp_min(0)
        weights = dist if dist.sum() > 0 else torch.ones(n)
        centres = torch.cat([centres, queries[torch.multinomial(weights, 1, generator=gen)]])
    for _ in range(iters):
        assign = similarity(queries, centres).argmax(1)  # (N,)
        centres = torch.stack([_mean_direction(queries[assign == p]) if (assign == p).any() else centres[p]
                               for p in range(len(centres))])
    if len(centres) < slots:  # fewer queries than slots: repeat centres (slightly apart)
        extra = centres[torch.randint(len(centres), (slots - len(centres),), generator=gen)]
        centres = torch.cat([centres, extra + 0.01 * torch.randn(extra.shape, generator=gen)])
    return centres


# ---- objectives -------------------------------------------------------------------------------
def _mask_similarities(sims: torch.Tensor, mask_ratio: float, keep: int, gen: torch.Generator | None) -> torch.Tensor:
    """Randomly hide a fraction of the last dim (at least `keep` stay visible in every row)."""
    if mask_ratio <= 0:
        return sims
    drop = torch.rand(sims.shape, generator=gen) < mask_ratio
    drop &= drop.sum(-1, keepdim=True) <= sims.shape[-1] - keep
    return sims.masked_fill(drop.to(sims.device), float("-inf"))


def key_loss(queries: torch.Tensor, keys: torch.Tensor, mask_ratio: float,
             generator: torch.Generator | None = None, objective: str = "group_top2") -> torch.Tensor:
    """-mean cosine between each query and its 2 best keys, after randomly masking similarities.

    queries (B, g, dg) normalised; keys (P, g, dg) raw parameters. Masking keeps all P keys in
    play instead of two winners taking every query.
    group_top2 (the reference): every group picks its own top-2 keys, so slot p's group-1 and
      group-2 vectors may serve different queries.
    slot_top2: the top-2 slots by the retrieval similarity (mean over groups), so each slot's
      groups are learned together, as retrieval scores them.
    """
    k = F.normalize(keys, dim=-1)
    sims = torch.einsum("bgd,pgd->bgp", queries, k)  # (B, g, P)
    top = min(2, sims.shape[-1])
    if objective == "slot_top2":
        slot_sims = sims.mean(1)  # (B, P)
        picked = _mask_similarities(slot_sims.detach(), mask_ratio, top, generator).topk(top, dim=-1).indices
        return -slot_sims.gather(1, picked).mean()
    if objective != "group_top2":
        raise ValueError(f"unknown dtkr.key_objective {objective!r}")
    picked = _mask_similarities(sims.detach(), mask_ratio, top, generator).topk(top, dim=-1).indices  # (B, g, 2)
    return -sims.gather(2, picked).mean()


def centrifugal_loss(keys: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Mean per-group cosine between the new keys (P, g, dg) and earlier tasks' (S, g, dg).

    The reference's term (implemented there, never switched on): lowering it pushes a new
    task's keys away from the keys that are already in the store.
    """
    return torch.einsum("pgd,sgd->pgs", F.normalize(keys, dim=-1), previous).mean()


# ---- the entry point --------------------------------------------------------------------------
def learn_task_keys(embeddings: torch.Tensor, spec: DtkrSpec, slots_per_task: int, seed: int,
                    previous_keys: torch.Tensor | None = None,
                    progress: bool = False) -> tuple[torch.Tensor, list[float]]:
    """One task's keys (P, g, D/g), normalised, from its own query embeddings (N, D).

    `previous_keys` (S_prev, g, D/g): the frozen keys of the earlier tasks, used only by the
    centrifugal term. The same embeddings, spec, P and seed give the same keys bit for bit.
    Returns (keys, per-step losses; empty when dtkr.key_epochs is 0).
    """
    if len(embeddings) == 0:
        raise DataError("learn_task_keys: the task has no training queries; a task needs at least one query "
                        "to learn its keys from")
    gen = torch.Generator().manual_seed(seed)
    q = group_normalize(embeddings.float().cpu(), spec.groups)  # (N, g, dg)
    if previous_keys is not None and tuple(previous_keys.shape[1:]) != tuple(q.shape[1:]):
        raise CheckpointError(f"earlier tasks' keys have shape {tuple(previous_keys.shape)}, this task's queries "
                              f"give groups x dim {tuple(q.shape[1:])}: were they made with another encoder "
                              "or dtkr.groups?")
    keys = torch.nn.Parameter(initial_keys(q, slots_per_task, spec.key_init, gen))
    prev = None
    if previous_keys is not None and len(previous_keys) and spec.centrifugal_weight > 0:
        prev = F.normalize(previous_keys.float().cpu(), dim=-1)
    opt = torch.optim.AdamW([keys], lr=spec.key_lr, weight_decay=spec.key_weight_decay)
    losses: list[float] = []
    starts = [i for _ in range(spec.key_epochs) for i in range(0, len(q), spec.key_batch_size)]
    order = None
    for start in _progress(starts, progress):
        if start == 0:
            order = torch.randperm(len(q), generator=gen)
        loss = key_loss(q[order[start:start + spec.key_batch_size]], keys, spec.mask_ratio, gen, spec.key_objective)
        if prev is not None:
            loss = loss + spec.centrifugal_weight * centrifugal_loss(keys, prev)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([keys], spec.key_grad_clip)
        opt.step()
        losses.append(loss.item())
    return F.normalize(keys.detach(), dim=-1), losses


def _progress(steps: list, enabled: bool):
    from tqdm import tqdm

    return tqdm(steps, desc="keys", disable=not enabled, leave=False)


def train_keys(queries: torch.Tensor, slots: int, groups: int, *, lr: float, weight_decay: float,
               grad_clip: float, epochs: int, batch_size: int, mask_ratio: float, seed: int,
               progress: bool = True) -> tuple[torch.Tensor, list[float]]:
    """The older keyword form of `learn_task_keys` (the other key settings at their defaults)."""
    spec = DtkrSpec(groups=groups, key_lr=lr, key_weight_decay=weight_decay, key_grad_clip=grad_clip,
                    key_epochs=epochs, key_batch_size=batch_size, mask_ratio=mask_ratio)
    return learn_task_keys(queries, spec, slots, seed, progress=progress)


# ---- retrieval helpers ------------------------------------------------------------------------
def weights_from_similarity(sims: torch.Tensor, weighting: str, temperature: float) -> torch.Tensor:
    """(B, k) top-k similarities -> weights summing to 1 per row."""
    if weighting == "softmax":
        return torch.softmax(sims / temperature, dim=-1)
    # normalise: similarities / their sum. Cosines can be <= 0; clamp so weights stay a
    # convex combination.
    s = sims.clamp_min(1e-6)
    return s / s.sum(-1, keepdim=True)


def retrieve(queries: torch.Tensor, keys: torch.Tensor, top_k: int, *, weighting: str = "normalize",
             temperature: float = 0.1, allowed: torch.Tensor | None = None, per_batch: bool = False,
             task: int | None = None) -> tuple[Routing, torch.Tensor]:
    """Brute-force retrieval in torch (the reference the FAISS store is tested against).

    queries (B, g, dg), keys (S, g, dg), both normalised. `allowed` (S,) bool restricts the
    candidate slots. per_batch averages the batch's queries first. Returns (routing, sims (B, S)).
    """
    if per_batch:
        mean = queries.mean(0, keepdim=True)
        queries = F.normalize(mean, dim=-1).expand_as(queries)
    sims = similarity(queries, keys)  # (B, S)
    masked = sims if allowed is None else sims.masked_fill(~allowed.to(sims.device), float("-inf"))
    k = min(top_k, int(masked.isfinite().sum(-1).min()))
    vals, ids = masked.topk(k, dim=-1)  # (B, k)
    return Routing(ids, weights_from_similarity(vals, weighting, temperature), task), sims
