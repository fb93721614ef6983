"""`slm train --task i`: train task i of the sequence with the experiment's method, under DeepSpeed.

Reads top to bottom: check earlier tasks are DONE -> the method's records for task i -> the
method's Trainer (slm: DTKR keys, fixed per-sample routing, then the task's JARe slots; the
baselines: their LoRA(s) or the full model) -> deepspeed.initialize -> resume from the newest
good checkpoint -> steps (checkpoint every N, and on USR1/SIGTERM) -> the method saves its files
atomically -> DONE with hashes, trainable parameters, wall time and peak memory.

A result is valid only for the inputs it records (pipeline/state/validity.py): a DONE that no longer
matches the config, data or earlier tasks is refused, and so is a train_state/ (checkpoints and
cached keys) started from other inputs; `--restart` discards either and says so. The whole stage
holds the writer lock of the output folder, so two writers never share a train_state.

Data order is a pure function of (seed, step), and rank r of W takes its slice of each global
batch, so one rank with grad_accum=W and W ranks with grad_accum=1 see the same samples per
optimizer step, and a resumed run continues exactly where the killed one stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pipeline import distributed, preflight
from pipeline.config import ExperimentConfig
from pipeline.data.prepared import load_prepared
from pipeline.errors import StageInputError
from pipeline.methods.base import Method, Trainer
from pipeline.prompts.batching import TokenCaps, collate, tokenize_for_training
from pipeline.runtime.deepspeed_config import build_ds_config, check_quantization_pairing, make_optimizer
from pipeline.runtime.models import load_base_model, load_tokenizer, release_zero3_loading
from pipeline.stages import RESTART_HELP
from pipeline.stages.fetch import require_fetched
from pipeline.state import validity
from pipeline.state.artifacts import DONE, atomic_write_json, atomic_write_text, read_done, sha256_file, write_done
from pipeline.state.checkpoints import (
    World,
    make_private,
    prune_checkpoints,
    require_same_world,
    resume_latest,
    save_checkpoint,
)
from pipeline.state.layout import RunLayout
from pipeline.state.locks import writer_stage
from pipeline.state.preemption import (
    EXIT_PREEMPTED,
    EXIT_PREVIOUS_NOT_DONE,
    EXIT_TERMINATED,
    PreemptionFlag,
    requeue_deadline,
)
from pipeline.tracking import JsonlLog, Trackers, check_report_to, train_log

if TYPE_CHECKING:
    from pipeline.experiment import Experiment

STATE_INPUTS = "INPUTS.json"  # in train_state/: the inputs it was started from, written before its first file
EXIT_NOT_FINISHED = 1  # `slm train --check`: the task has no DONE yet


@dataclass(frozen=True)
class Args:
    task: int | None = None
    restart: bool = False
    check: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", type=int, default=None, metavar="I",
                   help="0-based task index (default: $SLURM_ARRAY_TASK_ID)")
    p.add_argument("--restart", action="store_true", help=RESTART_HELP)
    p.add_argument("--check", action="store_true",
                   help="only check that task I is DONE and matches the current config, data and earlier tasks: exit 0 "
                        "if so, 1 if it has not finished, 2 naming what changed")


def main(experiment: Experiment, args: Args) -> int:
    exp = experiment.single()
    t = resolve_task_index(exp.cfg, args.task)
    if args.check:
        return check(exp, t)
    if problem := previous_not_done(exp, t):
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_PREVIOUS_NOT_DONE
    return run(exp, t, restart=args.restart)


def previous_not_done(exp: Experiment, t: int) -> str | None:
    """Why task t cannot start yet (an earlier task has no DONE), or None."""
    for j in range(t):
        folder = exp.layout.task_dir(j, exp.cfg.tasks[j].name)
        if read_done(folder) is None:
            return (f"task {j} ({exp.cfg.tasks[j].name}) has not finished: {folder / DONE} is missing. "
                    f"Run `slm train --task {j}` first.")
    return None


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


def check(exp: Experiment, t: int) -> int:
    """`slm train --check` (what the Slurm script runs before it skips a task): 0 when task t is
    DONE and still matches the config, data and earlier tasks; 1 when it has not finished; a
    StageInputError (exit 2) naming what changed otherwise, or what would stop training on this
    config (pipeline.preflight). Reads only: no lock."""
    preflight.require_runnable(exp, "train")
    name = exp.cfg.tasks[t].name
    folder = exp.layout.task_dir(t, name)
    if read_done(folder) is None:
        print(f"train: task {t} ({name}) has not finished ({folder / DONE} is missing)")
        return EXIT_NOT_FINISHED
    validity.require_tasks(exp, t, verify=False)  # the inputs chain; its own files below
    validity.require_task(exp, t)
    print(f"train: task {t} ({name}) is already done and matches the current inputs ({folder})")
    return 0


def run(exp: Experiment, t: int, restart: bool = False) -> int:
    cfg = exp.cfg
    check_quantization_pairing(cfg)  # a quantised base with ZeRO-3: refuse before any work
    exp.method.check(cfg)
    check_report_to(cfg)  # a wandb / mlflow that is not installed: refuse before any work
    preflight.use_faiss_of(exp)
    require_fetched(exp)  # offline (a job): the models are in the cache, else stop before any work
    with writer_stage(exp.layout):  # one writer per output folder: nobody else touches this train_state
        validity.require_tasks(exp, t, verify=False)  # earlier tasks still match the config and data
        if _already_done(exp, t, restart):
            return 0
        validity.require_tasks(exp, t)  # and their files, which training loads, are intact
        # Handlers go in before any slow work: a USR1 during model loading must not kill the job.
        with PreemptionFlag() as preempt:
            return _run(exp, t, validity.task_inputs(exp, t), preempt, restart)


def _already_done(exp: Experiment, t: int, restart: bool) -> bool:
    """True when task t is DONE and valid. A stale DONE is refused, or with --restart discarded."""
    name = exp.cfg.tasks[t].name
    task_dir = exp.layout.task_dir(t, name)
    if read_done(task_dir) is None:
        return False
    problem = validity.problem_of(lambda: validity.require_task(exp, t))
    if problem is None:
        distributed.log(f"train: task {t} ({name}) already done ({task_dir}); nothing to do")
        return True
    if not restart:
        rerun = validity.train_command(exp.cfg.method, t)
        raise StageInputError(problem, hint=f"`{rerun}` retrains it (the later tasks then retrain too), or delete "
                                            f"{task_dir}; `slm run --restart` does it all")
    distributed.log(f"train: --restart: discarding the result of task {t} ({name}): {problem}")
    return False  # _claim_state removes it with the rest of the task folder


# ---- train_state belongs to the inputs it was started from ---------------------------------------


def _claim_state(exp: Experiment, t: int, inputs: dict[str, str], restart: bool, world: World) -> None:
    """Refuse a train_state of other inputs, or checkpoints of another world (GPU count, global
    batch), or with --restart discard the whole task folder (a stale result, a train_state, files of
    an unfinished attempt such as a replay buffer); then record our inputs before the state's first
    file. Every rank reads before rank 0 changes anything, so all take the same branch."""
    name = exp.cfg.tasks[t].name
    task_dir, state_dir = exp.layout.task_dir(t, name), exp.layout.train_state(t, name)
    problem = _state_problem(exp, t, inputs)
    has_state = state_dir.is_dir() and any(state_dir.iterdir())
    has_files = task_dir.is_dir() and any(task_dir.iterdir())
    distributed.barrier()
    if problem and not restart:
        raise StageInputError(problem, hint=f"`slm train --task {t} --restart` discards it and trains task {t} from "
                                            "step 0; or restore the config (and data) it was started with")
    if has_state and not restart:  # before any model is loaded
        require_same_world(state_dir, world, f"slm train --task {t} --restart")
    if restart and has_files:
        distributed.log(f"train: --restart: discarding {task_dir} ({problem or 'as asked'})")
        if distributed.is_main():
            shutil.rmtree(task_dir)
    elif has_state:
        _drop_unverified_caches(state_dir)
    if distributed.is_main() and not (state_dir / STATE_INPUTS).is_file():
        state_dir.mkdir(parents=True, exist_ok=True)
        make_private(state_dir)
        atomic_write_json(state_dir / STATE_INPUTS, {"format": 1, "task": name, "inputs": inputs,
                                                     "settings": validity.task_settings(exp, t), "caches": {}})
    distributed.barrier()


def _state_problem(exp: Experiment, t: int, inputs: dict[str, str]) -> str | None:
    """Why the train_state of task t must not be resumed with `inputs` (None: absent, empty or ours)."""
    state_dir = exp.layout.train_state(t, exp.cfg.tasks[t].name)
    if not state_dir.is_dir() or not any(state_dir.iterdir()):
        return None
    record = _read_state_inputs(state_dir)
    if isinstance(record, str):
        return record
    if record.get("inputs") != inputs:
        what = validity.what_changed(record.get("inputs") or {}, inputs, validity.labeller(exp),
                                     record.get("settings"), validity.task_settings(exp, t))
        return f"{state_dir} (checkpoints and cached keys) was started from other inputs: {what}"
    return None


def _read_state_inputs(state_dir) -> dict | str:
    """The state's record, or why it cannot be trusted."""
    path = state_dir / STATE_INPUTS
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{state_dir} records no inputs ({STATE_INPUTS} is missing: left by an older slm, or not by slm)"
    except (ValueError, OSError) as e:  # torn, not UTF-8, unreadable
        return f"{path} cannot be read ({type(e).__name__}: {e}), so {state_dir} cannot be checked"
    if not isinstance(record, dict) or not isinstance(record.get("inputs"), dict):
        return f"{path} is not a train_state record (no `inputs` mapping)"
    return record


