"""`slm train --task i`: learn task i's DTKR keys, then its JARe slot values, under DeepSpeed.

Reads top to bottom: check earlier tasks are DONE -> load data -> build the model for the
method -> (JARe) learn keys, fix per-sample routing -> deepspeed.initialize -> resume from the
newest good checkpoint -> steps (checkpoint every N, and on USR1/SIGTERM) -> save the task's
files atomically -> DONE with hashes.

Data order is a pure function of (seed, step), and rank r of W takes its slice of each global
batch, so one rank with grad_accum=W and W ranks with grad_accum=1 see the same samples per
optimizer step, and a resumed run continues exactly where the killed one stopped.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from dataclasses import dataclass

import torch

from data_prep.prepared import load_prepared
from pipeline import distributed
from pipeline.adapters import (
    JARE_METHODS,
    jare_model,
    lora_model,
    lora_trainable,
    save_keys,
    save_lora,
)
from pipeline.artifacts import atomic_write_text, marker_digest, read_done, require_done, sha256_json, write_done
from pipeline.batching import collate, queries, tokenize_for_training
from pipeline.checkpoints import prune_checkpoints, resume_latest, save_checkpoint
from pipeline.config import ExperimentConfig
from pipeline.deepspeed_config import build_ds_config, check_quantization_pairing
from pipeline.errors import StageInputError
from pipeline.jare.routing import Routing
from pipeline.layout import RunLayout
from pipeline.models import load_base_model, release_zero3_loading
from pipeline.preemption import EXIT_PREEMPTED, EXIT_PREVIOUS_NOT_DONE, PreemptionFlag


@dataclass
class TaskData:
    examples: list[dict[str, list[int]]]
    routing: Routing | None  # per-record slots (JARe methods), fixed once keys are frozen
    keys: torch.Tensor | None


def train_inputs(cfg: ExperimentConfig, layout: RunLayout, t: int) -> dict[str, str]:
    """What task t's result depends on; recorded in its DONE and checked on rerun."""
    settings = cfg.model_dump(include={"method", "seed", "model", "jare", "dtkr", "train"})
    if cfg.method in JARE_METHODS:  # the LoRA baselines' knobs do not change a JARe task
        for key in ("lora_rank", "lora_lr"):
            settings["train"].pop(key)
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
    t = resolve_task_index(cfg, args.task)
    try:
        check_previous_done(cfg, layout, t)
    except StageInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_PREVIOUS_NOT_DONE
    return run(cfg, layout, t)


def run(cfg: ExperimentConfig, layout: RunLayout, t: int) -> int:
    check_quantization_pairing(cfg)  # a quantised base with ZeRO-3: refuse before any work
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
    rank, world = distributed.setup()
    layout.root.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        atomic_write_text(layout.config, cfg.to_yaml())
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if torch.cuda.is_available() else torch.device("cpu")
    # Built before the model: under ZeRO-3 the base is loaded partitioned from this config.
    ds_config = build_ds_config(cfg, world)
    data = _task_data(cfg, layout, t, device)  # before the base: the DTKR encoder must load whole
    try:
        model, params, bank = _build_model(cfg, layout, t, device, ds_config)
        status = _train_loop(cfg, layout, t, model, params, bank, data, rank, world, preempt, ds_config)
        if status != 0:
            return status
        _save_results(cfg, layout, t, model, params, bank, data, inputs)
    finally:
        release_zero3_loading()  # later stages of this process (slm run) load whole models again
    distributed.log(f"train: task {t} ({name}) done -> {layout.task_dir(t, name)}")
    return 0


# ---- data and model --------------------------------------------------------------------------


def _training_records(cfg: ExperimentConfig, layout: RunLayout, t: int) -> list[dict]:
    prepared = load_prepared(cfg, layout)
    # multitask: joint training on every task seen so far (tasks 0..t); the last row is the
    # usual "all tasks jointly" upper bound.
    names = [cfg.tasks[j].name for j in range(t + 1)] if cfg.method == "multitask" else [cfg.tasks[t].name]
    return [dict(r) for n in names for r in prepared[n]["train"]]


