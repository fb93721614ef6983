"""The published peers (o_lora, n_lora, gainlora): one new LoRA per task, earlier ones frozen and
kept, no task id at inference; each with its authors' settings as a preset beside the harness's.

What they share lives here: the per-task LoRAs (`peer_model`: base + tasks 0..n-1's saved LoRAs,
frozen, + a fresh trainable one), the presets (`PeerOptions`), their learning-rate schedule and
export. What makes each one the published method, its loss (and GainLoRA's gates), is its own
module's.

Presets (`methods.<name>.preset`): `uniform` runs every peer the way the harness runs every
adapter method (the adapter's rank and modules, alpha = rank, no dropout, warmup then linear
decay at one learning rate), which is fair between methods; `official` is what the authors'
scripts run (cmnfriend/O-LoRA scripts_llama/, PKU-YuanGroup/N-LoRA scripts_llama/,
liangyanshuo/gainlora gen_script_*.sh). An option left unset takes its preset's value; one set
explicitly wins over either preset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field

from pipeline.errors import ConfigError
from pipeline.methods.base import LoadBase, MethodOptions, Predictor, Trainer, constant_lr, warmup_then_linear_decay
from pipeline.methods.lora.method import LoraMethod, save_peft_state
from pipeline.methods.lora.model import LoraSettings, load_lora_state, lora_config
from pipeline.peft_export import TaskExport, concat_loras, lora_from_peft_state, scale_lora
from pipeline.runtime.models import base_model
from pipeline.state.artifacts import read_safetensors

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig
    from pipeline.experiment import Experiment
    from pipeline.state.layout import RunLayout

Preset = Literal["uniform", "official"]


def adapter_name(t: int) -> str:
    return f"task{t}"


class PeerOptions(MethodOptions):
    """The options every peer has; None takes the preset's value."""

    preset: Preset = "uniform"
    """uniform: the harness's settings for every adapter method (adapter.rank and adapter.target_modules, alpha =
    rank, no dropout, warmup then linear decay, lr 5e-3); official: the authors' scripts'. The options below left
    unset (None) take the preset's value (the table under this section); one set explicitly wins over either."""
    lr: float | None = Field(None, gt=0)
    """Peak learning rate of the first task (None: the preset's): the option a learning-rate sweep turns
    (bench/lr_sweep.py)."""
    later_lr_scale: float | None = Field(None, gt=0)
    """The learning rate of every task after the first, as a multiple of lr (None: the preset's; O-LoRA's and
    N-LoRA's LLaMA scripts run 1e-3 on the first task and 1e-4 after)."""
    schedule: Literal["warmup_linear", "constant"] | None = None
    """warmup_linear: train.warmup_ratio of linear warmup, then linear decay to 0; constant: neither (the scripts'
    `--lr_scheduler_type constant --warmup_steps 0`). None: the preset's."""
    rank: int | None = Field(None, ge=1)
    """LoRA rank (None: the preset's; empty there: adapter.rank)."""
    alpha: float | None = Field(None, gt=0)
    """LoRA alpha; a LoRA adds alpha / rank * B A x (None: the preset's; empty there: alpha = rank, scaling 1 like a
    JARe slot)."""
    dropout: float | None = Field(None, ge=0, lt=1)
    """LoRA dropout on the layer input (None: the preset's)."""
    target_modules: list[str] | None = Field(None, min_length=1)
    """The linears a LoRA adapts, by name suffix (None: the preset's; empty there: adapter.target_modules; the
    scripts' q_proj and v_proj are PEFT's default for LLaMA)."""

    # What each preset gives an option left unset; None: from the config (adapter.rank, ...).
    UNIFORM: ClassVar[dict[str, Any]] = {"lr": 5e-3, "later_lr_scale": 1.0, "schedule": "warmup_linear", "rank": None,
                                         "alpha": None, "dropout": 0.0, "target_modules": None}
    OFFICIAL: ClassVar[dict[str, Any]] = {"lr": 1e-3, "later_lr_scale": 0.1, "schedule": "constant", "rank": 8,
                                          "alpha": 32.0, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}

    def resolved(self, key: str) -> Any:
        value = getattr(self, key)
        if value is not None:
            return value
        presets = {"uniform": self.UNIFORM, "official": self.OFFICIAL}[self.preset]
        return presets.get(key)


def by_task(schedule: dict[int, float], t: int, default: float) -> float:
    """The value at task t of a schedule {first task index: value from there on}."""
    starts = [start for start in schedule if start <= t]
    return schedule[max(starts)] if starts else default