def _drop_unverified_caches(state_dir) -> None:
    """A cached file (the task's learned keys) is reused only if it hashes as recorded: a changed
    one would route every later step, and the saved keys, differently. Others are learned again."""
    record = _read_state_inputs(state_dir)
    caches = record.get("caches", {}) if isinstance(record, dict) else {}
    for path in sorted(state_dir.glob("*.safetensors")):
        if caches.get(path.name) != sha256_file(path):
            distributed.log(f"warning: {path} does not match the sha256 recorded in {state_dir / STATE_INPUTS} "
                            "(changed, or its run was killed before recording it); learning it again")
            if distributed.is_main():
                path.unlink()


def _record_caches(state_dir) -> None:
    """After the method built its trainer: the sha256 of every file it cached in train_state."""
    if not distributed.is_main():
        return
    record = _read_state_inputs(state_dir)
    if isinstance(record, dict):
        record["caches"] = {p.name: sha256_file(p) for p in sorted(state_dir.glob("*.safetensors"))}
        atomic_write_json(state_dir / STATE_INPUTS, record)


def _run(exp: Experiment, t: int, inputs: dict[str, str], preempt: PreemptionFlag, restart: bool) -> int:
    cfg, layout, method = exp.cfg, exp.layout, exp.method
    name = cfg.tasks[t].name
    started = time.time()
    rank, world = distributed.setup()
    tr = cfg.train
    ranks = World(world, tr.micro_batch_size * tr.grad_accum * world)
    _claim_state(exp, t, inputs, restart, ranks)  # before any write or load: a refused resume changes nothing
    if distributed.is_main():
        atomic_write_text(layout.config, cfg.to_yaml())
    device = distributed.local_device()
    # Built before the model: under ZeRO-3 the base is loaded partitioned from this config.
    ds_config = build_ds_config(cfg, world)
    records = method.training_records(exp, load_prepared(cfg, layout), t)
    # Replay and multitask mix earlier tasks' records: each record by its own task's source.train_on.
    all_turns = {task.name for task in cfg.tasks if task.source.train_on == "all_turns"}
    examples = tokenize_for_training(load_tokenizer(cfg.model.name_or_path), cfg.model.prompt_format, records,
                                     TokenCaps.of(cfg.model), all_turns)
    m = cfg.model

    def load_base(name_or_path: str | None = None) -> torch.nn.Module:
        return load_base_model(name_or_path or m.name_or_path, m.dtype, m.quantization, device, ds_config=ds_config)

    try:
        trainer = method.trainer(exp, t, records, device, load_base)
        _record_caches(layout.train_state(t, name))
        if cfg.model.gradient_checkpointing:
            trainer.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(trainer.model, "enable_input_require_grads"):
                trainer.model.enable_input_require_grads()
        status = _train_loop(exp, t, trainer, examples, ranks, rank, preempt, ds_config)
        if status != 0:
            return status
        _save_results(exp, t, trainer, inputs, time.time() - started)
    finally:
        release_zero3_loading()  # later stages of this process (slm run) load whole models again
    distributed.log(f"train: task {t} ({name}) done -> {layout.task_dir(t, name)}")
    return 0


