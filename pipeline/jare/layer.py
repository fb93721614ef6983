"""JareLinear: a frozen nn.Linear plus per-task low-rank slots, routed per sample.

    y = W x + sum_{j in topk} w_j * U_j^T (V_j x)      U_j: (r, d_out) zero-init, V_j: (r, d_in) ~ N(0, 1)

The side branch is computed batched per sample: gather each sample's k slots, then two batched
matmuls (the einsums "bli,bsi->bls" and "bls,bso->blo", written as the bmm's they are).
No dense (d_out, d_in) increment is ever built in forward; `merge` builds one on purpose, once,
when a whole batch shares one weighting (re-parameterisation for generation / serving).

Slots of task t are registered directly on this module as `jare_U_<t>` / `jare_V_<t>` (not in a
ParameterList submodule): DeepSpeed ZeRO-3 gathers a module's own parameters before its forward,
and a ParameterList is never called, so its shards would stay empty.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.jare.routing import RoutingState


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

    # ---- task lifecycle ---------------------------------------------------------------------
    def add_task(self, generator: torch.Generator | None = None) -> int:
        t = self.jare_num_tasks
        device = self._device()
        u = torch.zeros(self.jare_slots, self.jare_rank, self.out_features, dtype=self.jare_dtype, device=device)
        v = torch.randn(self.jare_slots, self.jare_rank, self.in_features, generator=generator,
                        dtype=torch.float32).to(device=device, dtype=self.jare_dtype)
        self.register_parameter(f"jare_U_{t}", nn.Parameter(u))
        self.register_parameter(f"jare_V_{t}", nn.Parameter(v))
        self.jare_num_tasks += 1
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

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        return [getattr(self, f"jare_U_{t}"), getattr(self, f"jare_V_{t}")]

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
        routing = routing.for_batch(x.shape[0])
        u, v = self._gather(routing.slot_ids.to(x.device), routing.task)
        b, k, r, _ = v.shape
        xs = x.reshape(b, -1, self.in_features).to(v.dtype)  # (B, L, d_in)
        v = v.reshape(b, k * r, self.in_features)  # (B, k*r, d_in)
        u = u.reshape(b, k * r, self.out_features)  # (B, k*r, d_out)
        w = routing.weights.to(device=x.device, dtype=v.dtype)  # (B, k)
        # The two einsums ("bli,bsi->bls", "bls,bso->blo") written as the bmm's they lower to,
        # and w applied per slot by broadcasting instead of repeat_interleave(r): same
        # arithmetic, ~10 fewer small ops per layer, which matters at decode (L = 1).
        h = torch.bmm(xs, v.transpose(1, 2))  # (B, L, k*r)
        h = (h.view(b, -1, k, r) * w[:, None, :, None]).view(b, -1, k * r)
        delta = torch.bmm(h, u)  # (B, L, d_out)
        return y + delta.reshape(y.shape).to(y.dtype)

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

    @torch.no_grad()
    def unmerge(self) -> None:
        if self._merged_delta is None:
            return
        self.base_layer.weight.sub_(self._merged_delta)
        self._merged_delta = None

    def extra_repr(self) -> str:
        return f"tasks={self.jare_num_tasks}, slots_per_task={self.jare_slots}, rank={self.jare_rank}"
