"""replay: seq_lora plus a small seeded buffer of every earlier task's training records (the
paper's "Replay" row, 1 % by default).

The buffer of task i holds max(1, round(ratio * n_j)) records of each earlier task j, a
seeded sample, and is written to the task's folder (replay_buffer.jsonl, listed in its DONE), so a
resumed or re-run task trains on exactly the same records; a buffer on disk that no longer matches
the data is an error, not silently replaced.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from pydantic import Field

from pipeline import distributed
from pipeline.data.records import stable_rng, stable_sample
from pipeline.errors import StageInputError
from pipeline.methods.base import LoadBase, MethodOptions, Trainer
from pipeline.methods.lora.method import LoraMethod
from pipeline.state.artifacts import atomic_write_text

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig
    from pipeline.experiment import Experiment

BUFFER_FILE = "replay_buffer.jsonl"


class ReplayOptions(MethodOptions):
    ratio: float = Field(0.01, gt=0, le=1)
    """The fraction of each earlier task's training records mixed into task i's data (the paper's
    1 %), at least one record per earlier task: the option its knob sweep turns (bench/lr_sweep.py)."""


class Replay(LoraMethod):
    name = "replay"
    role = "baseline"
    trains = "as seq_lora, plus a seeded buffer of methods.replay.ratio (1 %) of each earlier task's records"
    infers = "the LoRA after the last task"
    Options = ReplayOptions
    own_knob = "ratio"

    def reads_data_of(self, t: int) -> range:
        return range(t + 1)  # the buffer samples every earlier task's records

    def training_records(self, exp: Experiment, prepared: Mapping, t: int) -> list[dict]:
        cfg, layout = exp.cfg, exp.layout
        own = super().training_records(exp, prepared, t)
        buffer = replay_buffer(cfg, prepared, t, self.options(cfg).ratio)
        _write_or_check(layout.task_dir(t, cfg.tasks[t].name) / BUFFER_FILE, buffer)
        return own + buffer

    def trainer(self, exp: Experiment, t: int, records: list[dict], device: torch.device,
                load_base: LoadBase) -> Trainer:
        trainer = super().trainer(exp, t, records, device, load_base)
        save_adapter = trainer.save
        trainer.save = lambda: [*save_adapter(), BUFFER_FILE]
        return trainer


def replay_buffer(cfg: ExperimentConfig, prepared: Mapping, t: int, ratio: float) -> list[dict]:
    """A seeded sample of each earlier task's training records (at least one per task)."""
    buffer: list[dict] = []
    for j in range(t):
        name = cfg.tasks[j].name
        records = [dict(r) for r in prepared[name]["train"]]
        n = max(1, round(ratio * len(records)))
        buffer += stable_sample(records, n, stable_rng("replay", cfg.seed, cfg.tasks[t].name, name))
    return buffer


def _write_or_check(path, buffer: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in buffer)
    if path.is_file():
        if path.read_text() != text:
            raise StageInputError(f"{path} holds another replay buffer than the data now gives (earlier "
                                  "tasks' records or methods.replay.ratio changed)",
                                  hint=f"`slm run --restart` (or `slm train --task <i> --restart`) discards "
                                       f"{path.parent} and retrains it with the new buffer")
        return
    if distributed.is_main():
        atomic_write_text(path, text)
    distributed.barrier()
