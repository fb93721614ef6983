"""What every continual-learning method declares, so the stages never ask which method they run.

A method is one small class (one module per method, registered in `pipeline.methods`), the way a
PEFT tuner ties its config class to its model class: `Options` (its section `methods.<name>` of the
experiment, each field with its help), its role, what it trains and infers, the option a
learning-rate sweep turns, its memory load for `slm plan`, and the hooks the stages call. The train
stage asks it for task i's records, its step count and learning rate, and a `Trainer` (the model,
the parameters that train, a per-micro-batch hook, an extra loss term, what to save); eval,
generate and serve ask it for a `Predictor` (the model of one row and how a batch is routed); the
report asks for its role. Shared behaviour lives in the two family bases (`jare.py`, `lora.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from pipeline.spec import Spec

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pipeline.config import ExperimentConfig
    from pipeline.experiment import Experiment
    from pipeline.jare.routing import Routing
    from pipeline.peft_export import TaskExport
    from pipeline.planning.loads import MethodLoad
    from pipeline.planning.shapes import ModelShape

Role = Literal["ours", "ceiling", "floor", "baseline", "peer", "upper bound"]
# Loads the frozen base for training (the stage's, so ZeRO-3 loads it partitioned); the argument
# overrides model.name_or_path (seq_ft continues from the previous task's saved model).
LoadBase = Callable[..., "nn.Module"]


class MethodOptions(Spec):
    """Options every method has; a method's `Options` extends it."""

    lr: float = Field(5e-3, gt=0)
    """Learning rate of what the method trains (AdamW, warmup then linear decay): the option a
    learning-rate sweep turns (bench/lr_sweep.py)."""

    def resolved(self, key: str) -> Any:
        """The value option `key` takes (a method with presets fills the options left unset from its
        preset, pipeline/methods/lora/peers.py)."""
        return getattr(self, key)


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
    # Called before the first micro-batch of every optimizer step and after its last one (the
    # optimizer has stepped): GainLoRA projects its new gate's update out of the earlier tasks' subspaces.
    before_step: Callable[[], None] | None = None
    after_step: Callable[[], None] | None = None
    # Recorded in the task's DONE (e.g. the replay buffer's hash).
    info: dict[str, Any] = field(default_factory=dict)


def _no_routing(records: list[dict], task: int) -> Routing | None:
    return None


def _unrouted(routing: Routing | None) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


@dataclass
class Predictor:
    """The model of one row of the accuracy matrix, and how it routes a batch."""

    model: nn.Module
    # records, index of their true task -> routing of the batch (None: the model needs none); a
    # JARe Routing, or the method's own (GainLoRA: its gates' weights per input)
    route: Callable[[list[dict], int], Routing | Any] = _no_routing
    # the task name of each sample's top-1 slot (or gate), for retrieval accuracy (methods that retrieve)
    top1_tasks: Callable[[Any], list[str]] | None = None
    # a context that applies a routing to the model's forward passes
    routed: Callable[[Any], contextlib.AbstractContextManager] = _unrouted
    router: Any = None  # pipeline.dtkr.router.Router for methods with DTKR keys
    bank: Any = None  # pipeline.jare.inject.JareBank for JARe methods


def warmup_then_linear_decay(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))  # linear decay to 0
    return f


def constant_lr(step: int) -> float:
    """No warmup, no decay (the O-LoRA and N-LoRA scripts' `--lr_scheduler_type constant --warmup_steps 0`)."""
    return 1.0