def _task_data(cfg: ExperimentConfig, layout: RunLayout, t: int, device: torch.device) -> TaskData:
    from pipeline.models import load_tokenizer

    records = _training_records(cfg, layout, t)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    examples = tokenize_for_training(tokenizer, cfg.model.prompt_format, records, cfg.model.max_seq_len)
    if cfg.method not in JARE_METHODS:
        return TaskData(examples, None, None)
    from pipeline.dtkr.encoder import SentenceEncoder
    from pipeline.dtkr.keys import group_normalize, retrieve

    embeddings = SentenceEncoder(cfg.dtkr.encoder, device).encode(queries(records), progress=distributed.is_main())
    keys = _learn_keys(cfg, layout, t, embeddings)
    q = group_normalize(embeddings, cfg.dtkr.groups)
    routing, _ = retrieve(q, keys, cfg.jare.top_k, weighting=cfg.dtkr.weighting,
                          temperature=cfg.dtkr.temperature)
    offset = t * cfg.jare.slots_per_task  # retrieval restricted to task t's own slots
    return TaskData(examples, Routing(routing.slot_ids + offset, routing.weights, task=t), keys)


def _learn_keys(cfg: ExperimentConfig, layout: RunLayout, t: int, embeddings: torch.Tensor) -> torch.Tensor:
    """Task t's keys, learned on its own inputs before any value; cached in train_state so a
    resumed run routes exactly as the interrupted one did."""
    from pipeline.adapters import load_keys
    from pipeline.dtkr.keys import train_keys

    name = cfg.tasks[t].name
    cached = layout.train_state(t, name) / "keys.safetensors"
    cached_before = cached.is_file()
    distributed.barrier()  # every rank looks before rank 0 may write it, so all take one branch
    if cached_before:
        return load_keys(cached, cfg.dtkr.encoder, cfg.dtkr.groups)
    d = cfg.dtkr
    distributed.log(f"train: learning DTKR keys of task {t} ({name}) on {len(embeddings)} queries")
    keys, losses = train_keys(embeddings, cfg.jare.slots_per_task, d.groups, lr=d.key_lr,
                              weight_decay=d.key_weight_decay, grad_clip=d.key_grad_clip, epochs=d.key_epochs,
                              batch_size=d.key_batch_size, mask_ratio=d.mask_ratio, seed=cfg.seed + t,
                              progress=distributed.is_main())
    distributed.log(f"train: key loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    if distributed.is_main():
        save_keys(cached, keys, d.encoder, d.groups)
    distributed.barrier()
    return keys


def _build_model(cfg: ExperimentConfig, layout: RunLayout, t: int, device: torch.device, ds_config: dict):
    m = cfg.model
    # Loaded here, not by adapters.base_model, to pass the DeepSpeed config (ZeRO-3: zero.Init).
    base = load_base_model(m.name_or_path, m.dtype, m.quantization, device, ds_config=ds_config)
    if cfg.method in JARE_METHODS:
        model, bank = jare_model(cfg, layout, t, device, model=base)
        bank.add_task(cfg.tasks[t].name, seed=cfg.seed + 1000 * t)
        params = bank.train_only(t)
    else:
        previous = t - 1 if cfg.method == "seq_lora" and t > 0 else None
        model, bank = lora_model(cfg, layout, previous, device, model=base), None
        params = lora_trainable(model)
    if cfg.model.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    return model, params, bank


# ---- the loop --------------------------------------------------------------------------------


def total_steps(cfg: ExperimentConfig, n_examples: int, world: int, t: int) -> int:
    tr = cfg.train
    if tr.max_steps is not None:
        # multitask at stage t sees t+1 tasks: give it the same number of steps per task.
        return tr.max_steps * ((t + 1) if cfg.method == "multitask" else 1)
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


def _train_loop(cfg, layout, t, model, params, bank, data: TaskData, rank: int, world: int,
                preempt: PreemptionFlag, ds_config: dict) -> int:
    import deepspeed
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    tr = cfg.train
    steps = total_steps(cfg, len(data.examples), world, t)
    order = sample_order(len(data.examples), steps * tr.micro_batch_size * tr.grad_accum * world, cfg.seed + t)
    lr = tr.lr if cfg.method in JARE_METHODS or tr.lora_lr is None else tr.lora_lr
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=tr.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(int(tr.warmup_ratio * steps), steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config, model_parameters=params)
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
            loss = _one_step(engine, bank, data, order, step, rank, world, pad, tr)
            bar.set_postfix(loss=f"{loss:.4f}")
            if writer:
                writer.add_scalar("train/loss", loss, step + 1)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step + 1)
            last = step + 1 == steps
            if distributed.any_rank(preempt.requested):
                save_checkpoint(engine, state_dir, step + 1)
                distributed.log(f"train: signal received; checkpoint at step {step + 1} saved, exiting "
                                f"{EXIT_PREEMPTED} (requeue to resume)")
                return EXIT_PREEMPTED
            if (step + 1) % tr.save_every == 0 or last:
                save_checkpoint(engine, state_dir, step + 1)
                prune_checkpoints(state_dir, tr.keep_checkpoints)
    if writer:
        writer.close()
    return 0


