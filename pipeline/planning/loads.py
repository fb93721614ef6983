"""What a continual-learning method adds to the memory plan of a frozen-base step.

`pipeline.planning.memory` sizes the base model, its activations and the ZeRO buffers; a method adds its own
parameters, by role (`MethodLoad`):

resident     adapter parameters held in memory besides the base (JARe: every task's slots; a
             LoRA method: its LoRA, o_lora: one per task; seq_ft: none, it trains the base itself)
trainable    what the optimizer updates: JARe: task t's P slots; LoRA: one LoRA (o_lora: the
             newest); seq_ft: the decoder linears it selects (`ModelShape.decoder_linears`, by the
             name rule `pipeline.methods.seq_ft.mark_trainable` uses)
saved inputs features per token that trainable linears (or side branches) save for backward:
             a weight gradient needs the layer's input, which a frozen layer never saves
stored       bytes written per task (JARe: P slots x target linears + fp32 keys; LoRA: one
             adapter; gainlora: its LoRA + fp32 gate and subspace bases; seq_ft: the whole model in
             the training dtype)
index keys   DTKR keys per task in the FAISS index (JARe: P; the others: none)

Each method declares its own load (`Method.memory_load`, in its module) from the builders here:
a new method says what it holds, nothing here names it, and nothing here imports a method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError
from pipeline.planning.shapes import LinearShape, ModelShape, saved_input_features

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig

FP32_BYTES = 4
KEY_BYTES = FP32_BYTES  # DTKR keys are stored in fp32


@dataclass(frozen=True)
class MethodLoad:
    """One method's parameters in the plan (see the module doc); counts, not bytes."""

    method: str
    summary: str  # one line for the table's title: what trains
    adapter_label: str  # the table's column for the resident adapter parameters
    resident_params: int
    trainable_params: int
    saved_input_features: int  # per token, summed over layers
    gathered_params: int  # per sample, summed over layers: JARe gathers the routed slots
    tasks: int
    stored_per_task_bytes: int  # written to disk per task
    stored_what: str
    trains_base: bool = False  # the trainable parameters are the base's own weights
    index_keys_per_task: int = 0  # DTKR keys per task in the FAISS index
    modules: tuple[str, ...] = ()  # the kinds of linear the adapters sit on (o_proj; a peer's preset: q_proj, v_proj)
    saved_linears: tuple[LinearShape, ...] = ()  # the linears whose inputs the method saves (saved_input_features)

    @property
    def stored_total_bytes(self) -> int:
        return self.tasks * self.stored_per_task_bytes


def jare_load(targets: list[LinearShape], rank: int, tasks: int, slots: int, gathered: int, encoder_dim: int,
              compute_bytes: int, method: str, note: str = "") -> MethodLoad:
    """T tasks x P slots of rank r on `targets` resident, task t's P slots train, `gathered` slots per sample."""
    slot_params = rank * sum(lin.features for lin in targets)
    summary = f"JARe: T={tasks} x P={slots} slots of rank {rank} resident, task t's P train{note}"
    return MethodLoad(method=method, summary=summary,
                      adapter_label="slots", resident_params=tasks * slots * slot_params,
                      trainable_params=slots * slot_params, saved_input_features=saved_input_features(targets),
                      gathered_params=gathered * slot_params, saved_linears=tuple(targets),
                      tasks=tasks,
                      stored_per_task_bytes=slots * (slot_params * compute_bytes + encoder_dim * KEY_BYTES),
                      stored_what=f"{slots} slots x target linears in {_dtype(compute_bytes)} + {slots} fp32 keys",
                      index_keys_per_task=slots, modules=module_kinds(targets))


