"""n_lora: N-LoRA (Yang et al., COLING 2025, PKU-YuanGroup/N-LoRA): O-LoRA plus an L1 sparsity
penalty on the new task's LoRA update, so each task's update lives on few, non-colliding weights.

Loss at task t = O-LoRA's loss (pipeline.methods.o_lora) + lambda * sum_layers ||dW_t||_1, where
dW_t = scaling * B_t A_t is the new LoRA's (d_out x d_in) update: the paper puts the sparsity on
the update dW_i = A_i B_i itself. Built densely once per step per layer (d_out x d_in, the size of
the base weight), which is the penalty's own cost; earlier LoRAs stay frozen and are summed at
inference, as in O-LoRA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import Field

from pipeline.methods.base import LoadBase, Trainer
from pipeline.methods.lora.o_lora import OLora, OLoraOptions, adapter_name, lora_layers

if TYPE_CHECKING:
    from pipeline.experiment import Experiment


class NLoraOptions(OLoraOptions):
    sparsity: float = Field(1e-4, ge=0)
    """Weight of the L1 norm of the new LoRA's update, sum over layers of ||B A||_1. 1e-4: on SmolLM2
    (o_proj, rank 8, lr 5e-3) its gradient on B is then ~1/3 of the LM loss's in the first steps, a
    real pull towards sparse updates that still lets the task learn (1e-3 outweighs the task, 1e-5
    does nearly nothing). The norm sums d_out x d_in entries per layer: scale it for other shapes."""


class NLora(OLora):
    name = "n_lora"
    role = "peer"
    trains = "as o_lora, plus an L1 penalty on the new task's LoRA update (methods.n_lora.sparsity)"
    infers = "the sum of every task's LoRA (no task id)"
    Options = NLoraOptions

    def trainer(self, exp: Experiment, t: int, records: list[dict], device: torch.device,
                load_base: LoadBase) -> Trainer:
        cfg = exp.cfg
        trainer = super().trainer(exp, t, records, device, load_base)
        layers, new, lam = lora_layers(trainer.model), adapter_name(t), self.options(cfg).sparsity
        o_lora_terms = trainer.extra_loss

        def extra_loss() -> torch.Tensor:
            total = lam * update_l1(layers, new)
            return total + o_lora_terms() if o_lora_terms is not None else total

        trainer.extra_loss = extra_loss if lam else o_lora_terms
        return trainer


def update_l1(layers: list, name: str) -> torch.Tensor:
    """sum over layers of ||scaling * B A||_1, the L1 norm of LoRA `name`'s weight update."""
    terms = [(layer.scaling[name] * (layer.lora_B[name].weight @ layer.lora_A[name].weight)).abs().sum()
             for layer in layers]
    return torch.stack(terms).sum()
