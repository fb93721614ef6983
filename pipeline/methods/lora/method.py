"""The LoRA family (seq_lora, replay, multitask; o_lora, n_lora, gainlora in peers.py): PEFT LoRA of
the same rank, on the same modules as JARe's slots (`adapter.rank`, `adapter.target_modules`), at
the method's own `lr` (`lora_settings`; a peer's official preset gives its authors' own).

One LoRA continues through the sequence (seq_lora, replay) or restarts at every stage (multitask);
the peers keep one LoRA per task. Inference: the LoRA(s) saved after the row's task, no routing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pipeline import distributed
from pipeline.methods.base import LoadBase, Method, Predictor, Trainer
from pipeline.methods.lora.model import LoraSettings, lora_model, lora_trainable, save_lora
from pipeline.peft_export import TaskExport, lora_from_peft_state, scale_lora
from pipeline.state.artifacts import read_safetensors
from pipeline.state.layout import ADAPTER_FILE

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig
    from pipeline.experiment import Experiment
    from pipeline.planning.loads import MethodLoad
    from pipeline.planning.shapes import ModelShape
    from pipeline.state.layout import RunLayout

class LoraMethod(Method):
    one_lora_per_task = False  # the peers keep every task's LoRA resident

    def lora_settings(self, cfg: ExperimentConfig) -> LoraSettings:
        """The shape of this method's LoRAs: the harness's uniform one (pipeline.methods.lora.model)."""
        return LoraSettings.of_adapter(cfg)

    def memory_load(self, cfg: ExperimentConfig, shape: ModelShape, encoder_dim: int) -> MethodLoad:
        from pipeline.planning.loads import compute_bytes, lora_load

        lora = self.lora_settings(cfg)
        return lora_load(shape.targets(list(lora.targets)), lora.rank, len(cfg.tasks), self.one_lora_per_task,
                         compute_bytes(cfg), cfg.method, dropout=lora.dropout)

    def continues_from(self, t: int) -> int | None:
        """The task whose saved LoRA task t starts from (None: a fresh LoRA, B = 0)."""
        return t - 1 if t > 0 else None

    def trainer(self, exp: Experiment, t: int, records: list[dict], device: torch.device,
                load_base: LoadBase) -> Trainer:
        cfg, layout = exp.cfg, exp.layout
        model = lora_model(cfg, layout, self.lora_settings(cfg), self.continues_from(t), device, model=load_base())
        params = lora_trainable(model)
        return Trainer(model, params, lambda: save_peft_state(cfg, layout, t, model, params))

    def predictor(self, exp: Experiment, after: int, device: torch.device) -> Predictor:
        cfg, layout = exp.cfg, exp.layout
        return Predictor(lora_model(cfg, layout, self.lora_settings(cfg), after, device))

    def export(self, exp: Experiment, t: int) -> TaskExport:
        cfg, layout = exp.cfg, exp.layout
        path = layout.adapter_file(t, cfg.tasks[t].name)
        lora = scale_lora(lora_from_peft_state(read_safetensors(path)), self.lora_settings(cfg).scaling)
        return TaskExport(lora,
                          describes=f"the LoRA saved after task {t} ({cfg.tasks[t].name}), as the method answers",
                          info={"sources": [str(path)]})


def save_peft_state(cfg: ExperimentConfig, layout: RunLayout, t: int, model, params,
                    adapter_name: str = "default") -> list[str]:
    """Write one LoRA's tensors (gathered under ZeRO-3) as task t's adapter file."""
    from peft import get_peft_model_state_dict

    def state() -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in get_peft_model_state_dict(model, adapter_name=adapter_name).items()}

    tensors = distributed.gathered(params, state)
    if distributed.is_main():
        save_lora(model, layout.adapter_file(t, cfg.tasks[t].name), {"method": cfg.method, "encoder": cfg.dtkr.encoder},
                  state=tensors)
    return [ADAPTER_FILE]
