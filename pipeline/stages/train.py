"""`slm train --task i`: train task i of the sequence with the experiment's method, under DeepSpeed.

Reads top to bottom: check earlier tasks are DONE -> the method's records for task i -> the
method's Trainer (slm: DTKR keys, fixed per-sample routing, then the task's JARe slots; the
baselines: their LoRA(s) or the full model) -> deepspeed.initialize -> resume from the newest
good checkpoint -> steps (checkpoint every N, and on USR1/SIGTERM) -> the method saves its files
atomically -> DONE with hashes, trainable parameters, wall time and peak memory.

Data order is a pure function of (seed, step), and rank r of W takes its slice of each global
batch, so one rank with grad_accum=W and W ranks with grad_accum=1 see the same samples per
optimizer step, and a resumed run continues exactly where the killed one stopped.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import sys
import time

import torch

from data_prep.prepared import load_prepared
from pipeline import distributed
from pipeline.artifacts import atomic_write_text, marker_digest, read_done, require_done, sha256_json, write_done
from pipeline.batching import TokenCaps, collate, tokenize_for_training
from pipeline.checkpoints import prune_checkpoints, resume_latest, save_checkpoint
from pipeline.config import ExperimentConfig
from pipeline.deepspeed_config import build_ds_config, check_quantization_pairing
from pipeline.errors import StageInputError
from pipeline.layout import RunLayout
from pipeline.methods import get_method
from pipeline.methods.base import Trainer
from pipeline.models import load_base_model, load_tokenizer, release_zero3_loading
from pipeline.orders import single_run
from pipeline.preemption import EXIT_PREEMPTED, EXIT_PREVIOUS_NOT_DONE, EXIT_TERMINATED, PreemptionFlag


def train_inputs(cfg: ExperimentConfig, layout: RunLayout, t: int) -> dict[str, str]:
    """What task t's result depends on; recorded in its DONE and checked on rerun."""
    settings = get_method(cfg.method).settings(cfg)
    settings["task"] = cfg.tasks[t].model_dump()
    inputs = {"settings": sha256_json(settings), "data": marker_digest(layout.data)}
    for j in range(t):
        inputs[f"task{j}"] = marker_digest(layout.task_dir(j, cfg.tasks[j].name))
    return inputs


def check_previous_done(cfg: ExperimentConfig, layout: RunLayout, t: int) -> None:
    for j in range(t):
        name = cfg.tasks[j].name
        require_done(layout.task_dir(j, name), f"task {j} ({name})",
                     rerun=f"slm train -c {layout.config} --task {j}")


def resolve_task_index(cfg: ExperimentConfig, task: int | None) -> int:
    if task is None:
        env = os.environ.get("SLURM_ARRAY_TASK_ID")
        if env is None:
            raise StageInputError("no task given: pass --task I (0-based) or run inside a Slurm array job")
        task = int(env)
    if not 0 <= task < len(cfg.tasks):
        raise StageInputError(f"--task {task} is out of range: the experiment has tasks 0..{len(cfg.tasks) - 1} "
                              f"({', '.join(t.name for t in cfg.tasks)})")
    return task


def main(cfg: ExperimentConfig, layout: RunLayout, args: argparse.Namespace) -> int:
    cfg, layout = single_run(cfg, args)
    t = resolve_task_index(cfg, args.task)
    try:
        check_previous_done(cfg, layout, t)
    except StageInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_PREVIOUS_NOT_DONE
    return run(cfg, layout, t)


def run(cfg: ExperimentConfig, layout: RunLayout, t: int) -> int:
    check_quantization_pairing(cfg)  # a quantised base with ZeRO-3: refuse before any work
    get_method(cfg.method).check(cfg)
    name = cfg.tasks[t].name
    task_dir = layout.task_dir(t, name)
    inputs = train_inputs(cfg, layout, t)
    done = read_done(task_dir)
    if done and done.get("inputs") == inputs:
        distributed.log(f"train: task {t} ({name}) already done ({task_dir}); nothing to do")
        return 0
    if done:  # settings or earlier tasks changed: this result is stale
        raise StageInputError(f"{task_dir} is DONE but was trained from other inputs (config, data or earlier "
                              f"tasks changed). Delete {task_dir} (and later tasks) to retrain it.")
    check_previous_done(cfg, layout, t)
    # Handlers go in before any slow work: a USR1 during model loading must not kill the job.
    with PreemptionFlag() as preempt:
        return _run(cfg, layout, t, inputs, preempt)


def _run(cfg: ExperimentConfig, layout: RunLayout, t: int, inputs: dict[str, str], preempt: PreemptionFlag) -> int:
    name = cfg.tasks[t].name
    method = get_method(cfg.method)
    started = time.time()
    rank, world = distributed.setup()
    layout.root.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        atomic_write_text(layout.config, cfg.to_yaml())
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if torch.cuda.is_available() else torch.device("cpu")
    # Built before the model: under ZeRO-3 the base is loaded partitioned from this config.
    ds_config = build_ds_config(cfg, world)
    records = method.training_records(cfg, layout, load_prepared(cfg, layout), t)
    examples = tokenize_for_training(load_tokenizer(cfg.model.name_or_path), cfg.model.prompt_format, records,
                                     TokenCaps.of(cfg.model))
    m = cfg.model

    def load_base(name_or_path: str | None = None) -> torch.nn.Module:
        return load_base_model(name_or_path or m.name_or_path, m.dtype, m.quantization, device, ds_config=ds_config)

    try:
        trainer = method.trainer(cfg, layout, t, records, device, load_base)
        if cfg.model.gradient_checkpointing:
            trainer.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(trainer.model, "enable_input_require_grads"):
                trainer.model.enable_input_require_grads()
        status = _train_loop(cfg, layout, t, method, trainer, examples, rank, world, preempt, ds_config)
        if status != 0:
            return status
        _save_results(cfg, layout, t, trainer, inputs, time.time() - started)
    finally:
        release_zero3_loading()  # later stages of this process (slm run) load whole models again
    distributed.log(f"train: task {t} ({name}) done -> {layout.task_dir(t, name)}")
    return 0


