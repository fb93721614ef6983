"""What every continual-learning method declares, so the stages never ask which method they run.

A method is one small class (one module per method, registered in `pipeline.methods`). The train
stage asks it for task i's records, its step count and learning rate, and a `Trainer` (the model,
the parameters that train, a per-micro-batch hook, an extra loss term, what to save); eval,
generate and serve ask it for a `Predictor` (the model of one row and how a batch is routed); the
report asks for its role. Shared behaviour lives in the two family bases (`jare.py`, `lora.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from pipeline.config import METHOD_TRAIN_KNOBS, ExperimentConfig
from pipeline.export import TaskExport
from pipeline.jare.routing import Routing
from pipeline.layout import RunLayout

Role = Literal["ours", "ceiling", "floor", "baseline", "peer", "upper bound"]
# Loads the frozen base for training (the stage's, so ZeRO-3 loads it partitioned); the argument
# overrides model.name_or_path (seq_ft continues from the previous task's saved model).
LoadBase = Callable[..., nn.Module]


@dataclass
class Trainer:
    """Everything the train loop needs from a method for one task."""

    model: nn.Module
    params: list[nn.Parameter]  # what the optimizer updates (and nothing else changes)
    # Files written into the task folder by `save`, relative to it (listed in DONE).
    save: Callable[[], list[str]]
    # Called with the record indices of each micro-batch before its forward (JARe: per-sample routing).
    before_forward: Callable[[list[int]], None] | None = None
    # Added to the language-model loss (O-LoRA's orthogonality + L2 terms).
    extra_loss: Callable[[], torch.Tensor] | None = None
    # Recorded in the task's DONE (e.g. the replay buffer's hash).
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Predictor:
    """The model of one row of the accuracy matrix, and how it routes a batch."""

    model: nn.Module
    # records, index of their true task -> routing of the batch (None: the model needs none)
    route: Callable[[list[dict], int], Routing | None] = lambda records, task: None
    # the task index of each sample's top-1 slot, for retrieval accuracy (methods that retrieve)
    top1_tasks: Callable[[Routing], list[int]] | None = None
    # a context that applies a routing to the model's forward passes
    routed: Callable[[Routing | None], contextlib.AbstractContextManager] = lambda r: contextlib.nullcontext()
    router: Any = None  # pipeline.dtkr.router.Router for methods with DTKR keys
    bank: Any = None  # pipeline.jare.inject.JareBank for JARe methods


class Method:
    """Defaults shared by most methods; a method overrides what differs."""

    name: ClassVar[str]
    role: ClassVar[Role]
    trains: ClassVar[str]  # one line: what trains (README, report)
    infers: ClassVar[str]  # one line: what answers at inference
    learns_keys: ClassVar[bool] = False  # DTKR keys per task and a FAISS index (`slm index`)
    retrieves: ClassVar[bool] = False  # eval reports retrieval accuracy
    # The TrainSpec fields only this method reads (pipeline.config.METHOD_TRAIN_KNOBS holds all of them).
    train_knobs: ClassVar[tuple[str, ...]] = ()

    def check(self, cfg: ExperimentConfig) -> None:
        """Refuse a config this method cannot run, before any work (raise ConfigError)."""

    # ---- what a task's result depends on -----------------------------------------------------
    def settings(self, cfg: ExperimentConfig) -> dict[str, Any]:
        """The config subset a trained task depends on; other methods' knobs are left out, so
        changing `train.replay_ratio` does not invalidate an slm run."""
        settings = cfg.model_dump(include={"method", "seed", "model", "jare", "dtkr", "train"})
        for key in METHOD_TRAIN_KNOBS:
            if key not in self.train_knobs:
                settings["train"].pop(key, None)
        return settings

    # ---- training ----------------------------------------------------------------------------
    def training_records(self, cfg: ExperimentConfig, layout: RunLayout, prepared: dict, t: int) -> list[dict]:
        return [dict(r) for r in prepared[cfg.tasks[t].name]["train"]]

    def steps_scale(self, t: int) -> int:
        """Multiplier on train.max_steps at task t (multitask sees t+1 tasks' worth of steps)."""
        return 1

    def learning_rate(self, cfg: ExperimentConfig) -> float:
        return cfg.train.lr

    def trainer(self, cfg: ExperimentConfig, layout: RunLayout, t: int, records: list[dict],
                device: torch.device, load_base: LoadBase) -> Trainer:
        """Build task t's model (calling `load_base()` once, after any encoder work) and say what trains."""
        raise NotImplementedError

    # ---- export ------------------------------------------------------------------------------
    def export(self, cfg: ExperimentConfig, layout: RunLayout, t: int) -> TaskExport:
        """Task t as one LoRA with scaling 1 (`slm export`: PEFT, vLLM, a merged model) or as the
        folder of the whole model the method saved after it; what it answers with after task t."""
        raise NotImplementedError(f"method {self.name!r} has no export")

    # ---- inference ---------------------------------------------------------------------------
    def predictor(self, cfg: ExperimentConfig, layout: RunLayout, after: int, device: torch.device) -> Predictor:
        """The model after training task `after` (0-based; -1 is never passed: the untrained base
        model is built by the stage itself)."""
        raise NotImplementedError
