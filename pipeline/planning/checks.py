"""The verdicts on a plan: the resources asked for are sensible, the experiment's own row fits
(what `slm submit` checks first), and when nothing fits, the smallest change that would."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError
from pipeline.planning.memory import (
    DEFAULT_GPU_MEM_GIB,
    GPU_MEM_ENV,
    PlanRow,
    estimate,
    format_plan,
    load_of,
    plan_memory,
    recommend,
    refusal,
    shape_of_config,
    workload,
    zero_mode,
)

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig
    from pipeline.methods.base import Method


# ---- the submit-time check ---------------------------------------------------------------------


def gpu_mem_default() -> float:
    value = os.environ.get(GPU_MEM_ENV)
    try:
        gib = float(value) if value else DEFAULT_GPU_MEM_GIB
    except ValueError:
        raise ConfigError(f"{GPU_MEM_ENV}={value!r} is not a number of GiB (e.g. 80)") from None
    if not gib > 0:  # also NaN
        raise ConfigError(f"{GPU_MEM_ENV}={value!r}: the memory of one GPU must be a positive number of GiB (e.g. 80)")
    return gib


def check_resources(nodes: int, gpus_per_node: int, gpu_mem_gib: float) -> None:
    """Refuse a plan for no hardware: every count and size must be positive (all problems at once)."""
    problems = [f"{flag} {value:g}: {what}" for flag, value, what in (
        ("--nodes", nodes, "a job runs on at least 1 node"),
        ("--gpus-per-node", gpus_per_node, "a GPU memory plan needs at least 1 GPU per node (a CPU run, "
                                           "slurm.train.gpus_per_node=0, needs no plan)"),
        ("--gpu-mem-gib", gpu_mem_gib, "the memory of one GPU must be a positive number of GiB"))
        if not value > 0]
    if problems:
        raise ConfigError("; ".join(problems), hint="give positive values, e.g. `slm plan --nodes 1 --gpus-per-node "
                                                    "8 --gpu-mem-gib 80`")


# ---- nothing fits: the smallest change that would --------------------------------------------

MAX_GPUS_PER_NODE = 8  # what one node of a GPU cluster holds
MAX_NODES = 64


def _fits_anywhere(cfg: ExperimentConfig, method: Method, nodes: int, gpus_per_node: int,
                   gpu_mem_gib: float) -> PlanRow | None:
    return recommend(plan_memory(cfg, method, nodes, gpus_per_node, gpu_mem_gib))


def smallest_changes(cfg: ExperimentConfig, method: Method, nodes: int, gpus_per_node: int,
                     gpu_mem_gib: float) -> list[str]:
    """When no row fits: along each axis alone, the smallest change after which one does, each with
    the row it allows (fewest changes first: a smaller micro batch needs no other hardware)."""
    found = []
    tr = cfg.train
    for micro in range(tr.micro_batch_size - 1, 0, -1):  # the largest smaller micro batch that fits
        smaller = cfg.model_copy(update={"train": tr.model_copy(update={"micro_batch_size": micro})})
        if row := _fits_anywhere(smaller, method, nodes, gpus_per_node, gpu_mem_gib):
            accum = -(-tr.micro_batch_size * tr.grad_accum // micro)  # about the same global batch
            found.append(f"train.micro_batch_size={micro} train.grad_accum={accum} ({_change_row(row)})")
            break
    for gpn in range(gpus_per_node + 1, MAX_GPUS_PER_NODE + 1):
        if row := _fits_anywhere(cfg, method, nodes, gpn, gpu_mem_gib):
            found.append(f"--gpus-per-node {gpn} (slurm.train.gpus_per_node={gpn}; {_change_row(row)})")
            break
    for n in range(nodes + 1, MAX_NODES + 1):
        if row := _fits_anywhere(cfg, method, n, gpus_per_node, gpu_mem_gib):
            found.append(f"--nodes {n} (slurm.train.nodes={n}; {_change_row(row)})")
            break
    rows = [r for r in plan_memory(cfg, method, nodes, gpus_per_node, gpu_mem_gib) if r.unsupported is None]
    if rows:
        least = min(rows, key=lambda r: (max(r.total_gib, r.load_gib), -r.base_bits))
        found.append(f"GPUs of at least {math.ceil(max(least.total_gib, least.load_gib))} GiB ({_change_row(least)})")
    return found


def _change_row(row: PlanRow) -> str:
    return f"{overrides_for(row)}: {row.total_gib:.1f} GiB per GPU"


def nothing_fits_message(cfg: ExperimentConfig, method: Method, nodes: int, gpus_per_node: int,
                         gpu_mem_gib: float) -> str:
    changes = smallest_changes(cfg, method, nodes, gpus_per_node, gpu_mem_gib)
    head = f"nothing fits on {nodes} x {gpus_per_node} GPUs of {gpu_mem_gib:g} GiB"
    if not changes:
        return f"{head}, and no single change up to {MAX_NODES} nodes of {MAX_GPUS_PER_NODE} GPUs makes it fit"
    return f"{head}; the smallest change that fits: " + "; or ".join(changes)


def own_row(cfg: ExperimentConfig, method: Method, nodes: int, gpus_per_node: int, gpu_mem_gib: float) -> PlanRow:
    """The plan for exactly the config's deepspeed JSON, quantization and checkpointing."""
    work = workload(cfg, nodes, gpus_per_node, gpu_mem_gib)
    bits = {"8bit": 8, "4bit": 4}.get(cfg.model.quantization, 8 * work.compute_bytes)
    mode = zero_mode(cfg.deepspeed_config_path(), cfg.train.deepspeed)
    shape = shape_of_config(cfg)
    return estimate(shape, work, mode, bits, cfg.model.gradient_checkpointing, load_of(cfg, method, shape),
                    refusal(cfg, method, cfg.train.deepspeed, cfg.model.quantization))