def _one_step(engine, bank, data: TaskData, order, step, rank, world, pad, tr) -> float:
    total = 0.0
    for j in range(tr.grad_accum):
        idx = micro_batch(order, step, j, rank, world, tr.micro_batch_size, tr.grad_accum)
        batch = {k: v.to(engine.device) for k, v in collate([data.examples[i] for i in idx], pad).items()}
        if bank is not None:
            r = data.routing
            bank.set_routing(Routing(r.slot_ids[idx], r.weights[idx], task=r.task))
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        total += loss.item()
    return total / tr.grad_accum


def _pad_id(cfg: ExperimentConfig) -> int:
    from pipeline.models import load_tokenizer

    return load_tokenizer(cfg.model.name_or_path).pad_token_id


# ---- results ---------------------------------------------------------------------------------


def _gathered_state(engine_params: list[torch.nn.Parameter], state_fn):
    """Run state_fn with full tensors: under ZeRO-3 each rank holds a shard, so gather first."""
    import deepspeed

    if any(hasattr(p, "ds_id") for p in engine_params):
        with deepspeed.zero.GatheredParameters(engine_params, modifier_rank=None):
            return state_fn()
    return state_fn()


def _save_results(cfg, layout, t, model, params, bank, data: TaskData, inputs: dict[str, str]) -> None:
    name = cfg.tasks[t].name
    task_dir = layout.task_dir(t, name)
    meta = {"method": cfg.method, "encoder": cfg.dtkr.encoder}
    if bank is not None:
        state = _gathered_state(params, lambda: bank.task_state_dict(t))
        files = ["adapter.safetensors", "keys.safetensors"]
        if distributed.is_main():
            bank.save_task(t, layout.adapter_file(t, name), meta, state=state)
            save_keys(layout.keys_file(t, name), data.keys, cfg.dtkr.encoder, cfg.dtkr.groups)
    else:
        from peft import get_peft_model_state_dict

        state = _gathered_state(params, lambda: {k: v.clone() for k, v in get_peft_model_state_dict(model).items()})
        files = ["adapter.safetensors"]
        if distributed.is_main():
            save_lora(model, layout.adapter_file(t, name), meta, state=state)
    if distributed.is_main():
        write_done(task_dir, "train", inputs=inputs, files=files, task=name, index=t, method=cfg.method)
        shutil.rmtree(layout.train_state(t, name), ignore_errors=True)
    distributed.barrier()
