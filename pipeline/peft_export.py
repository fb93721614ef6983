"""Adapters that leave the project: a finished task as a PEFT LoRA folder, or as a merged model.

A PEFT LoRA computes `y = W x + (alpha / r) B A x` per target linear layer, with A: (r, d_in) and
B: (d_out, r). Every method's task becomes one such LoRA with scaling 1 (lora_alpha = r), held
here as `{module name: (A, B)}` (module names as in the causal-LM model, `model.layers.0.self_attn.o_proj`):

- JARe (slm, oracle_task_id): task t's P slots at weights w, `sum_j w_j U_j^T V_j`, are exactly
  one LoRA of rank P*r: A = [V_1; ...; V_P] (rows stacked), B = [w_1 U_1^T ... w_P U_P^T]
  (columns side by side). `task_lora_weights` is the one place that does this conversion.
- LoRA baselines: their saved LoRA is already one (seq_lora, replay, multitask); o_lora / n_lora
  answer with the sum of every LoRA up to task t, which is one LoRA of rank (t+1)*r the same way.
  A LoRA trained at another scaling (a peer's official preset: alpha 32 at r 8) folds alpha / r
  into B (`scale_lora`).

`write_peft_adapter` writes `adapter_config.json` + `adapter_model.safetensors`, which
`peft.PeftModel.from_pretrained(base, folder)` and vLLM's `--lora-modules` load;
`write_merged_model` folds the adapter into the base weights (`merge_and_unload`) and writes a
plain transformers folder (`save_pretrained`) with the tokenizer.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.state.artifacts import atomic_path

LoraWeights = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (A (r, d_in), B (d_out, r))
PEFT_PREFIX = "base_model.model."  # where PEFT's state dict keys of a causal LM start
PEFT_A, PEFT_B = ".lora_A.weight", ".lora_B.weight"
INFO_FILE = "slm_export.json"


@dataclass(frozen=True)
class TaskExport:
    """What a method gives for task t: one LoRA (scaling 1), or the folder of a whole model."""

    lora: LoraWeights | None = None
    model_dir: Path | None = None
    # Which weights the export holds and why (written to slm_export.json and printed).
    describes: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return next(iter(self.lora.values()))[0].shape[0] if self.lora else 0


# ---- conversions --------------------------------------------------------------------------------


def task_lora_weights(bank_or_state: Any, t: int, weights: Sequence[float]) -> LoraWeights:
    """Task t's JARe slots at `weights` (one per slot) as one LoRA per module, of rank P*r.

    `bank_or_state`: a JareBank (its task t), or the tensors of task t's adapter file
    (`{module}.U`: (P, r, d_out), `{module}.V`: (P, r, d_in), as `JareBank.save_task` writes them).
    B A = sum_j w_j U_j^T V_j, the increment the JARe layer adds for this weighting.
    """
    state = bank_or_state.task_state_dict(t) if hasattr(bank_or_state, "task_state_dict") else bank_or_state
    out: LoraWeights = {}
    for key in sorted(k for k in state if k.endswith(".U")):
        module = key[: -len(".U")]
        u, v = state[key], state[f"{module}.V"]  # (P, r, d_out), (P, r, d_in)
        slots, rank, d_out = u.shape
        if len(weights) != slots:
            raise ValueError(f"{len(weights)} weights for the {slots} slots of {module}")
        w = torch.tensor(list(weights), dtype=torch.float32)
        a = v.reshape(slots * rank, v.shape[-1])  # (P*r, d_in): V_1; ...; V_P
        # (d_out, P*r): w_1 U_1^T | ... | w_P U_P^T, the weight folded in fp32, stored in the slot dtype
        b = (u.float() * w[:, None, None]).permute(2, 0, 1).reshape(d_out, slots * rank).to(u.dtype)
        out[module] = (a.contiguous(), b.contiguous())
    if not out:
        raise ValueError(f"no JARe slot tensors ({{module}}.U / .V) for task {t}")
    return out


def lora_from_peft_state(state: Mapping[str, torch.Tensor]) -> LoraWeights:
    """{module: (A, B)} from a PEFT LoRA state dict (the project's LoRA files hold one)."""
    out: LoraWeights = {}
    for key in sorted(k for k in state if k.endswith(PEFT_A)):
        module = key[: -len(PEFT_A)].removeprefix(PEFT_PREFIX)
        out[module] = (state[key], state[key[: -len(PEFT_A)] + PEFT_B])
    if not out:
        raise ValueError(f"no LoRA tensors (*{PEFT_A}) among {sorted(state)[:3]}")
    return out


def scale_lora(lora: LoraWeights, scaling: float) -> LoraWeights:
    """A LoRA trained at scaling alpha / r as one of scaling 1: B folds the factor in (in fp32)."""
    if scaling == 1:
        return lora
    return {m: (a, (b.float() * scaling).to(b.dtype)) for m, (a, b) in lora.items()}


def concat_loras(loras: Sequence[LoraWeights]) -> LoraWeights:
    """The sum of several LoRAs (each scaling 1) as one: A rows stacked, B columns side by side."""
    modules = list(loras[0])
    if any(list(lora) != modules for lora in loras):
        raise ValueError("the LoRAs to add up target different modules")
    return {m: (torch.cat([lora[m][0] for lora in loras], dim=0), torch.cat([lora[m][1] for lora in loras], dim=1))
            for m in modules}


def peft_state(lora: LoraWeights) -> dict[str, torch.Tensor]:
    """The state dict names PEFT saves and loads (adapter name left out, as `save_pretrained` does)."""
    state = {}
    for module, (a, b) in lora.items():
        state[f"{PEFT_PREFIX}{module}{PEFT_A}"] = a.detach().cpu().contiguous()
        state[f"{PEFT_PREFIX}{module}{PEFT_B}"] = b.detach().cpu().contiguous()
    return state


# ---- writing ----------------------------------------------------------------------------------------


def write_peft_adapter(folder: Path, lora: LoraWeights, target_modules: list[str], base_model: str,
                       info: dict[str, Any]) -> None:
    """A PEFT LoRA folder (adapter_config.json, adapter_model.safetensors) plus slm_export.json, atomically."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    rank = next(iter(lora.values()))[0].shape[0]
    # lora_alpha = r: PEFT's scaling alpha / r is 1, as in JARe (no scaling) and the project's LoRAs.
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=list(target_modules),
                        task_type="CAUSAL_LM", base_model_name_or_path=base_model, bias="none")
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        config.save_pretrained(str(tmp))
        save_file(peft_state(lora), str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / INFO_FILE).write_text(json.dumps({**info, "rank": rank, "lora_alpha": rank}, indent=2) + "\n")


def write_model_copy(folder: Path, model_dir: Path, tokenizer, info: dict[str, Any]) -> None:
    """A whole saved model (seq_ft) copied out, with the tokenizer beside it."""
    with atomic_path(folder) as tmp:
        shutil.copytree(model_dir, tmp)
        tokenizer.save_pretrained(str(tmp))
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def write_merged_model(folder: Path, base, adapter_dir: Path, tokenizer, info: dict[str, Any]) -> None:
    """`base` with the PEFT adapter in `adapter_dir` merged into its weights, as a plain model folder."""
    from peft import PeftModel

    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    with atomic_path(folder) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / INFO_FILE).write_text(json.dumps({**info, "merged_from": str(adapter_dir)}, indent=2) + "\n")