def lora_load(targets: list[LinearShape], rank: int, tasks: int, one_per_task: bool, compute_bytes: int,
              method: str, dropout: float = 0.0) -> MethodLoad:
    """One PEFT LoRA of rank `rank` on `targets` (o_lora: one per task, all resident), the newest trains.

    The LoRA's A reads the layer's input (lora_dropout 0 is an identity, so q/k/v share one
    saved input, as JARe's side branches do; with dropout each A saves its own dropped copy);
    frozen LoRAs save nothing."""
    one = rank * sum(lin.features for lin in targets)
    held = f"T={tasks} LoRAs resident, the newest" if one_per_task else "one LoRA"
    saved = sum(lin.in_features for lin in targets) if dropout > 0 else saved_input_features(targets)
    return MethodLoad(method=method, summary=f"LoRA rank {rank}: {held} trains",
                      adapter_label="LoRAs" if one_per_task else "LoRA",
                      resident_params=(tasks if one_per_task else 1) * one, trainable_params=one,
                      saved_input_features=saved, gathered_params=0, tasks=tasks, saved_linears=tuple(targets),
                      stored_per_task_bytes=one * compute_bytes,
                      stored_what=f"one LoRA adapter in {_dtype(compute_bytes)}", modules=module_kinds(targets))


def gated_lora_load(targets: list[LinearShape], rank: int, tasks: int, gate_params: int, basis_values: int,
                    compute_bytes: int, method: str, dropout: float = 0.0) -> MethodLoad:
    """One LoRA per task (all resident, the newest trains) plus one gate per task (`gate_params`,
    fp32: all resident, the newest trains); a task also stores the subspace bases its gate's
    successors are kept out of (at most `basis_values` fp32 values)."""
    base = lora_load(targets, rank, tasks, True, compute_bytes, method, dropout)
    one = base.trainable_params
    return MethodLoad(method=method, summary=f"LoRA rank {rank} + a gate per task: T={tasks} of each resident, "
                                             "the newest of each trains",
                      adapter_label="LoRAs + gates", resident_params=tasks * (one + gate_params),
                      trainable_params=one + gate_params, saved_input_features=base.saved_input_features,
                      gathered_params=0, tasks=tasks, saved_linears=base.saved_linears,
                      stored_per_task_bytes=one * compute_bytes + (gate_params + basis_values) * FP32_BYTES,
                      stored_what=f"one LoRA adapter in {_dtype(compute_bytes)} + its fp32 gate and (at most "
                                  f"{basis_values:,} fp32 values of) subspace bases", modules=base.modules)


def full_ft_load(shape: ModelShape, trained: list[LinearShape], tasks: int, compute_bytes: int,
                 method: str) -> MethodLoad:
    """Full fine-tuning of the linears `trained`: they train and save their inputs; the whole
    model is stored per task."""
    if not trained:
        raise ConfigError(f"method {method}: {shape.name} has no decoder linears where full fine-tuning looks for "
                          "them (model.get_decoder().layers, matching its modules); it supports LLaMA-style models")
    params = sum(lin.params for lin in trained)
    share = params / shape.total_params
    return MethodLoad(method=method, summary=f"full fine-tuning: {len(trained)} decoder linears "
                      f"({share:.1%} of the parameters) train", adapter_label="adapters", resident_params=0,
                      trainable_params=params, saved_input_features=saved_input_features(trained),
                      saved_linears=tuple(trained), gathered_params=0, tasks=tasks,
                      stored_per_task_bytes=shape.total_params * compute_bytes,
                      stored_what=f"the whole model in {_dtype(compute_bytes)}, safetensors shards", trains_base=True)


def module_kinds(targets: list[LinearShape]) -> tuple[str, ...]:
    """The last name parts of `targets`, once each: what `slm plan` says the adapters sit on."""
    return tuple(dict.fromkeys(lin.name.rsplit(".", 1)[-1] for lin in targets))


def _dtype(compute_bytes: int) -> str:
    return "bf16" if compute_bytes == 2 else "fp32"


def compute_bytes(cfg: ExperimentConfig) -> int:
    """Bytes of one trained value: bf16 on GPUs (model.dtype auto or bfloat16), fp32 when asked."""
    return 4 if cfg.model.dtype == "float32" else 2
