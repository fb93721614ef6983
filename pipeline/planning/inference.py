"""The finish job's plan (index, eval after every task, report): one process, the node's GPUs.

Evaluation loads the whole base without ZeRO. On one GPU it must hold all of it; on several,
`pipeline.runtime.models.placement` spreads it over them (accelerate's balanced device map of
whole decoder layers), so a LLaMA-2-70B in bf16 (128 GiB) is evaluated on 2+ GPUs of 80 GB.
Per GPU, in bytes, the busiest GPU (the first: it also holds the embeddings, the encoders and the
logits):

weights      the base as the config quantizes it (pipeline.planning.memory's accounting), split
             evenly over the GPUs, plus one decoder layer for the map's granularity
adapters     the method's resident adapter parameters (all tasks' slots / LoRAs) with their layers
kv cache     generation keeps keys and values of every layer for eval.batch_size sequences of
             prompt + eval.max_new_tokens tokens: L * 2 * kv_size * e per token, split over the GPUs;
             a label_choice task scores batch x labels sequences of max_seq_len in one forward,
             whose cache, e-dtype logits and fp32 log-softmax (two copies) all live at once
working      one decoder layer's transient activations at prefill (its MLP: 3 * I * e per token)
other        the DTKR encoder (fp32, methods with keys), FAISS_GPU_GIB, the BERTScore encoder
             (fp32, when a task is scored by BERTScore), CUDA_CONTEXT_GIB, FRAGMENTATION
host         one process: HOST_BASE_GIB + the streamed load (LOAD_WORKERS tensors)

Nothing here trains, so there is no optimizer state and no ZeRO.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.planning.loads import compute_bytes
from pipeline.planning.memory import (
    CUDA_CONTEXT_GIB,
    FAISS_GPU_GIB,
    FRAGMENTATION,
    GIB,
    HOST_BASE_GIB,
    LOAD_WORKERS,
    largest_tensor_params,
    load_of,
    quantized_bytes,
    shape_of_config,
)
from pipeline.planning.shapes import encoder_size

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig
    from pipeline.methods.base import Method
    from pipeline.planning.shapes import ModelShape

MAX_GPUS_PER_NODE = 8


@dataclass(frozen=True)
class FinishRow:
    """The finish job's memory on `gpus` GPUs of `gpu_mem_gib` (its busiest GPU), and host RAM."""

    gpus: int
    gpu_mem_gib: float
    weights_gib: float
    adapters_gib: float
    kv_cache_gib: float
    working_gib: float
    other_gib: float
    host_gib: float

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.adapters_gib + self.kv_cache_gib + self.working_gib + self.other_gib

    @property
    def fits(self) -> bool:
        """On its GPUs; a CPU finish job (0 GPUs) holds everything in host RAM instead (host_gib)."""
        return self.gpus == 0 or self.total_gib <= self.gpu_mem_gib


def plan_finish(cfg: ExperimentConfig, method: Method, gpus: int, gpu_mem_gib: float) -> FinishRow:
    """The finish job on `gpus` GPUs (0: on the CPU, where the model lives in host RAM)."""
    if gpus == 0:
        on_one = plan_finish(cfg, method, 1, gpu_mem_gib)
        return FinishRow(0, gpu_mem_gib, 0.0, 0.0, 0.0, 0.0, 0.0,
                         on_one.host_gib + on_one.total_gib - CUDA_CONTEXT_GIB)
    shape = shape_of_config(cfg)
    load = load_of(cfg, method, shape)
    e = compute_bytes(cfg)
    bits = {"8bit": 8, "4bit": 4}.get(cfg.model.quantization, 8 * e)
    base = quantized_bytes(shape, bits) if bits < 16 else shape.total_params * e
    layer = (shape.total_params - 2 * shape.vocab_size * shape.hidden_size) / shape.num_layers * bits / 8
    weights = base / gpus + (layer if gpus > 1 else 0.0)
    adapters = load.resident_params * e / gpus
    cache, logits = _cache_and_logits(cfg, shape, e)
    working = cfg.eval.batch_size * _prompt_tokens(cfg) * 3 * shape.intermediate_size * e
    other = _other_bytes(cfg, load.index_keys_per_task > 0) + logits
    planned = weights + adapters + cache / gpus + working + other
    host = HOST_BASE_GIB * GIB + LOAD_WORKERS * largest_tensor_params(shape) * 2
    return FinishRow(gpus=gpus, gpu_mem_gib=gpu_mem_gib, weights_gib=weights / GIB, adapters_gib=adapters / GIB,
                     kv_cache_gib=cache / gpus / GIB, working_gib=working / GIB,
                     other_gib=(other + FRAGMENTATION * planned) / GIB, host_gib=host / GIB)


