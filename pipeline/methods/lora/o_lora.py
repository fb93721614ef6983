"""o_lora: O-LoRA (Wang et al. 2023, cmnfriend/O-LoRA): one LoRA per task, each new A pushed
orthogonal to every earlier task's (frozen) A; all LoRAs summed at inference, no task id.

Loss at task t = LM loss + lambda_1 * sum_layers sum_{j<t} |A_j A_t^T|_1 + lambda_2 * sum ||theta_t||_2,
as the reference trainer computes it (src/uie_trainer_lora.py): the L1 norm of the (r x r) products,
and the plain (not squared) L2 norm of each of the new LoRA's matrices. Defaults: lambda_1 0.5,
lambda_2 0 (its published scripts). Earlier LoRAs are loaded from their files and never change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import Field

from pipeline.errors import ConfigError
from pipeline.methods.base import LoadBase, MethodOptions, Predictor, Trainer
from pipeline.methods.lora.method import LoraMethod, save_peft_state
from pipeline.methods.lora.model import load_lora_state, lora_config
from pipeline.peft_export import TaskExport, concat_loras, lora_from_peft_state
from pipeline.runtime.models import base_model
from pipeline.state.artifacts import read_safetensors

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig
    from pipeline.experiment import Experiment
    from pipeline.state.layout import RunLayout


def adapter_name(t: int) -> str:
    return f"task{t}"


class OLoraOptions(MethodOptions):
    lambda1: float = Field(0.5, ge=0)
    """Weight of the orthogonality term sum |A_j A_t^T|_1 between the new LoRA's A and every earlier
    task's (the O-LoRA scripts' 0.5, cmnfriend/O-LoRA scripts/order_*.sh)."""
    lambda2: float = Field(0.0, ge=0)
    """Weight of the L2 norm of the new LoRA's matrices (the O-LoRA scripts' 0)."""


class OLora(LoraMethod):
    name = "o_lora"
    role = "peer"
    trains = "a new LoRA per task, its A kept orthogonal to the earlier (frozen) tasks' A"
    infers = "the sum of every task's LoRA (no task id)"
    Options = OLoraOptions
    one_lora_per_task = True  # every task's LoRA stays in memory
    forget_refusal = "it keeps one LoRA per task, but taking one out of the sum is not implemented yet"

    def check(self, cfg: ExperimentConfig) -> None:
        from pipeline.runtime.deepspeed_config import zero_stage

        if zero_stage(cfg) == 3:
            # The orthogonality term reads every task's A outside the forward pass, where ZeRO-3
            # holds only shards; gathering them every step is not implemented.
            raise ConfigError(f"method {self.name} does not support ZeRO-3 (train.deepspeed={cfg.train.deepspeed}); "
                              "use zero2 or zero2_offload (its LoRAs are small)")

    def trainer(self, exp: Experiment, t: int, records: list[dict], device: torch.device,
                load_base: LoadBase) -> Trainer:
        cfg, layout = exp.cfg, exp.layout
        model = o_lora_model(cfg, layout, t, load_base(), train_new=True)
        new, old = adapter_name(t), [adapter_name(j) for j in range(t)]
        layers = lora_layers(model)
        params = [p for layer in layers for p in (layer.lora_A[new].weight, layer.lora_B[new].weight)]
        lam1, lam2 = self.options(cfg).lambda1, self.options(cfg).lambda2

        def extra_loss() -> torch.Tensor:
            total = params[0].new_zeros(())
            if lam1 and old:
                total = total + lam1 * orthogonality(layers, new, old)
            if lam2:
                total = total + lam2 * sum(torch.linalg.vector_norm(p) for p in params)
            return total

        return Trainer(model, params, lambda: save_peft_state(cfg, layout, t, model, params, adapter_name=new),
                       extra_loss=extra_loss if (lam1 and old) or lam2 else None)

    def predictor(self, exp: Experiment, after: int, device: torch.device) -> Predictor:
        cfg, layout = exp.cfg, exp.layout
        return Predictor(o_lora_model(cfg, layout, after + 1, base_model(cfg.model, device), train_new=False))

    def export(self, exp: Experiment, t: int) -> TaskExport:
        cfg, layout = exp.cfg, exp.layout
        # Inference adds every task's LoRA up to t: one LoRA of rank (t+1)*r holds that sum exactly.
        paths = [layout.adapter_file(j, cfg.tasks[j].name) for j in range(t + 1)]
        lora = concat_loras([lora_from_peft_state(read_safetensors(p)) for p in paths])
        return TaskExport(lora, describes=f"the sum of the LoRAs of tasks 0..{t}, as the method answers after task {t}",
                          info={"sources": [str(p) for p in paths]})


def o_lora_model(cfg: ExperimentConfig, layout: RunLayout, n_saved: int, model, train_new: bool):
    """Base + the saved LoRAs of tasks 0..n_saved-1 (frozen) [+ a fresh, trainable one], all
    active, so their outputs add up."""
    from peft import get_peft_model

    names = [adapter_name(j) for j in range(n_saved + int(train_new))]
    for j, name in enumerate(names):
        torch.manual_seed(cfg.seed + j)  # a different random A per task
        if j == 0:
            model = get_peft_model(model, lora_config(cfg), adapter_name=name)
        else:
            model.add_adapter(name, lora_config(cfg))
    for j in range(n_saved):
        load_lora_state(model, layout.adapter_file(j, cfg.tasks[j].name), adapter_name=names[j])
    model.base_model.set_adapter(names, inference_mode=True)  # all active, all frozen
    if train_new:
        for layer in lora_layers(model):
            layer.lora_A[names[-1]].weight.requires_grad_(True)
            layer.lora_B[names[-1]].weight.requires_grad_(True)
    return model


def lora_layers(model) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def orthogonality(layers: list, new: str, old: list[str]) -> torch.Tensor:
    """sum over layers and earlier tasks j of |A_j A_new^T|_1 (each A: r x d_in): 0 iff every
    row of the new A is orthogonal to every row of the earlier ones."""
    terms = [(layer.lora_A[j].weight @ layer.lora_A[new].weight.T).abs().sum() for layer in layers for j in old]
    return torch.stack(terms).sum()
