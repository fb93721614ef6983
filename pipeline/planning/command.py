"""`slm plan`: the per-GPU memory plan of the experiment's method, printed before anything is submitted.

Reads only the config: the model is built on the meta device (LLaMA-2-70B in about a second).
Exit status 1 when no configuration fits the GPUs given, so scripts can stop early.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.config import ExperimentConfig
from pipeline.dtkr import faiss_build
from pipeline.errors import ConfigError
from pipeline.planning.checks import (
    check_resources,
    gpu_mem_default,
    host_line,
    nothing_fits_message,
    overrides_for,
    own_row,
)
from pipeline.planning.inference import finish_fix, format_finish, plan_finish
from pipeline.planning.memory import (
    GPU_MEM_ENV,
    PlanRow,
    dense_reference_gib,
    format_plan,
    load_of,
    plan_memory,
    recommend,
    shape_of_config,
)

if TYPE_CHECKING:
    from pipeline.experiment import Experiment
    from pipeline.methods.base import Method


@dataclass(frozen=True)
class Args:
    nodes: int | None = None
    gpus_per_node: int | None = None
    gpu_mem_gib: float | None = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=None, help="nodes (default: slurm.train.nodes)")
    p.add_argument("--gpus-per-node", type=int, default=None,
                   help="GPUs per node (default: slurm.train.gpus_per_node, at least 1)")
    p.add_argument("--gpu-mem-gib", type=float, default=None,
                   help=f"memory of one GPU in GiB (default: ${GPU_MEM_ENV}, else the planner's default)")


def _billions(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def main(experiment: Experiment, args: Args) -> int:
    start = time.perf_counter()
    # Task orders permute the same tasks, so one plan holds for every run; --order is still checked.
    runs = experiment.runs()
    cfg, method = runs[0].cfg, runs[0].method
    nodes = cfg.slurm.train.nodes if args.nodes is None else args.nodes
    gpn = max(1, cfg.slurm.train.gpus_per_node) if args.gpus_per_node is None else args.gpus_per_node
    gpu_mem = gpu_mem_default() if args.gpu_mem_gib is None else args.gpu_mem_gib
    check_resources(nodes, gpn, gpu_mem)
    rows = plan_memory(cfg, method, nodes, gpn, gpu_mem)
    best = recommend(rows)
    shape = shape_of_config(cfg)
    load = load_of(cfg, method, shape)
    print(f"model      {cfg.model.name_or_path}: {_billions(shape.total_params)} parameters "
          f"({shape.total_params:,}), {shape.num_layers} layers, hidden {shape.hidden_size}")
    resident = (f", {_billions(load.resident_params)} adapter parameters resident on "
                f"{', '.join(load.modules or cfg.adapter.target_modules)}" if load.resident_params else "")
    print(f"method     {cfg.method} ({method.role}): {method.trains}; "
          f"{_billions(load.trainable_params)} trainable parameters per task{resident}")
    print(f"step       micro batch {cfg.train.micro_batch_size} x {cfg.model.max_seq_len} tokens; "
          f"{nodes} node(s) x {gpn} GPU(s) of {gpu_mem:g} GiB")
    print(f"faiss      {_faiss_line(cfg)}")
    if any(exp.run_name for exp in runs):
        print(f"orders     {', '.join(exp.run_name for exp in runs)} (the same tasks, so one plan for all)")
    print()
    print(format_plan(rows, best, load))
    print()
    _print_verdict(cfg, method, nodes, gpn, gpu_mem, best)
    dense = dense_reference_gib(shape, nodes, gpn)
    print(f"reference  DeepSpeed's estimate for full fine-tuning (all parameters trainable, no activations): "
          f"{dense['zero2']:.1f} GiB/GPU under ZeRO-2, {dense['zero3']:.1f} under ZeRO-3")
    print(f"(planned in {time.perf_counter() - start:.1f} s from the config alone; "
          "formulas: pipeline/planning/memory.py)")
    return 0 if best else 1


def _faiss_line(cfg: ExperimentConfig) -> str:
    """The FAISS build this environment imports, and whether it can serve the config's dtkr.faiss."""
    build = faiss_build.faiss_build()
    try:
        faiss_build.require(cfg.dtkr.faiss, need_device=False)
    except ConfigError as e:
        return f"{build.describe()}: WILL FAIL: {e} ({e.hint})"
    where = {"cpu": "searches on the CPU", "gpu": "searches on the GPU",
             "auto": "searches on the GPU where one is visible" if build.kind == "gpu" else "searches on the CPU"}
    return f"{build.describe()}; dtkr.faiss={cfg.dtkr.faiss}: {where[cfg.dtkr.faiss]}"


def _print_verdict(cfg: ExperimentConfig, method: Method, nodes: int, gpn: int, gpu_mem: float,
                   best: PlanRow | None) -> None:
    if best is None:
        print(nothing_fits_message(cfg, method, nodes, gpn, gpu_mem))
    else:
        note = _finish_note(cfg, method, best, gpu_mem)
        print(f"recommended  {overrides_for(best)}  ({best.total_gib:.1f} of {gpu_mem:g} GiB per GPU; "
              f"DeepSpeed JSON: {best.deepspeed}.json; host RAM ~{best.host_gib:.0f} GiB per node){note}")
    own = own_row(cfg, method, nodes, gpn, gpu_mem)
    verdict = own.unsupported or ("fits" if own.fits else "does NOT fit")
    total = f"{own.total_gib:.1f} GiB per GPU, " if own.unsupported is None else ""
    print(f"this config  train.deepspeed={cfg.train.deepspeed} model.quantization={cfg.model.quantization} "
          f"model.gradient_checkpointing={str(cfg.model.gradient_checkpointing).lower()}: {total}{verdict}")
    print(f"             {host_line(cfg, 'train', own.host_gib, f'{gpn} ranks')[1]}")
    _print_finish(cfg, method, gpu_mem)


def _finish_note(cfg: ExperimentConfig, method: Method, best: PlanRow, gpu_mem: float) -> str:
    """What the recommended base means for the finish job, when it no longer fits its GPUs."""
    variant = cfg.model_copy(update={"model": cfg.model.model_copy(update={"quantization": best.quantization})})
    if plan_finish(variant, method, cfg.slurm.finish.gpus_per_node, gpu_mem).fits:
        return ""
    return f"; with its base the finish job needs {finish_fix(variant, method, gpu_mem)}"


def _print_finish(cfg: ExperimentConfig, method: Method, gpu_mem: float) -> None:
    """The finish job's own row: evaluation loads the whole base, on slurm.finish.gpus_per_node GPUs."""
    finish = plan_finish(cfg, method, cfg.slurm.finish.gpus_per_node, gpu_mem)
    print(f"finish       {format_finish(finish)}")
    if not finish.fits:
        print(f"             does not fit; the smallest fix: {finish_fix(cfg, method, gpu_mem)}")
    print(f"             {host_line(cfg, 'finish', finish.host_gib, 'one process')[1]}")
