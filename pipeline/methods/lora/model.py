"""The LoRA family's LoRAs: built with PEFT from the method's `LoraSettings` (the adapter's modules
and rank, alpha = rank, unless a peer's preset says otherwise), loaded from and saved to a task's
adapter file (safetensors, atomically)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from pipeline.errors import CheckpointError
from pipeline.runtime.models import base_model
from pipeline.state.artifacts import atomic_path, read_safetensors

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig
    from pipeline.state.layout import RunLayout

LORA_FORMAT = "slm-lora-v1"


@dataclass(frozen=True)
class LoraSettings:
    """One LoRA's shape: `y = W x + (alpha / rank) B A dropout(x)` on every linear matching `targets`."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]

    @classmethod
    def of_adapter(cls, cfg: ExperimentConfig) -> LoraSettings:
        """The harness's uniform LoRA: JARe's rank and target modules, alpha = rank (scaling 1, like
        a JARe slot), no dropout."""
        return cls(cfg.adapter.rank, float(cfg.adapter.rank), 0.0, tuple(cfg.adapter.target_modules))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


def lora_model(cfg: ExperimentConfig, layout: RunLayout, settings: LoraSettings, state_after: int | None,
               device: torch.device | None = None, model=None):
    """Base + one LoRA of `settings`. `state_after`: load the LoRA saved after that task; None: a
    fresh LoRA (B = 0, so it starts as the base model)."""
    from peft import get_peft_model

    model = model if model is not None else base_model(cfg.model, device)
    torch.manual_seed(cfg.seed)  # LoRA A is randomly initialised
    peft_model = get_peft_model(model, lora_config(settings))
    if state_after is not None:
        load_lora_state(peft_model, layout.adapter_file(state_after, cfg.tasks[state_after].name))
    return peft_model


def lora_config(settings: LoraSettings):
    """The PEFT LoraConfig of `settings`."""
    from peft import LoraConfig

    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=list(settings.targets))


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
                  metadata={"format": LORA_FORMAT, **(meta or {})})
