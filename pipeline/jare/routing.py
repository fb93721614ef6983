"""Per-sample routing: which slots each sample uses and with what weight.

DTKR produces one `Routing` per batch. The `RoutingState` is shared by every JARe layer of a
model and owned by the `JareBank`; it is set before `forward` and left untouched until the next
batch, so gradient-checkpointing recompute during backward reads the same routing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Routing:
    slot_ids: torch.Tensor  # (B, k) global slot indices (task t owns t*P .. t*P+P-1)
    # (B, k), each row sums to 1; with transfer=route_retrieved a row is the sample's own k
    # slots (summing to 1) then its k earlier-task slots (summing to 1, or 0 for the first task)
    weights: torch.Tensor
    # Set when every slot belongs to one task (training, oracle): layers then index that
    # task's tensors directly instead of concatenating all tasks' slots.
    task: int | None = None

    def __post_init__(self) -> None:
        if self.slot_ids.shape != self.weights.shape or self.slot_ids.dim() != 2:
            raise ValueError(f"routing shapes differ: slot_ids {tuple(self.slot_ids.shape)}, "
                             f"weights {tuple(self.weights.shape)}; both must be (batch, k)")

    @property
    def batch_size(self) -> int:
        return self.slot_ids.shape[0]

    def for_batch(self, batch_size: int) -> Routing:
        """Expand to `batch_size` rows: generate() repeats each sample num_beams times in a row."""
        if batch_size == self.batch_size:
            return self
        if batch_size % self.batch_size:
            raise ValueError(f"a batch of {batch_size} rows cannot use routing for {self.batch_size} samples")
        n = batch_size // self.batch_size
        return Routing(self.slot_ids.repeat_interleave(n, 0), self.weights.repeat_interleave(n, 0), self.task)

    def to(self, device: torch.device) -> Routing:
        return Routing(self.slot_ids.to(device), self.weights.to(device), self.task)

    @classmethod
    def single_task(cls, task: int, slots_per_task: int, batch_size: int, device=None) -> Routing:
        """Equal weights over all slots of one task: a plain single-task adapter of rank P*r."""
        ids = torch.arange(task * slots_per_task, (task + 1) * slots_per_task, device=device)
        ids = ids.expand(batch_size, -1)
        return cls(ids, torch.full(ids.shape, 1.0 / slots_per_task, device=device), task)


class RoutingState:
    """The one mutable holder all JARe layers of a model read from."""

    def __init__(self) -> None:
        self.routing: Routing | None = None
