"""n_lora: N-LoRA (Yang et al., COLING 2025, PKU-YuanGroup/N-LoRA): one LoRA per task, each new one
kept sparse by an L1 penalty so that the tasks' updates collide little; all LoRAs summed at
inference, no task id.

Loss at task t, as the official trainer computes it (src/uie_trainer_lora.py, `training_step`):

    LM loss + lambda * sum over adapted layers of ||A_t B_t||_1,   A_t B_t = loranew_A.weight @ loranew_B.weight

with no orthogonality term (the trainer parses `lamda_2` and never uses it) and no alpha / r. Their
loranew_A is nn.Linear(d_in, r) and loranew_B nn.Linear(r, d_out), so the weights are A: (r, d_in)
and B: (d_out, r), exactly PEFT's lora_A / lora_B weights; `torch.mm(A, B)` is then the r x r
product, defined only where d_in == d_out (LLaMA-2-7B's q_proj and v_proj; not a GQA model's
v_proj, which the check refuses by name). `torch.norm(., p=1)` of a matrix is the sum of its
entries' absolute values. The paper writes the penalty on the d_out x d_in update instead
(N-LoRA issue #2): `form: paper` is ||B_t A_t||_1, which exists on every layer.

lambda: 0.4 on the T5 standard orders and LLaMA order 3, 0.46 / 0.38 on LLaMA orders 1 / 2
(order 4 uses 1.2 on some tasks, order 5 0.55, order 6 1.8). The official preset is the LLaMA
order-1 script: lambda 0.46, lr 1e-3 on the first task and 1e-4 after, constant, r 8, alpha 32,
dropout 0.1, q_proj and v_proj.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field

from pipeline.errors import ConfigError
from pipeline.methods.lora.peers import PeerMethod, PeerOptions, adapter_name

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig
    from pipeline.experiment import Experiment

Form = Literal["code", "paper"]


class NLoraOptions(PeerOptions):
    sparsity: float | None = Field(None, ge=0)
    """lambda, the weight of the L1 norm of the new LoRA (None: the preset's; uniform: 0.4, the value of most
    official scripts; official: 0.46, LLaMA order 1's, whose learning rates the preset takes): the option its knob
    sweep turns (bench/lr_sweep.py)."""
    form: Form = "code"
    """code: sum over layers of ||A B||_1, the r x r product the official trainer takes (needs d_in == d_out on every
    adapted layer); paper: ||B A||_1, the d_out x d_in update the paper writes."""

    UNIFORM: ClassVar[dict[str, Any]] = {**PeerOptions.UNIFORM, "sparsity": 0.4}
    OFFICIAL: ClassVar[dict[str, Any]] = {**PeerOptions.OFFICIAL, "sparsity": 0.46}


class NLora(PeerMethod):
    name = "n_lora"
    trains = ("a new LoRA per task under an L1 penalty on its A B (methods.n_lora.sparsity; the official "
              "code's r x r form, or the paper's d x d update)")
    infers = "the sum of every task's LoRA (no task id)"
    Options = NLoraOptions
    own_knob = "sparsity"

    def config_problems(self, cfg: ExperimentConfig) -> list[str]:
        opts = self.options(cfg)
        if opts.form != "code":
            return []
        rectangular = non_square_targets(cfg.model.name_or_path, self.lora_settings(cfg).targets)
        if not rectangular:
            return []
        shown = ", ".join(f"{name} ({d_in} -> {d_out})" for name, d_in, d_out in rectangular[:2])
        return [f"methods.{self.section}.form: code multiplies each LoRA's A (r x d_in) by its B (d_out x r), as the "
                f"official trainer does, which needs d_in == d_out; {cfg.model.name_or_path} has {len(rectangular)} "
                f"adapted linear(s) that are not square, e.g. {shown}: set methods.{self.section}.form=paper "
                f"(||B A||_1, any shape) or methods.{self.section}.target_modules to square linears "
                "(q_proj, o_proj)"]

    def task_loss(self, exp: Experiment, t: int, layers: list, params: list[torch.nn.Parameter]
                  ) -> Callable[[], torch.Tensor] | None:
        opts = self.options(exp.cfg)
        lam, new = opts.resolved("sparsity"), adapter_name(t)
        if not lam:
            return None
        pairs = [(layer.lora_A[new].weight, layer.lora_B[new].weight) for layer in layers]
        penalty = sparsity_penalty(opts.form)
        check_shapes(pairs, opts.form)
        return lambda: lam * penalty(pairs)


def code_l1(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """sum over layers of ||A B||_1 with A: (r, d_in), B: (d_out, r): the official trainer's term,
    `torch.norm(torch.mm(loranew_A, loranew_B), p=1)` summed (r x r products, d_in == d_out)."""
    return torch.stack([(a @ b).abs().sum() for a, b in pairs]).sum()


def paper_l1(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """sum over layers of ||B A||_1, the L1 norm of the d_out x d_in update (built densely once per
    layer and step: the size of the base weight, the penalty's own cost)."""
    return torch.stack([(b @ a).abs().sum() for a, b in pairs]).sum()


def sparsity_penalty(form: Form) -> Callable[[list[tuple[torch.Tensor, torch.Tensor]]], torch.Tensor]:
    return {"code": code_l1, "paper": paper_l1}[form]


def check_shapes(pairs: list[tuple[torch.Tensor, torch.Tensor]], form: Form) -> None:
    """The code form on a non-square layer: refused before the first step, as config_problems does
    for a model it can read."""
    if form == "code" and any(a.shape[1] != b.shape[0] for a, b in pairs):
        raise ConfigError("methods.n_lora.form=code needs square adapted linears (A (r x d_in) @ B (d_out x r)); "
                          "some are not", hint="set methods.n_lora.form=paper, or target square linears")


def non_square_targets(model: str, targets: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(name, d_in, d_out) of the adapted linears of `model` that are not square; [] when the model's
    config cannot be read here (the trainer's check then refuses them at the first task)."""
    from pipeline.planning.shapes import model_shape

    try:
        shape = model_shape(model)
    except (ConfigError, OSError, ValueError):  # a hub id offline, a folder not there yet: checked at training
        return []
    try:
        linears = shape.targets(list(targets))
    except ConfigError:
        return []  # no match: reported by the trainer's build with its own message
    return [(lin.name, lin.in_features, lin.out_features) for lin in linears if lin.in_features != lin.out_features]
