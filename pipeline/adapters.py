"""Build the model a method needs at a point of the sequence, from the artifacts on disk.

JARe methods: base + JARe slots of tasks 0..n-1 (frozen, loaded from their adapter files). LoRA
methods: base + PEFT LoRA(s) of the same rank on the same modules, with the state saved after a
given task. The methods (pipeline/methods/) build their models from these, so train, eval,
generate and serve load exactly the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipeline.errors import CheckpointError
from pipeline.jare.inject import JareBank, inject_jare
from pipeline.runtime.models import load_base_model
from pipeline.state.artifacts import atomic_path

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig
    from pipeline.state.layout import RunLayout

KEYS_TENSOR = "keys"


def base_model(cfg: ExperimentConfig, device: torch.device | None = None):
    m = cfg.model
    return load_base_model(m.name_or_path, m.dtype, m.quantization, device)


def slot_dtype(model) -> torch.dtype:
    """Slots follow the compute dtype; a quantised base computes in its non-quantised dtype."""
    return next(p.dtype for p in model.parameters() if p.dtype in (torch.float32, torch.bfloat16, torch.float16))


def jare_model(cfg: ExperimentConfig, layout: RunLayout, n_tasks: int, slots: int, device: torch.device | None = None,
               model=None) -> tuple[torch.nn.Module, JareBank]:
    """Base + JARe with the saved slots of tasks 0..n_tasks-1 (all frozen)."""
    model = model if model is not None else base_model(cfg, device)
    bank = inject_jare(model, cfg.adapter.target_modules, cfg.adapter.rank, slots, slot_dtype(model))
    for j in range(n_tasks):
        name = cfg.tasks[j].name
        bank.load_task(name, layout.adapter_file(j, name), expect_meta={"task": name})
    bank.train_only(None)
    return model, bank


def lora_model(cfg: ExperimentConfig, layout: RunLayout, state_after: int | None,
               device: torch.device | None = None, model=None):
    """Base + one LoRA (alpha = rank, so no extra scaling, like JARe). `state_after`: load the
    LoRA saved after that task; None: a fresh LoRA (B = 0, so it starts as the base model)."""
    from peft import get_peft_model

    model = model if model is not None else base_model(cfg, device)
    torch.manual_seed(cfg.seed)  # LoRA A is randomly initialised
    peft_model = get_peft_model(model, lora_config(cfg))
    if state_after is not None:
        load_lora_state(peft_model, layout.adapter_file(state_after, cfg.tasks[state_after].name))
    return peft_model


def lora_config(cfg: ExperimentConfig):
    """Every LoRA-family method's LoRA: the rank and target modules of JARe, alpha = rank."""
    from peft import LoraConfig

    rank = cfg.adapter.rank
    return LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=list(cfg.adapter.target_modules))


def load_lora_state(peft_model, path: Path, adapter_name: str = "default") -> None:
    """Fill adapter `adapter_name` from a saved LoRA file; any tensor that does not fit is an error."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(peft_model, read_safetensors(path), adapter_name=adapter_name)
    if getattr(result, "unexpected_keys", None):
        raise CheckpointError(f"{path}: unexpected LoRA tensors {result.unexpected_keys[:3]}")


def lora_trainable(model) -> list[torch.nn.Parameter]:
    # get_peft_model already froze everything but the adapters: trust requires_grad, not names.
    return [p for p in model.parameters() if p.requires_grad]


def save_lora(model, path: Path, meta: dict | None = None, state: dict | None = None) -> None:
    from peft import get_peft_model_state_dict

    state = state if state is not None else get_peft_model_state_dict(model)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp),
                  metadata={"format": "slm-lora-v1", **(meta or {})})


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise CheckpointError(f"{path} is missing")
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def save_keys(path: Path, keys: torch.Tensor, encoder: str, groups: int) -> None:
    with atomic_path(path) as tmp:
        save_file({KEYS_TENSOR: keys.contiguous().cpu()}, str(tmp),
                  metadata={"format": "slm-keys-v1", "encoder": encoder, "groups": str(groups)})


def load_keys(path: Path, encoder: str, groups: int) -> torch.Tensor:
    if not Path(path).is_file():
        raise CheckpointError(f"keys file {path} is missing")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        keys = f.get_tensor(KEYS_TENSOR)
    if meta.get("encoder") != encoder or meta.get("groups") != str(groups):
        raise CheckpointError(f"{path}: keys made with encoder {meta.get('encoder')!r} / groups "
                              f"{meta.get('groups')}, this experiment uses {encoder!r} / {groups}")
    return keys