class PeerMethod(LoraMethod):
    """One LoRA per task, summed at inference; a subclass adds its loss (`task_loss`) and may wrap
    the trainer and predictor (GainLoRA's gates)."""

    role = "peer"
    Options: ClassVar[type[PeerOptions]] = PeerOptions
    one_lora_per_task = True  # every task's LoRA stays in memory
    presets = ("official",)
    # Not exact, unlike JARe's slots: every later task trained with this task's LoRA in its forward
    # pass (and O-LoRA / N-LoRA / GainLoRA constrain the later LoRAs and gates against it), so the
    # later LoRAs carry what it learned; dropping it from the sum leaves that trace and changes them.
    forget_refusal = ("it keeps one LoRA per task, but every later task's LoRA was trained beside this one (in the "
                      "forward pass and against its subspace), so dropping it from the sum would neither remove what "
                      "it learned nor leave the later tasks as trained; retrain from the task before it")

    def lora_settings(self, cfg: ExperimentConfig) -> LoraSettings:
        opts = self.options(cfg)
        rank = opts.resolved("rank") or cfg.adapter.rank
        return LoraSettings(rank=rank, alpha=float(opts.resolved("alpha") or rank), dropout=opts.resolved("dropout"),
                            targets=tuple(opts.resolved("target_modules") or cfg.adapter.target_modules))

    def learning_rate(self, cfg: ExperimentConfig, t: int) -> float:
        opts = self.options(cfg)
        return opts.resolved("lr") * (opts.resolved("later_lr_scale") if t > 0 else 1.0)

    def lr_schedule(self, cfg: ExperimentConfig, steps: int) -> Callable[[int], float]:
        if self.options(cfg).resolved("schedule") == "constant":
            return constant_lr
        return warmup_then_linear_decay(int(cfg.train.warmup_ratio * steps), steps)

    def check(self, cfg: ExperimentConfig) -> None:
        from pipeline.runtime.deepspeed_config import zero_stage

        if zero_stage(cfg) == 3:
            # The loss terms read every task's LoRA outside the forward pass, where ZeRO-3 holds
            # only shards; gathering them every step is not implemented.
            raise ConfigError(f"method {self.name} does not support ZeRO-3 (train.deepspeed={cfg.train.deepspeed}); "
                              "use zero2 or zero2_offload (its LoRAs are small)")

    # ---- training ----------------------------------------------------------------------------
    def task_loss(self, exp: Experiment, t: int, layers: list, params: list[torch.nn.Parameter]
                  ) -> Callable[[], torch.Tensor] | None:
        """The term the method adds to the LM loss at task t (None: nothing); `layers` are the
        PEFT LoRA layers, adapter `adapter_name(t)` the new one, `params` its A and B."""
        return None

    def trainer(self, exp: Experiment, t: int, records: list[dict], device: torch.device,
                load_base: LoadBase) -> Trainer:
        cfg, layout = exp.cfg, exp.layout
        model = peer_model(cfg, layout, self.lora_settings(cfg), t, load_base(), train_new=True)
        new = adapter_name(t)
        layers = lora_layers(model)
        params = [p for layer in layers for p in (layer.lora_A[new].weight, layer.lora_B[new].weight)]
        return Trainer(model, params, lambda: save_peft_state(cfg, layout, t, model, params, adapter_name=new),
                       extra_loss=self.task_loss(exp, t, layers, params))

    # ---- inference and export ------------------------------------------------------------------
    def predictor(self, exp: Experiment, after: int, device: torch.device) -> Predictor:
        cfg, layout = exp.cfg, exp.layout
        return Predictor(peer_model(cfg, layout, self.lora_settings(cfg), after + 1, base_model(cfg.model, device),
                                    train_new=False))

    def export(self, exp: Experiment, t: int) -> TaskExport:
        cfg, layout = exp.cfg, exp.layout
        # Inference adds every task's LoRA up to t: one LoRA of rank (t+1)*r holds that sum exactly.
        paths = [layout.adapter_file(j, cfg.tasks[j].name) for j in range(t + 1)]
        scaling = self.lora_settings(cfg).scaling
        lora = concat_loras([scale_lora(lora_from_peft_state(read_safetensors(p)), scaling) for p in paths])
        return TaskExport(lora, describes=f"the sum of the LoRAs of tasks 0..{t}, as the method answers after task {t}",
                          info={"sources": [str(p) for p in paths]})


def peer_model(cfg: ExperimentConfig, layout: RunLayout, settings: LoraSettings, n_saved: int, model,
               train_new: bool):
    """Base + the saved LoRAs of tasks 0..n_saved-1 (frozen) [+ a fresh, trainable one], all
    active, so their outputs add up."""
    from peft import get_peft_model

    names = [adapter_name(j) for j in range(n_saved + int(train_new))]
    for j, name in enumerate(names):
        torch.manual_seed(cfg.seed + j)  # a different random A per task
        if j == 0:
            model = get_peft_model(model, lora_config(settings), adapter_name=name)
        else:
            model.add_adapter(name, lora_config(settings))
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