# ---- the loop --------------------------------------------------------------------------------


def total_steps(cfg: ExperimentConfig, n_examples: int, world: int, t: int) -> int:
    tr = cfg.train
    if tr.max_steps is not None:
        return tr.max_steps * get_method(cfg.method).steps_scale(t)
    per_step = tr.micro_batch_size * tr.grad_accum * world
    return max(1, math.ceil(tr.epochs * n_examples / per_step))


def sample_order(n: int, needed: int, seed: int) -> torch.Tensor:
    """Concatenated seeded permutations of range(n), at least `needed` long."""
    gen = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(n, generator=gen) for _ in range(math.ceil(needed / n))]
    return torch.cat(perms)[:needed]


def micro_batch(order: torch.Tensor, step: int, j: int, rank: int, world: int, micro: int, accum: int) -> list[int]:
    start = step * micro * accum * world + (j * world + rank) * micro
    return order[start:start + micro].tolist()


def lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))  # linear decay to 0
    return f


def _train_loop(cfg, layout, t, method, trainer: Trainer, examples: list, rank: int, world: int,
                preempt: PreemptionFlag, ds_config: dict) -> int:
    import deepspeed
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    tr = cfg.train
    steps = total_steps(cfg, len(examples), world, t)
    order = sample_order(len(examples), steps * tr.micro_batch_size * tr.grad_accum * world, cfg.seed + t)
    optimizer = torch.optim.AdamW(trainer.params, lr=method.learning_rate(cfg), weight_decay=tr.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(int(tr.warmup_ratio * steps), steps))
    engine, _, _, _ = deepspeed.initialize(model=trainer.model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config, model_parameters=trainer.params)
    state_dir = layout.train_state(t, cfg.tasks[t].name)
    start = resume_latest(engine, state_dir)
    if start:
        distributed.log(f"train: resumed task {t} from step {start}/{steps} ({state_dir})")
    writer = SummaryWriter(str(layout.tensorboard / f"{t}-{cfg.tasks[t].name}")) if distributed.is_main() else None
    pad = _pad_id(cfg)
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"task {t} {cfg.tasks[t].name}",
               disable=not distributed.is_main())
    with bar:
        for step in bar:
            loss = _one_step(engine, trainer, examples, order, step, rank, world, pad, tr)
            bar.set_postfix(loss=f"{loss:.4f}")
            if writer:
                writer.add_scalar("train/loss", loss, step + 1)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step + 1)
            last = step + 1 == steps
            if distributed.any_rank(preempt.requested):
                save_checkpoint(engine, state_dir, step + 1)
                # A SIGTERM on any rank (scancel, drain) is a stop, not a preemption: every rank exits 143.
                code = EXIT_TERMINATED if distributed.any_rank(preempt.terminated) else EXIT_PREEMPTED
                why = ("stop signal (SIGTERM): not requeued; rerun to resume" if code == EXIT_TERMINATED
                       else "preemption signal: requeue to resume")
                distributed.log(f"train: checkpoint at step {step + 1} saved; exiting {code} ({why})")
                return code
            if (step + 1) % tr.save_every == 0 or last:
                save_checkpoint(engine, state_dir, step + 1)
                prune_checkpoints(state_dir, tr.keep_checkpoints)
    if writer:
        writer.close()
    return 0


def _one_step(engine, trainer: Trainer, examples: list, order, step, rank, world, pad, tr) -> float:
    total = 0.0
    for j in range(tr.grad_accum):
        idx = micro_batch(order, step, j, rank, world, tr.micro_batch_size, tr.grad_accum)
        batch = {k: v.to(engine.device) for k, v in collate([examples[i] for i in idx], pad).items()}
        if trainer.before_forward is not None:
            trainer.before_forward(idx)
        loss = engine(**batch).loss
        if trainer.extra_loss is not None:
            loss = loss + trainer.extra_loss()
        engine.backward(loss)
        engine.step()
        total += loss.item()
    return total / tr.grad_accum


def _pad_id(cfg: ExperimentConfig) -> int:
    return load_tokenizer(cfg.model.name_or_path).pad_token_id


# ---- results ---------------------------------------------------------------------------------


def _save_results(cfg, layout, t, trainer: Trainer, inputs: dict[str, str], wall_s: float) -> None:
    name = cfg.tasks[t].name
    task_dir = layout.task_dir(t, name)
    files = trainer.save()  # every rank: under ZeRO-3 saving gathers
    if distributed.is_main():
        write_done(task_dir, "train", inputs=inputs, files=files, task=name, index=t, method=cfg.method,
                   trainable_params=sum(p.numel() for p in trainer.params), wall_s=round(wall_s, 1),
                   peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), **trainer.info)
        shutil.rmtree(layout.train_state(t, name), ignore_errors=True)
    distributed.barrier()
