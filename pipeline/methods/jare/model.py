"""The model a JARe method answers with at a point of the sequence: the base with the saved slots
of tasks 0..n-1 injected (frozen). Train, eval, generate and serve all build it here."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pipeline.jare.inject import JareBank, inject_jare
from pipeline.runtime.models import base_model

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig
    from pipeline.state.layout import RunLayout


def slot_dtype(model) -> torch.dtype:
    """Slots follow the compute dtype; a quantised base computes in its non-quantised dtype."""
    return next(p.dtype for p in model.parameters() if p.dtype in (torch.float32, torch.bfloat16, torch.float16))


def jare_model(cfg: ExperimentConfig, layout: RunLayout, n_tasks: int, slots: int, device: torch.device | None = None,
               model=None) -> tuple[torch.nn.Module, JareBank]:
    """Base + JARe with the saved slots of tasks 0..n_tasks-1 (all frozen)."""
    model = model if model is not None else base_model(cfg.model, device)
    bank = inject_jare(model, cfg.adapter.target_modules, cfg.adapter.rank, slots, slot_dtype(model))
    for j in range(n_tasks):
        name = cfg.tasks[j].name
        bank.load_task(name, layout.adapter_file(j, name), expect_meta={"task": name})
    bank.train_only(None)
    return model, bank
