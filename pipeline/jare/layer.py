"""JareLinear: a frozen nn.Linear plus per-task low-rank slots, routed per sample.

    y = W x + sum_{j in topk} w_j * U_j^T (V_j x)      U_j: (r, d_out) zero-init, V_j: (r, d_in) random

V starts as PEFT starts a LoRA's A (`init="lora"`: kaiming-uniform, +-1/sqrt(d_in)), or as the
reference code does (`init="paper"`: N(0, 1)). With U = 0 and no alpha/r scaling, a slot with
the LoRA init is exactly a PEFT LoRA of rank r and alpha = r (tests/jare/test_jare_lora_equivalence.py);
the paper's V is ~sqrt(3 d_in) times larger, so Adam, which moves each element by ~lr per step,
leaves it nearly where it started unless the run is long.

The side branch is computed batched per sample: gather each sample's k slots, then two batched
matmuls (the einsums "bli,bsi->bls" and "bls,bso->blo", written as the bmm's they are).
No dense (d_out, d_in) increment is ever built in forward; `merge` builds one on purpose, once,
when a whole batch shares one weighting (re-parameterisation for generation / serving).

Decoding reuses one routing for every step, so in no-grad mode the gathered V and the
weight-folded U of that routing are cached (`_BranchCache`) instead of being gathered again per
token. The cache is keyed on the routing object, the batch size, the device and the version and
storage of every slot tensor, and cleared on task add/remove and merge/unmerge: any change gives
a fresh gather. Cached or not, the arithmetic is the same (w is folded into U in both), so the
tokens are identical.

Slots of task t are registered directly on this module as `jare_U_<t>` / `jare_V_<t>` (not in a
ParameterList submodule): DeepSpeed ZeRO-3 gathers a module's own parameters before its forward,
and a ParameterList is never called, so its shards would stay empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from pipeline.jare.routing import Routing, RoutingState

SlotInit = Literal["paper", "lora"]


@dataclass(frozen=True)
class _BranchCache:
    routing: Routing  # held, so its id cannot be reused by a new object while cached
    key: tuple
    v: torch.Tensor  # (B, k*r, d_in)
    uw: torch.Tensor  # (B, k*r, d_out), U scaled by each slot's weight


class JareLinear(nn.Module):
    def __init__(self, base_layer: nn.Linear, rank: int, slots_per_task: int, state: RoutingState,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.base_layer = base_layer
        # in/out_features, not weight.shape: under ZeRO-3 the weight is an empty shard, and a
        # bitsandbytes 4-bit weight is packed.
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.jare_rank = rank
        self.jare_slots = slots_per_task
        self.jare_dtype = dtype
        self.jare_num_tasks = 0
        self._routing_state = state  # shared, not a submodule
        self._merged_delta: torch.Tensor | None = None
        self.jare_cache = True  # cache the gathered branch across decode steps (no-grad only)
        self._branch_cache: _BranchCache | None = None

    # ---- task lifecycle ---------------------------------------------------------------------
    def add_task(self, generator: torch.Generator | None = None, init: SlotInit = "lora") -> int:
        t = self.jare_num_tasks
        device = self._device()
        u = torch.zeros(self.jare_slots, self.jare_rank, self.out_features, dtype=self.jare_dtype, device=device)
        v = torch.empty(self.jare_slots, self.jare_rank, self.in_features, dtype=torch.float32)
        if init == "paper":
            v.normal_(generator=generator)
        elif init == "lora":
            for slot in v:  # one (r, d_in) matrix at a time, so fan_in is d_in, as for PEFT's lora_A
                nn.init.kaiming_uniform_(slot, a=math.sqrt(5), generator=generator)
        else:
            raise ValueError(f"unknown slot init {init!r}; valid: paper, lora")
        v = v.to(device=device, dtype=self.jare_dtype)
        self.register_parameter(f"jare_U_{t}", nn.Parameter(u))
        self.register_parameter(f"jare_V_{t}", nn.Parameter(v))
        self.jare_num_tasks += 1
        self._branch_cache = None
        return t

    def remove_task(self, t: int) -> None:
        """Drop task t; later tasks move down one index, their tensors untouched."""
        for i in range(t, self.jare_num_tasks):
            for f in ("U", "V"):
                name = f"jare_{f}_{i}"
                param = self._parameters.pop(name)
                if i > t:
                    self.register_parameter(f"jare_{f}_{i - 1}", param)
        self.jare_num_tasks -= 1
        self._branch_cache = None

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        return [getattr(self, f"jare_U_{t}"), getattr(self, f"jare_V_{t}")]

    @torch.no_grad()
    def copy_slots(self, t: int, sources: list[int]) -> None:
        """Start task t's slots as copies of the global slots `sources` (one per slot of t, all of
        earlier tasks): the copy is task t's own tensor, so training it never touches the source."""
        if len(sources) != self.jare_slots or any(s // self.jare_slots >= t for s in sources):
            raise ValueError(f"task {t} needs {self.jare_slots} source slots of earlier tasks, got {sources}")
        u_t, v_t = self.task_parameters(t)
        for slot, source in enumerate(sources):
            u_s, v_s = self.task_parameters(source // self.jare_slots)
            u_t[slot].copy_(u_s[source % self.jare_slots])
            v_t[slot].copy_(v_s[source % self.jare_slots])
        self._branch_cache = None

    def _device(self) -> torch.device:
        for p in self.base_layer.parameters():
            return p.device
        return torch.device("cpu")

    # ---- forward ----------------------------------------------------------------------------
    def _gather(self, slot_ids: torch.Tensor, task: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """U: (B, k, r, d_out), V: (B, k, r, d_in) for each sample's k slots."""
        if task is not None:  # all slots in one task: index it directly, no concatenation
            u, v = self.task_parameters(task)
            ids = slot_ids - task * self.jare_slots
        else:
            u = torch.cat([getattr(self, f"jare_U_{t}") for t in range(self.jare_num_tasks)])  # (T*P, r, d_out)
            v = torch.cat([getattr(self, f"jare_V_{t}") for t in range(self.jare_num_tasks)])  # (T*P, r, d_in)
            ids = slot_ids
        # index_select on flat ids, not u[ids]: advanced indexing goes through the generic
        # TensorIterator index kernel, ~2x slower on CPU for these (B*k, r, d) row copies, which
        # are a large part of a decode step's side branch (bench/jare_vs_lora.py). Same values.
        flat = ids.reshape(-1)
        return (u.index_select(0, flat).view(*ids.shape, *u.shape[1:]),
                v.index_select(0, flat).view(*ids.shape, *v.shape[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        routing = self._routing_state.routing
        if routing is None or self.jare_num_tasks == 0 or self._merged_delta is not None:
            return y
        v, uw = self._branch(routing, x.shape[0], x.device)
        b = v.shape[0]
        xs = x.reshape(b, -1, self.in_features).to(v.dtype)  # (B, L, d_in)
        # The two einsums ("bli,bsi->bls", "bls,bso->blo") written as the bmm's they lower to:
        # fewer small ops per layer, which matters at decode (L = 1).
        h = torch.bmm(xs, v.transpose(1, 2))  # (B, L, k*r)
        delta = torch.bmm(h, uw)  # (B, L, d_out)
        return y + delta.reshape(y.shape).to(y.dtype)

    def _branch(self, routing: Routing, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """V (B, k*r, d_in) and w-scaled U (B, k*r, d_out) of `routing`, cached in no-grad mode."""
        cache = self._branch_cache
        key = None
        if self.jare_cache and not torch.is_grad_enabled():
            key = self._cache_key(routing, batch, device)
            if cache is not None and cache.routing is routing and cache.key == key:
                return cache.v, cache.uw
        routed = routing.for_batch(batch)
        u, v = self._gather(routed.slot_ids.to(device), routed.task)  # (B, k, r, d_out), (B, k, r, d_in)
        b, k, r, _ = v.shape
        w = routed.weights.to(device=device, dtype=v.dtype)  # (B, k)
        # w folded into U once per routing (not into h at every step): what the cache stores.
        uw = (u * w[:, :, None, None]).reshape(b, k * r, self.out_features)
        v = v.reshape(b, k * r, self.in_features)
        self._branch_cache = _BranchCache(routing, key, v, uw) if key is not None else None
        return v, uw

    def _cache_key(self, routing: Routing, batch: int, device: torch.device) -> tuple:
        """What a cached branch depends on besides the routing object: an optimizer step or a
        copy_ bumps a tensor's version, and a ZeRO-3 gather or `.data =` swaps its storage."""
        tasks = range(self.jare_num_tasks) if routing.task is None else (routing.task,)
        params = [p for t in tasks for p in self.task_parameters(t)]
        return (batch, device, self.jare_num_tasks, tuple((p._version, p.data_ptr()) for p in params))

    # ---- re-parameterisation ----------------------------------------------------------------
    def delta_weight(self, slot_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Dense sum_j w_j U_j^T V_j: (d_out, d_in). For merge and for tests, never in forward."""
        u, v = self._gather(slot_ids[None], None)  # (1, k, r, d_out), (1, k, r, d_in)
        w = weights.to(v.dtype)
        return torch.einsum("k,kro,kri->oi", w, u[0], v[0])  # (d_out, d_in)

    @torch.no_grad()
    def merge(self, slot_ids: torch.Tensor, weights: torch.Tensor) -> None:
        """Add one fixed weighting into W; forward then skips the side branch until unmerge."""
        if self._merged_delta is not None:
            raise RuntimeError("JARe layer is already merged; call unmerge() first")
        weight = self.base_layer.weight
        if weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise RuntimeError(f"cannot merge into a {weight.dtype} (quantised) base weight; "
                               "use the per-sample side branch instead")
        delta = self.delta_weight(slot_ids.to(weight.device), weights.to(weight.device)).to(weight.dtype)
        weight.add_(delta)
        self._merged_delta = delta
        self._branch_cache = None

    @torch.no_grad()
    def unmerge(self) -> None:
        if self._merged_delta is None:
            return
        self.base_layer.weight.sub_(self._merged_delta)
        self._merged_delta = None
        self._branch_cache = None

    def extra_repr(self) -> str:
        return f"tasks={self.jare_num_tasks}, slots_per_task={self.jare_slots}, rank={self.jare_rank}"