# ---- the loop --------------------------------------------------------------------------------


def total_steps(cfg: ExperimentConfig, method: Method, n_examples: int, world: int, t: int) -> int:
    tr = cfg.train
    if tr.max_steps is not None:
        return tr.max_steps * method.steps_scale(t)
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


def _train_loop(exp: Experiment, t: int, trainer: Trainer, examples: list, ranks: World, rank: int,
                preempt: PreemptionFlag, ds_config: dict) -> int:
    import deepspeed
    from tqdm import tqdm

    cfg, layout, method = exp.cfg, exp.layout, exp.method
    world = ranks.size
    tr = cfg.train
    steps = total_steps(cfg, method, len(examples), world, t)
    order = sample_order(len(examples), steps * tr.micro_batch_size * tr.grad_accum * world, cfg.seed + t)
    optimizer = make_optimizer(trainer.params, method.learning_rate(cfg, t), tr.weight_decay, ds_config,
                               where=str(cfg.deepspeed_config_path()))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, method.lr_schedule(cfg, steps))
    engine, _, _, _ = deepspeed.initialize(model=trainer.model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config, model_parameters=trainer.params)
    state_dir = layout.train_state(t, cfg.tasks[t].name)
    start = resume_latest(engine, state_dir)
    if start:
        distributed.log(f"train: resumed task {t} from step {start}/{steps} ({state_dir})")
    logs = _StepLogs.open(cfg, layout, t, fresh=start == 0) if distributed.is_main() else None
    pad = _pad_id(cfg)
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"task {t} {cfg.tasks[t].name}",
               disable=not distributed.is_main())
    budget = _StopBudget(cfg)
    with bar, logs or contextlib.nullcontext():
        for step in bar:
            with budget.timing("step"):
                loss = _one_step(engine, trainer, examples, order, step, rank, world, pad, tr)
            bar.set_postfix(loss=f"{loss:.4f}")
            if logs:
                logs.log(step + 1, {"loss": loss, "lr": scheduler.get_last_lr()[0]})
            last = step + 1 == steps
            if distributed.any_rank(preempt.requested):
                save_checkpoint(engine, state_dir, step + 1, ranks)
                # A SIGTERM on any rank (scancel, drain) is a stop, not a preemption: every rank exits 143.
                code = EXIT_TERMINATED if distributed.any_rank(preempt.terminated) else EXIT_PREEMPTED
                why = ("stop signal (SIGTERM): not requeued; rerun to resume" if code == EXIT_TERMINATED
                       else "preemption signal: requeue to resume")
                distributed.log(f"train: checkpoint at step {step + 1} saved; exiting {code} ({why})")
                return code
            if (step + 1) % tr.save_every == 0 or last:
                with budget.timing("save"):
                    save_checkpoint(engine, state_dir, step + 1, ranks)
                prune_checkpoints(state_dir, tr.keep_checkpoints)
    return 0