def _prompt_tokens(cfg: ExperimentConfig) -> int:
    return cfg.model.max_prompt_len or cfg.model.max_seq_len


def _cache_and_logits(cfg: ExperimentConfig, shape: ModelShape, e: int) -> tuple[float, float]:
    """(KV cache, logits) of the widest forward of evaluation: generation, or a label_choice task's
    one forward over batch x labels sequences."""
    per_token = shape.num_layers * 2 * shape.kv_size * e
    batch = cfg.eval.batch_size
    generate = batch * (_prompt_tokens(cfg) + cfg.eval.max_new_tokens) * per_token
    last_logits = batch * shape.vocab_size * (e + 4)  # the next token's logits, fp32 for sampling
    widest = (generate, last_logits)
    labels = max((len(t.labels or []) for t in cfg.tasks if t.metric == "label_choice"), default=0)
    if labels:
        tokens = batch * labels * cfg.model.max_seq_len
        choice = (tokens * per_token, tokens * shape.vocab_size * (e + 2 * 4))
        widest = max(widest, choice, key=sum)
    return widest


def _other_bytes(cfg: ExperimentConfig, retrieves: bool) -> float:
    other = CUDA_CONTEXT_GIB * GIB
    if retrieves:
        other += encoder_size(cfg.dtkr.encoder)[0] * 4 + (FAISS_GPU_GIB * GIB if cfg.dtkr.faiss != "cpu" else 0.0)
    if any(t.metric == "bertscore" for t in cfg.tasks):
        other += encoder_size(cfg.eval.bertscore_model)[0] * 4
    return other


def finish_fix(cfg: ExperimentConfig, method: Method, gpu_mem_gib: float) -> str:
    """The smallest change after which the finish job fits: the fewest GPUs per node that hold it,
    else a smaller eval batch on all of a node's GPUs, else what remains."""
    for gpus in range(cfg.slurm.finish.gpus_per_node + 1, MAX_GPUS_PER_NODE + 1):
        if (row := plan_finish(cfg, method, gpus, gpu_mem_gib)).fits:
            return (f"slurm.finish.gpus_per_node={gpus} (the base spread over {gpus} GPUs: {row.total_gib:.1f} GiB "
                    "per GPU)")
    gpus = max(cfg.slurm.finish.gpus_per_node, MAX_GPUS_PER_NODE)
    for batch in range(cfg.eval.batch_size - 1, 0, -1):
        smaller = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"batch_size": batch})})
        if plan_finish(smaller, method, gpus, gpu_mem_gib).fits:
            return f"slurm.finish.gpus_per_node={gpus} eval.batch_size={batch}"
    return f"a quantized base (model.quantization=8bit or 4bit) or GPUs of more than {gpu_mem_gib:g} GiB"


def format_finish(row: FinishRow) -> str:
    if row.gpus == 0:
        return (f"finish job (index, eval, report) on the CPU (slurm.finish.gpus_per_node=0): the model in host RAM, "
                f"~{math.ceil(row.host_gib)} GiB")
    cells = (f"weights {row.weights_gib:.1f}", f"adapters {row.adapters_gib:.1f}", f"kv cache {row.kv_cache_gib:.1f}",
             f"working {row.working_gib:.1f}", f"other {row.other_gib:.1f}")
    verdict = "fits" if row.fits else "does NOT fit"
    return (f"finish job (index, eval, report; one process, the base across {row.gpus} GPU(s)): "
            f"{', '.join(cells)}: {row.total_gib:.1f} GiB per GPU of {row.gpu_mem_gib:g}, {verdict}; "
            f"host RAM ~{math.ceil(row.host_gib)} GiB")
