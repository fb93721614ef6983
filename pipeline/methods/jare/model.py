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


def kept_tasks(cfg: ExperimentConfig, layout: RunLayout, n: int) -> list[tuple[int, str]]:
    """(index, name) of tasks 0..n-1 that still hold slots and keys (not removed by `slm forget`)."""
    return [(j, t.name) for j, t in enumerate(cfg.tasks[:n]) if not layout.forgotten(j, t.name)]


def slot_dtype(model) -> torch.dtype:
    """Slots follow the compute dtype; a quantised base computes in its non-quantised dtype."""
    return next(p.dtype for p in model.parameters() if p.dtype in (torch.float32, torch.bfloat16, torch.float16))


def jare_model(cfg: ExperimentConfig, layout: RunLayout, n_tasks: int, slots: int, device: torch.device | None = None,
               model=None) -> tuple[torch.nn.Module, JareBank]:
    """Base + JARe with the saved slots of tasks 0..n_tasks-1 (all frozen; those `slm forget` removed
    left out, as the index leaves out their keys)."""
    model = model if model is not None else base_model(cfg.model, device)
    bank = inject_jare(model, cfg.adapter.target_modules, cfg.adapter.rank, slots, slot_dtype(model))
    for j, name in kept_tasks(cfg, layout, n_tasks):
        bank.load_task(name, layout.adapter_file(j, name), expect_meta={"task": name})
    bank.train_only(None)
    return model, bank