class _StopBudget:
    """Warns once when a step plus a checkpoint take longer than the batch script waits after the
    preemption signal (requeue_deadline): such a task is requeued before it saved, and every
    preemption then costs the steps since its last periodic checkpoint."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.signal_s = cfg.slurm.signal_seconds
        self.seconds = {"step": 0.0, "save": 0.0}
        self.warned = "SLURM_JOB_ID" not in os.environ  # only a Slurm job is signalled before its limit

    @contextlib.contextmanager
    def timing(self, what: str):
        start = time.monotonic()
        yield
        self.seconds[what] = time.monotonic() - start
        if what == "save" and not self.warned:
            self._check()

    def _check(self) -> None:
        needed = self.seconds["step"] + self.seconds["save"]
        deadline = requeue_deadline(self.signal_s)
        if needed > deadline:
            self.warned = True
            enough = math.ceil(needed * 4 / 3) + 10
            distributed.log(f"warning: a step ({self.seconds['step']:.0f} s) plus a checkpoint "
                            f"({self.seconds['save']:.0f} s) take longer than the {deadline} s the job waits after "
                            f"its preemption signal (slurm.signal_seconds={self.signal_s}): a preempted task is "
                            f"requeued before it saves; set slurm.signal_seconds={enough} or more")


class _StepLogs:
    """Task t's per-step metrics: the JSONL log (always; `slm report` plots it) and `report_to`."""

    def __init__(self, jsonl: JsonlLog, trackers: Trackers, axis: str) -> None:
        self.jsonl, self.trackers, self.axis = jsonl, trackers, axis

    @classmethod
    def open(cls, cfg: ExperimentConfig, layout: RunLayout, t: int, fresh: bool) -> _StepLogs:
        name = cfg.tasks[t].name
        return cls(JsonlLog(train_log(layout, t, name), fresh), Trackers.open(cfg, layout, f"{t}-{name}"),
                   f"train/{t}-{name}")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.jsonl.log(step, metrics)
        self.trackers.log(self.axis, step, metrics)

    def __enter__(self) -> _StepLogs:
        return self

    def __exit__(self, *exc) -> None:
        self.jsonl.close()
        self.trackers.close()


