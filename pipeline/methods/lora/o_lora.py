"""o_lora: O-LoRA (Wang et al. 2023, cmnfriend/O-LoRA): one LoRA per task, each new A pushed
orthogonal to every earlier task's (frozen) A; all LoRAs summed at inference, no task id.

Loss at task t = LM loss + lambda_1 * sum_layers sum_{j<t} |A_j A_t^T|_1 + lambda_2 * sum ||theta_t||_2,
as the reference trainer computes it (src/uie_trainer_lora.py, `training_step`): the L1 norm of
the (r x r) products, and the plain (not squared) L2 norm of each of the new LoRA's matrices.
lambda_1 0.5 and lambda_2 0 (scripts/order_*.sh, scripts_llama/order_*.sh); the 15-task script
(cmnfriend/O-LoRA scripts/long.sh) raises lambda_1 to 5 from its 10th task on and sets lambda_2 per dataset,
which the official preset carries (`lambda1_from_task`, `lambda2_by_task`). Earlier LoRAs are
loaded from their files and never change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import Field

from pipeline.methods.lora.peers import PeerMethod, PeerOptions, adapter_name, by_task

if TYPE_CHECKING:
    from pipeline.experiment import Experiment

# cmnfriend/O-LoRA scripts/long.sh's --lamda_2 on the tasks it sets one, by CL_Benchmark dataset name.
LONG_SCRIPT_LAMBDA2 = {"COPA": 0.1, "QQP": 0.1, "RTE": 0.3, "SST-2": 0.1, "yahoo": 0.1, "BoolQA": 0.1, "WiC": 0.3}


class OLoraOptions(PeerOptions):
    lambda1: float = Field(0.5, ge=0)
    """Weight of the orthogonality term sum |A_j A_t^T|_1 between the new LoRA's A and every earlier task's (the
    O-LoRA scripts' 0.5): the option its knob sweep turns (bench/lr_sweep.py)."""
    lambda2: float = Field(0.0, ge=0)
    """Weight of the L2 norm of the new LoRA's matrices (the O-LoRA scripts' 0)."""
    lambda1_from_task: dict[int, float] | None = None
    """lambda1 from a task index (0-based) on: {9: 5.0} is cmnfriend/O-LoRA scripts/long.sh's 5 from its
    10th task (a sequence of fewer than 10 tasks never reaches it). None: the preset's."""
    lambda2_by_task: dict[str, float] | None = None
    """lambda2 of the tasks named here, the others lambda2. None: the preset's (official: cmnfriend/O-LoRA
    scripts/long.sh's per-dataset values, which apply to tasks of those CL_Benchmark names)."""

    UNIFORM: ClassVar[dict[str, Any]] = {**PeerOptions.UNIFORM, "lambda1_from_task": {}, "lambda2_by_task": {}}
    OFFICIAL: ClassVar[dict[str, Any]] = {**PeerOptions.OFFICIAL, "lambda1_from_task": {9: 5.0},
                                          "lambda2_by_task": LONG_SCRIPT_LAMBDA2}

    def lambdas(self, t: int, task: str) -> tuple[float, float]:
        """(lambda_1, lambda_2) at task t, named `task`."""
        return (by_task(self.resolved("lambda1_from_task"), t, self.lambda1),
                self.resolved("lambda2_by_task").get(task, self.lambda2))


class OLora(PeerMethod):
    name = "o_lora"
    trains = "a new LoRA per task, its A kept orthogonal to the earlier (frozen) tasks' A"
    infers = "the sum of every task's LoRA (no task id)"
    Options = OLoraOptions
    own_knob = "lambda1"

    def task_loss(self, exp: Experiment, t: int, layers: list, params: list[torch.nn.Parameter]
                  ) -> Callable[[], torch.Tensor] | None:
        lam1, lam2 = self.options(exp.cfg).lambdas(t, exp.cfg.tasks[t].name)
        return o_lora_loss(layers, t, params, lam1, lam2)


def o_lora_loss(layers: list, t: int, params: list[torch.nn.Parameter], lam1: float, lam2: float
                ) -> Callable[[], torch.Tensor] | None:
    """lam1 * orthogonality to tasks < t + lam2 * the L2 norms of the new LoRA's matrices (None: both off)."""
    new, old = adapter_name(t), [adapter_name(j) for j in range(t)]
    if not ((lam1 and old) or lam2):
        return None

    def loss() -> torch.Tensor:
        total = params[0].new_zeros(())
        if lam1 and old:
            total = total + lam1 * orthogonality(layers, new, old)
        if lam2:
            total = total + lam2 * sum(torch.linalg.vector_norm(p) for p in params)
        return total

    return loss


def orthogonality(layers: list, new: str, old: list[str]) -> torch.Tensor:
    """sum over layers and earlier tasks j of |A_j A_new^T|_1 (each A: r x d_in): 0 iff every
    row of the new A is orthogonal to every row of the earlier ones."""
    terms = [(layer.lora_A[j].weight @ layer.lora_A[new].weight.T).abs().sum() for layer in layers for j in old]
    return torch.stack(terms).sum()
