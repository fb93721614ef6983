"""gainlora: GainLoRA (Liang et al., NeurIPS 2025, liangyanshuo/gainlora): a new LoRA branch per
task and a gate per task that decides, from the input and with no task id, how much each
branch adds (pipeline.methods.lora.gates); earlier branches and gates frozen, and the new gate
kept at 0 on the earlier tasks' inputs by training it only outside their subspaces.

Task t: tasks 0..t-1's LoRAs and gates are loaded frozen; a fresh LoRA and a new gate (a copy of
task t-1's, its key set from task t's inputs) train. Loss: the LM loss + O-LoRA's terms on the
branches (lambda1 * sum |A_j A_t^T|_1 + lambda2 * L2): the paper's GainLoRA (O-LoRA) variant;
the public repository holds the InfLoRA variant only (A designed from the input subspace and
frozen, B trained), whose gate code this module follows. A gate reads the mean embedding of the
prompt (in training and eval the prompt as eval cuts it, pinned before the forward; in `slm
generate` the prefill's own tokens), so an answer's gate weights do not depend on its batch.

Decoder-only: the official model is T5, whose gates read the encoder input and weight the LoRAs
on q and v of every attention (encoder self, decoder self and cross); here the prompt plays the
encoder input and the LoRAs are the method's target modules (official preset: q_proj, v_proj).
Saved per task: its LoRA (adapter.safetensors) and its gate with the subspace bases of tasks
0..t (gate.safetensors). Inference: every branch, weighted by every gate, per input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import Field

from pipeline import distributed
from pipeline.errors import ConfigError
from pipeline.methods.base import LoadBase, Predictor, Trainer
from pipeline.methods.lora.gates import (
    GateBank,
    TaskGate,
    complement,
    covariance,
    grow_basis,
    initial_key,
    prompt_means,
)
from pipeline.methods.lora.method import save_peft_state
from pipeline.methods.lora.o_lora import o_lora_loss
from pipeline.methods.lora.peers import PeerMethod, PeerOptions, adapter_name, lora_layers, peer_model
from pipeline.runtime.models import base_model, load_tokenizer
from pipeline.state.artifacts import atomic_path, read_safetensors

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig
    from pipeline.experiment import Experiment
    from pipeline.peft_export import TaskExport
    from pipeline.planning.loads import MethodLoad
    from pipeline.planning.shapes import ModelShape

GATE_FILE = "gate.safetensors"  # a task's gate (w1, w2, key) and the bases of tasks 0..t (in, hidden, out)
BASES = ("basis_in", "basis_hidden", "basis_out")
FEATURE_BATCH = 64  # prompts embedded at once when a task's gate features are collected


class GainLoraOptions(PeerOptions):
    lambda1: float = Field(0.5, ge=0)
    """Weight of O-LoRA's orthogonality term between the new branch's A and the earlier ones' (the GainLoRA (O-LoRA)
    variant; O-LoRA's 0.5): the option its knob sweep turns (bench/lr_sweep.py)."""
    lambda2: float = Field(0.0, ge=0)
    """Weight of the L2 norm of the new branch's matrices (O-LoRA's 0)."""
    gate_hidden: int = Field(100, ge=1)
    """h, the hidden width of a gate's two-layer MLP (the scripts' --mlp_hidden_dim 100)."""
    threshold: float = Field(0.995, gt=0, lt=1)
    """The share of an earlier task's gate-feature energy its recorded subspaces keep (GPM's threshold, the scripts'
    --transthreshold 0.995), raised towards 1 along the sequence as the official (1 - th) t / T + th."""

    OFFICIAL: ClassVar[dict[str, Any]] = {**PeerOptions.OFFICIAL, "lr": 3e-4, "later_lr_scale": 1.0, "dropout": 0.0}


@dataclass(frozen=True)
class GateWeights:
    """The routing of a GainLoRA batch: each input's weight on each task's branch."""

    weights: torch.Tensor  # (B, T)


