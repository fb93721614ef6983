"""seq_ft: sequential full fine-tuning of the base, task after task (the paper's "Fine-tune" row).

Task t starts from the model saved after task t-1 (the base at t = 0) and trains every linear
layer of the decoder blocks (or `methods.seq_ft.modules`) at `methods.seq_ft.lr`, under the experiment's
DeepSpeed config: here the optimizer state is the full model's, which is what ZeRO-2/3 and CPU
offload are for. Each task's model is saved whole, as safetensors shards (in the training dtype:
bf16 on GPUs), in <task>/model/, so eval after task i loads it like any local checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import Field
from torch import nn

from pipeline import distributed
from pipeline.errors import ConfigError, NoTargetModuleError
from pipeline.methods.base import LoadBase, Method, MethodOptions, Predictor, Trainer
from pipeline.peft_export import TaskExport
from pipeline.runtime.models import load_base_model
from pipeline.state.artifacts import atomic_path

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig
    from pipeline.experiment import Experiment
    from pipeline.planning.loads import MethodLoad
    from pipeline.planning.shapes import ModelShape

MODEL_DIR = "model"
SHARD_SIZE = "2GB"


class SeqFtOptions(MethodOptions):
    lr: float = Field(3e-5, gt=0)
    """Full fine-tuning learning rate (the reference's 3e-5); the option a learning-rate sweep turns."""
    modules: list[str] | None = None
    """Which linear layers train, by name or suffix (as adapter.target_modules); null: every linear
    layer of the decoder blocks."""


class SeqFt(Method):
    name = "seq_ft"
    role = "floor"
    trains = "every linear layer of the decoder (methods.seq_ft.modules), task after task, at methods.seq_ft.lr"
    infers = "the model after the last task"
    Options = SeqFtOptions

    def memory_load(self, cfg: ExperimentConfig, shape: ModelShape, encoder_dim: int) -> MethodLoad:
        from pipeline.planning.loads import compute_bytes, full_ft_load

        modules = self.options(cfg).modules
        trained = shape.decoder_linears(modules)  # the name rule of mark_trainable, on the meta model's shape
        if modules and not trained:
            raise NoTargetModuleError(f"methods.seq_ft.modules {modules} match no linear layer of the decoder blocks "
                                      f"of {shape.name}")
        return full_ft_load(shape, trained, len(cfg.tasks), compute_bytes(cfg), cfg.method)

    def check(self, cfg: ExperimentConfig) -> None:
        if cfg.model.quantization != "none":
            raise ConfigError(f"method seq_ft trains the base weights, which model.quantization="
                              f"{cfg.model.quantization} stores packed; use model.quantization=none")

    def trainer(self, exp: Experiment, t: int, records: list[dict], device: torch.device,
                load_base: LoadBase) -> Trainer:
        cfg, layout = exp.cfg, exp.layout
        previous = None if t == 0 else str(layout.task_dir(t - 1, cfg.tasks[t - 1].name) / MODEL_DIR)
        model = load_base(previous)
        params = mark_trainable(model, self.options(cfg).modules)

        def save() -> list[str]:
            folder = layout.task_dir(t, cfg.tasks[t].name) / MODEL_DIR
            state = distributed.state_dict_on_main(model)  # gathered to rank 0 alone, a module at a time
            if distributed.is_main():
                with atomic_path(folder) as tmp:
                    model.save_pretrained(tmp, state_dict=state, safe_serialization=True, max_shard_size=SHARD_SIZE)
            distributed.barrier()
            return [f"{MODEL_DIR}/{p.name}" for p in sorted(folder.iterdir())]

        return Trainer(model, params, save)

    def export(self, exp: Experiment, t: int) -> TaskExport:
        cfg, layout = exp.cfg, exp.layout
        folder = layout.task_dir(t, cfg.tasks[t].name) / MODEL_DIR
        return TaskExport(model_dir=folder, describes=f"the whole model saved after task {t} (full fine-tuning: "
                                                      "no adapter to export)", info={"sources": [str(folder)]})

    def predictor(self, exp: Experiment, after: int, device: torch.device) -> Predictor:
        cfg, layout = exp.cfg, exp.layout
        folder = layout.task_dir(after, cfg.tasks[after].name) / MODEL_DIR
        return Predictor(load_base_model(str(folder), cfg.model.dtype, "none", device))


def mark_trainable(model: nn.Module, modules: list[str] | None) -> list[nn.Parameter]:
    """Unfreeze the decoder's linear layers (all, or those whose name ends in one of `modules`);
    embeddings, norms and the LM head stay frozen. Returns the unfrozen parameters."""
    from pipeline.jare.inject import find_targets

    layers = model.get_decoder().layers
    if modules:
        names = find_targets(layers, modules)  # raises NoTargetModuleError naming what exists
    else:
        names = [n for n, m in layers.named_modules() if isinstance(m, nn.Linear)]
        if not names:
            raise NoTargetModuleError(f"{type(model).__name__} has no linear layers in its decoder blocks")
    params = [p for n in names for p in layers.get_submodule(n).parameters()]
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return params