def _one_step(engine, trainer: Trainer, examples: list, order, step, rank, world, pad, tr) -> float:
    total = 0.0
    if trainer.before_step is not None:
        trainer.before_step()
    for j in range(tr.grad_accum):
        idx = micro_batch(order, step, j, rank, world, tr.micro_batch_size, tr.grad_accum)
        batch = {k: v.to(engine.device) for k, v in collate([examples[i] for i in idx], pad).items()}
        if trainer.before_forward is not None:
            trainer.before_forward(idx)
        loss = engine(**batch).loss
        if trainer.extra_loss is not None:
            loss = loss + trainer.extra_loss()
        engine.backward(loss)
        engine.step()  # DeepSpeed steps the optimizer after the last micro-batch of the step only
        total += loss.item()
    if trainer.after_step is not None:
        trainer.after_step()
    return total / tr.grad_accum


def _pad_id(cfg: ExperimentConfig) -> int:
    return load_tokenizer(cfg.model.name_or_path).pad_token_id


# ---- results ---------------------------------------------------------------------------------


def _save_results(exp: Experiment, t: int, trainer: Trainer, inputs: dict[str, str], wall_s: float) -> None:
    name = exp.cfg.tasks[t].name
    task_dir = exp.layout.task_dir(t, name)
    files = trainer.save()  # every rank: under ZeRO-3 saving gathers
    if distributed.is_main():
        write_done(task_dir, "train", inputs=inputs, files=files, task=name, index=t, method=exp.cfg.method,
                   settings=validity.task_settings(exp, t),
                   trainable_params=sum(p.numel() for p in trainer.params), wall_s=round(wall_s, 1),
                   peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), **trainer.info)
        shutil.rmtree(exp.layout.train_state(t, name), ignore_errors=True)
    distributed.barrier()