class Method:
    """Defaults shared by most methods; a method overrides what differs."""

    name: ClassVar[str]
    role: ClassVar[Role]
    trains: ClassVar[str]  # one line: what trains (README, report)
    infers: ClassVar[str]  # one line: what answers at inference
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    # The `methods.<section>` this method reads; None: its own name (oracle_task_id reads slm's).
    options_key: ClassVar[str | None] = None
    sweep_key: ClassVar[str] = "lr"  # the option a learning-rate sweep turns (bench/lr_sweep.py)
    # The method's own knob, swept by the same rule at its learning-rate pick (O-LoRA's lambda1,
    # N-LoRA's sparsity, replay's ratio); None: the learning rate is all a sweep turns.
    own_knob: ClassVar[str | None] = None
    # Settings a method can run with besides the harness's uniform one (`methods.<name>.preset`):
    # the benches run each as its own row, `<method>@<preset>` (bench/cl_methods.py).
    presets: ClassVar[tuple[str, ...]] = ()
    # Why `slm serve` cannot serve this method (None: it can).
    serve_refusal: ClassVar[str | None] = None
    learns_keys: ClassVar[bool] = False  # DTKR keys per task and a FAISS index (`slm index`)
    has_slots: ClassVar[bool] = False  # per-task slots in a JareBank: a task can be named, merged, added live
    # Answers choose their adapter per input with no task id (DTKR retrieval; GainLoRA's gates):
    # eval reports retrieval accuracy, the share of inputs whose top-1 choice is their own task's.
    # The oracle has slots and keys but routes by the true task.
    retrieves: ClassVar[bool] = False
    # Why `slm forget` cannot take one task back out of this method's model (None: it can, exactly).
    forget_refusal: ClassVar[str | None] = ("its model after a task holds every task learned so far in one set of "
                                            "weights; no part of it is one task's alone")

    def forget_problem(self, cfg: ExperimentConfig) -> str | None:
        """Why `slm forget` cannot remove a task exactly under `cfg` (None: it can)."""
        return self.forget_refusal

    @property
    def section(self) -> str:
        return self.options_key or self.name

    def options(self, cfg: ExperimentConfig) -> Any:
        """This method's options in `cfg` (an instance of its `Options`): validated with the experiment
        by pipeline.experiment; a config built by hand holds them raw and they are validated here."""
        if cfg.methods is None or isinstance(cfg.methods, dict):
            return self.Options.model_validate((cfg.methods or {}).get(self.section, {}))
        return getattr(cfg.methods, self.section)

    def config_problems(self, cfg: ExperimentConfig) -> list[str]:
        """Problems of a whole experiment for this method (`key: why` lines), reported with the
        config's own when it is loaded."""
        return []

    def check(self, cfg: ExperimentConfig) -> None:
        """Refuse a config this method cannot run here, before any work (raise ConfigError); `slm
        plan` asks it per DeepSpeed / quantization row."""

    # ---- what a task's result depends on -----------------------------------------------------
    def settings(self, cfg: ExperimentConfig) -> dict[str, Any]:
        """The config subset a trained task depends on: the shared sections it reads and its own
        options; other methods' options are left out, so tuning replay never invalidates an slm run."""
        include = {"method", "seed", "model", "adapter", "train", *(("dtkr",) if self.learns_keys else ())}
        return {**cfg.model_dump(include=include), "methods": {self.section: self.options(cfg).model_dump()}}

    def eval_settings(self, cfg: ExperimentConfig) -> dict[str, Any]:
        """The config subset an eval row depends on besides the tasks it loads (routing, decoding)."""
        include = {"method", "model", "adapter", "eval", *(("dtkr",) if self.learns_keys else ())}
        return {**cfg.model_dump(include=include), "methods": {self.section: self.options(cfg).model_dump()}}

    # ---- planning ------------------------------------------------------------------------------
    def key_slots(self, cfg: ExperimentConfig) -> int:
        """DTKR keys per task in the index (0: the method learns none)."""
        return 0

    def memory_load(self, cfg: ExperimentConfig, shape: ModelShape, encoder_dim: int) -> MethodLoad:
        """What the method adds to `slm plan`'s memory of a frozen-base step (pipeline.planning)."""
        from pipeline.errors import ConfigError

        raise ConfigError(f"method {self.name} declares no memory load, so `slm plan` cannot plan it",
                          hint=f"give {type(self).__name__} a `memory_load` (pipeline/methods/base.py says how)")

    # ---- training ----------------------------------------------------------------------------
    def training_records(self, exp: Experiment, prepared: Mapping, t: int) -> list[dict]:
        return [dict(r) for r in prepared[exp.cfg.tasks[t].name]["train"]]

    def reads_data_of(self, t: int) -> range:
        """The tasks whose prepared records `training_records` reads for task t: a result depends on
        them (pipeline.state.validity), and on no other task's data."""
        return range(t, t + 1)

    def steps_scale(self, t: int) -> int:
        """Multiplier on train.max_steps at task t (multitask sees t+1 tasks' worth of steps)."""
        return 1

    def learning_rate(self, cfg: ExperimentConfig, t: int) -> float:
        """The peak learning rate of task t."""
        return self.options(cfg).lr

    def lr_schedule(self, cfg: ExperimentConfig, steps: int) -> Callable[[int], float]:
        """The multiplier of the learning rate at each step of a task of `steps` steps (LambdaLR):
        linear warmup over train.warmup_ratio of the steps, then linear decay to 0."""
        return warmup_then_linear_decay(int(cfg.train.warmup_ratio * steps), steps)

    def trainer(self, exp: Experiment, t: int, records: list[dict], device: torch.device,
                load_base: LoadBase) -> Trainer:
        """Build task t's model (calling `load_base()` once, after any encoder work) and say what trains."""
        raise NotImplementedError

    # ---- export ------------------------------------------------------------------------------
    def export(self, exp: Experiment, t: int) -> TaskExport:
        """Task t as one LoRA with scaling 1 (`slm export`: PEFT, vLLM, a merged model) or as the
        folder of the whole model the method saved after it; what it answers with after task t."""
        raise NotImplementedError(f"method {self.name!r} has no export")

    # ---- inference ---------------------------------------------------------------------------
    def predictor(self, exp: Experiment, after: int, device: torch.device) -> Predictor:
        """The model after training task `after` (0-based; -1 is never passed: the untrained base
        model is built by the stage itself)."""
        raise NotImplementedError
