"""Read a DeepSpeed JSON and fill its "auto" values from the experiment, as the HF integration
does for the Trainer (we drive deepspeed.initialize ourselves, so we fill them here), and pick
the optimizer that JSON needs.

Optimizer offload (`zero_optimization.offload_optimizer.device: cpu|nvme`, the *_offload JSONs)
runs the Adam step on the host. DeepSpeed refuses a torch optimizer there (its step would be a
slow Python loop over fp32 tensors) unless the JSON sets `"zero_force_ds_cpu_optimizer": false`.
So `make_optimizer` hands it DeepSpeedCPUAdam (AdamW math, vectorised C++; built once by
DeepSpeed's op builder, which needs a C++ compiler and ninja; pipeline.deepspeed_ops
says why that build holds a lock), and a JSON that sets the flag
false keeps torch's AdamW, for a site where that op cannot be built.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from pipeline.config import ExperimentConfig
from pipeline.deepspeed_ops import build_op
from pipeline.errors import ConfigError
from pipeline.runtime.models import resolve_dtype


def _read_json(cfg: ExperimentConfig) -> dict[str, Any]:
    path = cfg.deepspeed_config_path()
    if not path.is_file():
        raise ConfigError(f"train.deepspeed: {path} does not exist (shipped: zero0, zero2, zero3, "
                          "zero2_offload, zero3_offload; or a path relative to the experiment YAML)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}", hint="fix the JSON at the line and column named above, "
                                                              "or name a shipped config in train.deepspeed") from e


def offloads_optimizer(ds: dict[str, Any]) -> bool:
    """Whether ZeRO runs the optimizer step on the host (offload to cpu or nvme)."""
    zero = ds.get("zero_optimization", {})
    device = (zero.get("offload_optimizer") or {}).get("device", "none")
    return int(zero.get("stage", 0)) > 0 and device in ("cpu", "nvme")


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float,
                   ds: dict[str, Any], where: str = "the DeepSpeed JSON") -> torch.optim.Optimizer:
    """AdamW for `params`, in the form the DeepSpeed config `ds` can step (see the module doc)."""
    if not offloads_optimizer(ds) or ds.get("zero_force_ds_cpu_optimizer", True) is False:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        from deepspeed.ops.op_builder import CPUAdamBuilder

        # adamw_mode: decoupled weight decay, the same update as torch.optim.AdamW
        return build_op(CPUAdamBuilder.NAME,
                        lambda: DeepSpeedCPUAdam(params, lr=lr, weight_decay=weight_decay, adamw_mode=True))
    except Exception as e:  # the op builder raises RuntimeError, OSError, CalledProcessError ...
        raise ConfigError(
            f"{where} offloads the optimizer to the host, which needs DeepSpeedCPUAdam, and DeepSpeed could not "
            f"build it here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
            hint="install a C++ compiler and ninja (or `DS_BUILD_CPU_ADAM=1 pip install deepspeed`), or set "
                 '"zero_force_ds_cpu_optimizer": false in that JSON to step torch\'s AdamW on the host (slower), '
                 "or use a JSON without offload_optimizer") from e


def zero_stage(cfg: ExperimentConfig) -> int:
    return int(_read_json(cfg).get("zero_optimization", {}).get("stage", 0))


def check_quantization_pairing(cfg: ExperimentConfig, ds: dict[str, Any] | None = None) -> None:
    """A bitsandbytes 8/4-bit base pairs with ZeRO-0/1/2 only. Its weights are packed integer
    tensors placed by device_map; ZeRO-3 would have to partition (flatten, shard, all-gather) them
    and cannot (pipeline.planning.memory marks these rows unsupported for the same reason). The train stage
    calls this first, so the refusal comes before any data or model is loaded."""
    ds = _read_json(cfg) if ds is None else ds
    stage = int(ds.get("zero_optimization", {}).get("stage", 0))
    if cfg.model.quantization != "none" and stage == 3:
        raise ConfigError(
            f"model.quantization={cfg.model.quantization} cannot be used with train.deepspeed="
            f"{cfg.train.deepspeed} (ZeRO stage 3): ZeRO-3 cannot partition bitsandbytes-quantised weights. "
            f"Use train.deepspeed=zero2 (or zero2_offload) with a quantised base, or model.quantization=none "
            f"with ZeRO-3.")


def build_ds_config(cfg: ExperimentConfig, world_size: int) -> dict[str, Any]:
    ds = _read_json(cfg)
    check_quantization_pairing(cfg, ds)
    path = cfg.deepspeed_config_path()
    tr = cfg.train
    on_gpu = torch.cuda.is_available()
    bf16 = resolve_dtype(cfg.model.dtype) == torch.bfloat16
    fills = {
        "train_micro_batch_size_per_gpu": tr.micro_batch_size,
        "gradient_accumulation_steps": tr.grad_accum,
        "gradient_clipping": tr.grad_clip,
        "train_batch_size": tr.micro_batch_size * tr.grad_accum * world_size,
    }
    for key, value in fills.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
    ds.setdefault("bf16", {})
    if ds["bf16"].get("enabled", "auto") == "auto":
        ds["bf16"]["enabled"] = bf16
    if ds.get("fp16", {}).get("enabled") is True and not on_gpu:
        raise ConfigError(f"{path}: fp16 is not supported by DeepSpeed on CPU; use bf16 or fp32")
    zero = ds.get("zero_optimization", {})
    if not on_gpu:
        # Pinned memory needs CUDA; offload on a CPU-only machine is a no-op anyway.
        for key in ("offload_param", "offload_optimizer"):
            if key in zero:
                zero[key]["pin_memory"] = False
    return ds