class GainLora(PeerMethod):
    name = "gainlora"
    trains = ("a new LoRA branch and a gate per task (earlier ones frozen); the new gate is trained only outside "
              "the earlier tasks' input subspaces")
    infers = "every task's branch, weighted per input by its gate (no task id)"
    Options = GainLoraOptions
    own_knob = "lambda1"
    retrieves = True  # the gates choose the branches with no task id: eval reports how often the top gate is right
    serve_refusal = ("GainLoRA's gate weights are fixed per prompt at its prefill, and slm serve's decode loop "
                     "regroups rows between steps; answer with `slm generate` or score with `slm eval`")

    def memory_load(self, cfg: ExperimentConfig, shape: ModelShape, encoder_dim: int) -> MethodLoad:
        from pipeline.planning.loads import compute_bytes, gated_lora_load

        lora, d, h = self.lora_settings(cfg), shape.hidden_size, self.options(cfg).gate_hidden
        return gated_lora_load(shape.targets(list(lora.targets)), lora.rank, len(cfg.tasks), 2 * d * h + d,
                               2 * d * d + h * h, compute_bytes(cfg), cfg.method, dropout=lora.dropout)

    # ---- training ----------------------------------------------------------------------------
    def trainer(self, exp: Experiment, t: int, records: list[dict], device: torch.device,
                load_base: LoadBase) -> Trainer:
        cfg, layout = exp.cfg, exp.layout
        opts = self.options(cfg)
        model = peer_model(cfg, layout, self.lora_settings(cfg), t, load_base(), train_new=True)
        tokenizer = load_tokenizer(cfg.model.name_or_path)
        means = prompt_means_of(cfg, tokenizer, model, records, device)  # (N, d), fixed: the embedding is frozen
        earlier = [load_gate(exp, j) for j in range(t)]
        bases = load_bases(exp, t - 1) if t > 0 else None
        gate = new_gate(cfg, t, earlier, bases, means, opts.gate_hidden)
        bank = attach_gates(model, [*(g for g, _ in earlier), gate], device)
        new = adapter_name(t)
        layers = lora_layers(model)
        lora_params = [p for layer in layers for p in (layer.lora_A[new].weight, layer.lora_B[new].weight)]

        def before_forward(idx: list[int]) -> None:
            bank.pinned = bank(means[idx])  # with grad through the new gate

        def save() -> list[str]:
            files = save_peft_state(cfg, layout, t, model, lora_params, adapter_name=new)
            if distributed.is_main():
                grown = grow_bases(bases, gate, means, opts.threshold, t, len(cfg.tasks))
                save_gate(layout.task_dir(t, cfg.tasks[t].name) / GATE_FILE, gate, grown, cfg)
            return [*files, GATE_FILE]

        return Trainer(model, [*lora_params, *gate.trainable()], save, before_forward=before_forward,
                       extra_loss=o_lora_loss(layers, t, lora_params, opts.lambda1, opts.lambda2))

    # ---- inference and export ------------------------------------------------------------------
    def predictor(self, exp: Experiment, after: int, device: torch.device) -> Predictor:
        cfg, layout = exp.cfg, exp.layout
        model = peer_model(cfg, layout, self.lora_settings(cfg), after + 1, base_model(cfg.model, device),
                           train_new=False)
        bank = attach_gates(model, [load_gate(exp, j)[0] for j in range(after + 1)], device)
        tokenizer = load_tokenizer(cfg.model.name_or_path)

        @torch.no_grad()
        def route(records: list[dict], task: int) -> GateWeights:
            return GateWeights(bank(prompt_means_of(cfg, tokenizer, model, records, device)))

        def top1_tasks(routing: GateWeights) -> list[str]:
            return [cfg.tasks[j].name for j in routing.weights.argmax(-1).tolist()]

        @contextlib.contextmanager
        def routed(routing: GateWeights | None) -> Iterator[None]:
            bank.pinned = None if routing is None else routing.weights
            try:
                yield
            finally:
                bank.pinned = None

        return Predictor(model, route, top1_tasks, routed)

    def export(self, exp: Experiment, t: int) -> TaskExport:
        raise ConfigError(f"slm export: after task {t} GainLoRA answers with sum_j a_j(x) B_j A_j x, each branch "
                          "weighted by its gate per input, which one fixed LoRA cannot hold",
                          hint="answer with `slm generate` (the gates run on each prompt) or score with `slm eval`")


# ---- the gates on the model ----------------------------------------------------------------------


def attach_gates(model, gates: list[TaskGate], device: torch.device) -> GateBank:
    """Put the gates on `model` (a submodule, so the engine moves and checkpoints them), weight each
    task's LoRA branch by its gate (a forward hook on its lora_B: B A x * a_j), and compute the
    weights from the input ids at a prefill that no pin covers (`slm generate`)."""
    bank = GateBank(gates).to(device)
    model.add_module("gainlora_gates", bank)
    for layer in lora_layers(model):
        for j in range(len(gates)):
            layer.lora_B[adapter_name(j)].register_forward_hook(_weighted_by(bank, j))
    base = model.get_base_model()
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.model
    embed = base.get_input_embeddings()
    decoder.register_forward_pre_hook(_set_gate_weights(bank, embed), with_kwargs=True)
    return bank


def _weighted_by(bank: GateBank, task: int) -> Callable:
    def hook(module, args, out: torch.Tensor) -> torch.Tensor:
        return out * bank.weight_of(task, out.shape[0]).to(out.dtype)  # (B, L, d_out) * (B, 1, 1)
    return hook


