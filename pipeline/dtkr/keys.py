"""DTKR keys: grouped query vectors, the masked top-2 key objective, and per-sample retrieval.

A query embedding (D,) is split into g groups of D/g and each group is L2-normalised. A slot's
key has the same (g, D/g) shape. Similarity of a query and a slot = mean over groups of the
per-group cosine. Keys of task t are learned on task t's queries only, before its values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

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


def key_loss(queries: torch.Tensor, keys: torch.Tensor, mask_ratio: float,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """-mean cosine between each group query and its top-2 keys of that group, after masking.

    queries (B, g, dg) normalised; keys (P, g, dg) raw parameters. Random masking of a fraction
    of the similarities keeps all P keys in play instead of two winners taking every query.
    """
    k = F.normalize(keys, dim=-1)
    sims = torch.einsum("bgd,pgd->bgp", queries, k)  # (B, g, P)
    if mask_ratio > 0:
        drop = torch.rand(sims.shape, generator=generator) < mask_ratio
        # never mask everything in a row: keep at least top-2 candidates available
        drop &= drop.sum(-1, keepdim=True) <= sims.shape[-1] - min(2, sims.shape[-1])
        sims = sims.masked_fill(drop.to(sims.device), float("-inf"))
    top = sims.topk(min(2, sims.shape[-1]), dim=-1).values  # (B, g, 2)
    return -top.mean()


def train_keys(queries: torch.Tensor, slots: int, groups: int, *, lr: float, weight_decay: float,
               grad_clip: float, epochs: int, batch_size: int, mask_ratio: float, seed: int,
               progress: bool = True) -> tuple[torch.Tensor, list[float]]:
    """Learn one task's keys (P, g, D/g) from its query embeddings (N, D). Returns keys, losses.

    Keys start at randomly chosen queries of the task (plus small noise): with lr 1e-3 and unit-
    scale random keys, a few epochs of AdamW barely turn them, so a data-dependent start is what
    makes 2-3 epochs enough.
    """
    gen = torch.Generator().manual_seed(seed)
    q = group_normalize(queries.float(), groups)  # (N, g, dg)
    pick = torch.randint(len(q), (slots,), generator=gen)
    keys = torch.nn.Parameter(q[pick].clone() + 0.01 * torch.randn(q[pick].shape, generator=gen))
    opt = torch.optim.AdamW([keys], lr=lr, weight_decay=weight_decay)
    losses = []
    for _ in tqdm(range(epochs), desc="keys", disable=not progress, leave=False):
        order = torch.randperm(len(q), generator=gen)
        for i in range(0, len(q), batch_size):
            loss = key_loss(q[order[i:i + batch_size]], keys, mask_ratio, gen)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([keys], grad_clip)
            opt.step()
            losses.append(loss.item())
    return F.normalize(keys.detach(), dim=-1), losses


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
    """Brute-force retrieval in torch. queries (B, g, dg), keys (S, g, dg), both normalised.

    `allowed` (S,) bool restricts the candidate slots (training of task t, oracle). per_batch
    averages the batch's queries first (the reference code's mode). Returns (routing, sims (B, S)).
    """
    if per_batch:
        mean = queries.mean(0, keepdim=True)
        queries = F.normalize(mean, dim=-1).expand_as(queries)
    sims = similarity(queries, keys)  # (B, S)
    masked = sims if allowed is None else sims.masked_fill(~allowed.to(sims.device), float("-inf"))
    k = min(top_k, int(masked.isfinite().sum(-1).min()))
    vals, ids = masked.topk(k, dim=-1)  # (B, k)
    return Routing(ids, weights_from_similarity(vals, weighting, temperature), task), sims
