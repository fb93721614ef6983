"""multitask: at stage i a fresh LoRA learns tasks 0..i jointly: the upper bound."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pipeline.methods.lora.method import LoraMethod

if TYPE_CHECKING:
    from pipeline.experiment import Experiment


class Multitask(LoraMethod):
    name = "multitask"
    role = "upper bound"
    trains = "at stage i, one fresh LoRA on tasks 0..i jointly (i+1 times the steps)"
    infers = "the LoRA of the last stage"

    def reads_data_of(self, t: int) -> range:
        return range(t + 1)

    def training_records(self, exp: Experiment, prepared: Mapping, t: int) -> list[dict]:
        cfg = exp.cfg
        return [dict(r) for j in range(t + 1) for r in prepared[cfg.tasks[j].name]["train"]]

    def steps_scale(self, t: int) -> int:
        return t + 1  # the same number of steps per task as the sequential methods

    def continues_from(self, t: int) -> int | None:
        return None