def _set_gate_weights(bank: GateBank, embed) -> Callable:
    def hook(module, args, kwargs) -> None:
        if bank.pinned is not None:
            bank.current = bank.pinned
            return
        # transformers 5 hands the decoder its KV cache as `cache` (4.x: `past_key_values`)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and cache.get_seq_length() > 0:
            return  # a decode step: the prefill's weights hold for the rest of the answer
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise RuntimeError("GainLoRA's gates read the prompt's input ids; this forward has none")
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        with torch.no_grad():
            bank.current = bank(prompt_means(embed, ids, mask))
    return hook


def prompt_means_of(cfg: ExperimentConfig, tokenizer, model, records: list[dict], device: torch.device
                    ) -> torch.Tensor:
    """e of each record's prompt, cut and templated as eval encodes it: (N, d) fp32 on `device`."""
    from pipeline.prompts.batching import TokenCaps, encode_prompts_left_padded

    embed = model.get_base_model().get_input_embeddings()
    out = []
    with torch.no_grad():
        for i in range(0, len(records), FEATURE_BATCH):
            enc = encode_prompts_left_padded(tokenizer, cfg.model.prompt_format, records[i:i + FEATURE_BATCH],
                                             TokenCaps.of(cfg.model))
            out.append(prompt_means(embed, enc["input_ids"].to(device), enc["attention_mask"].to(device)))
    return torch.cat(out)


# ---- a task's gate ---------------------------------------------------------------------------------


def new_gate(cfg: ExperimentConfig, t: int, earlier: list[tuple[TaskGate, dict]], bases: dict | None,
             means: torch.Tensor, hidden: int) -> TaskGate:
    """Task t's gate before training: task t-1's W1 and W2 (fresh ones for the first task), its key
    from task t's inputs outside the earlier outputs' subspace, constrained outside every earlier subspace."""
    dim = means.shape[1]
    gen = torch.Generator().manual_seed(cfg.seed + 7919 * (t + 1))
    if earlier:
        w1, w2, _ = earlier[-1][0].weights()
    else:
        w1, w2 = _linear_init(hidden, dim, gen), _linear_init(dim, hidden, gen)
    random_key = torch.rand(dim, generator=gen) * 2 - 1  # the official uniform(-1, 1) init, for its norm
    bases = bases or {}
    probe = TaskGate(w1, w2, random_key)
    _, out = probe.features(means.cpu())
    key = initial_key(out, bases.get("basis_out"), float(random_key.norm()))
    complements = (complement(bases.get("basis_in"), dim), complement(bases.get("basis_hidden"), hidden),
                   complement(bases.get("basis_out"), dim))
    return TaskGate(w1, w2, key, complements)


def _linear_init(out_features: int, in_features: int, gen: torch.Generator) -> torch.Tensor:
    """nn.Linear's default weight init (kaiming-uniform, a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))), seeded."""
    bound = 1 / in_features ** 0.5
    return (torch.rand(out_features, in_features, generator=gen) * 2 - 1) * bound


def grow_bases(bases: dict | None, gate: TaskGate, means: torch.Tensor, threshold: float, t: int,
               tasks: int) -> dict[str, torch.Tensor]:
    """The bases of tasks 0..t: task t's gate features (under its trained gate) added to task t-1's."""
    th = (1 - threshold) * t / tasks + threshold  # the official threshold schedule along the sequence
    with torch.no_grad():
        hidden, out = gate.features(means)
    bases = bases or {}
    return {"basis_in": grow_basis(bases.get("basis_in"), covariance(means), th),
            "basis_hidden": grow_basis(bases.get("basis_hidden"), covariance(hidden), th),
            "basis_out": grow_basis(bases.get("basis_out"), covariance(out), th)}


def save_gate(path, gate: TaskGate, bases: dict[str, torch.Tensor], cfg: ExperimentConfig) -> None:
    from safetensors.torch import save_file

    tensors = {**gate.saved(), **{k: v.detach().cpu().contiguous() for k, v in bases.items()}}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "slm-gainlora-gate-v1", "method": cfg.method})


def load_gate(exp: Experiment, j: int) -> tuple[TaskGate, dict[str, torch.Tensor]]:
    """Task j's gate, frozen, and the tensors of its file."""
    path = exp.layout.task_dir(j, exp.cfg.tasks[j].name) / GATE_FILE
    state = read_safetensors(path)
    missing = [k for k in ("w1", "w2", "key", *BASES) if k not in state]
    if missing:
        raise ConfigError(f"{path} lacks {missing}: not a GainLoRA gate file",
                          hint=f"retrain task {j}: `slm train --method {exp.cfg.method} --task {j} --restart`")
    return TaskGate(state["w1"], state["w2"], state["key"]), state


def load_bases(exp: Experiment, j: int) -> dict[str, torch.Tensor]:
    """The subspace bases of tasks 0..j, as task j saved them."""
    _, state = load_gate(exp, j)
    return {k: state[k].float() for k in BASES}