def check_fits(cfg: ExperimentConfig, method: Method, gpu_mem_gib: float | None = None) -> tuple[bool, str]:
    """Do the config's jobs fit? (fits, text): the training job's own row on slurm.train.nodes x
    gpus_per_node GPUs, its host RAM against slurm.train.mem, and the finish job's GPUs and host RAM
    against slurm.finish. Every line that does not fit names the smallest change that would.

    GPU memory: `gpu_mem_gib`, else $SLM_GPU_MEM_GIB, else DEFAULT_GPU_MEM_GIB. A CPU-only config fits.
    """
    if cfg.slurm.train.gpus_per_node == 0:
        return True, "CPU run: no GPU memory plan"
    from pipeline.planning.inference import finish_fix, format_finish, plan_finish

    gpu_mem = gpu_mem_gib if gpu_mem_gib is not None else gpu_mem_default()
    nodes, gpn = cfg.slurm.train.nodes, cfg.slurm.train.gpus_per_node
    row = own_row(cfg, method, nodes, gpn, gpu_mem)
    text = [f"memory plan for {cfg.model.name_or_path} on {nodes} x {gpn} GPUs of {gpu_mem:g} GiB "
            f"(train.deepspeed={cfg.train.deepspeed}, model.quantization={cfg.model.quantization}, "
            f"model.gradient_checkpointing={str(cfg.model.gradient_checkpointing).lower()}):",
            format_plan([row], load=load_of(cfg, method))]
    if not row.fits:
        best = recommend(plan_memory(cfg, method, nodes, gpn, gpu_mem))
        text.append("does not fit; " + (f"the plan recommends {overrides_for(best)}" if best else
                                        nothing_fits_message(cfg, method, nodes, gpn, gpu_mem)) + " (see `slm plan`)")
    train_host = host_line(cfg, "train", row.host_gib, f"{gpn} ranks")
    text.append(train_host[1])
    finish = plan_finish(cfg, method, cfg.slurm.finish.gpus_per_node, gpu_mem)
    text.append(format_finish(finish))
    if not finish.fits:
        text.append(f"does not fit: the finish job would run out of GPU memory evaluating; the smallest fix: "
                    f"{finish_fix(cfg, method, gpu_mem)}")
    finish_host = host_line(cfg, "finish", finish.host_gib, "one process")
    text.append(finish_host[1])
    return row.fits and finish.fits and train_host[0] and finish_host[0], "\n".join(text)


def host_line(cfg: ExperimentConfig, job: str, host_gib: float, who: str) -> tuple[bool, str]:
    """Does slurm.<job>.mem hold the plan's host RAM? (fits, the line that says so or names the fix)."""
    spec = getattr(cfg.slurm, job)
    mem = spec.mem_gib
    need = f"host RAM ~{host_gib:.0f} GiB per node for the {job} job ({who}; `host` in pipeline/planning/memory.py)"
    if host_gib != host_gib:  # NaN: an unsupported row plans nothing
        return True, f"{job} host RAM: not planned (the row is unsupported)"
    if mem is None:
        return True, f"{need}; slurm.{job}.mem={spec.mem} is not checked (0: all of a node's memory, or unreadable)"
    if host_gib <= mem:
        return True, f"{need}: fits slurm.{job}.mem={spec.mem}"
    return False, (f"does not fit: {need} exceeds slurm.{job}.mem={spec.mem}: Slurm would kill the job for memory "
                   f"(cgroup OOM) while it loads; the smallest fix: slurm.{job}.mem={math.ceil(host_gib)}G")


def overrides_for(row: PlanRow) -> str:
    """The config overrides that select `row`."""
    return (f"train.deepspeed={row.deepspeed} model.quantization={row.quantization} "
            f"model.gradient_checkpointing={str(row.checkpointing).lower()}")
