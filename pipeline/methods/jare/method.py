"""The JARe family (slm, oracle_task_id): DTKR keys, then P slots per task; earlier tasks frozen.

Task t: embed its queries, learn its keys (cached in train_state, so a resumed run routes exactly
as the interrupted one), route every training record to its own task's slots, train only those
slots. Inference: base + every finished task's slots, routed per sample by the `Router`.

Forward transfer (`methods.slm.transfer`) never writes an earlier slot: `init_from_retrieved` copies the
earlier slots that DTKR retrieves most for task t's training queries into task t's new slots
before training; `route_retrieved` routes every query through its retrieved earlier slots
(frozen) beside its own, in training and at inference alike (`Router.through_earlier`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from pipeline import distributed
from pipeline.dtkr.key_files import load_keys, save_keys
from pipeline.jare.routing import Routing
from pipeline.methods.base import LoadBase, Method, MethodOptions, Predictor, Trainer
from pipeline.methods.jare.model import jare_model, kept_tasks
from pipeline.state.layout import ADAPTER_FILE, KEYS_FILE

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig
    from pipeline.experiment import Experiment
    from pipeline.peft_export import TaskExport
    from pipeline.planning.loads import MethodLoad
    from pipeline.planning.shapes import ModelShape
    from pipeline.state.layout import RunLayout

# Warn when a new task's keys take the top-1 slot of more than this share of an earlier task's
# held-out queries (measured on up to CAPTURE_QUERIES of them per task).
CAPTURE_WARN, CAPTURE_QUERIES = 0.05, 200


class JareOptions(MethodOptions):
    """The JARe methods' options (slm; oracle_task_id reads slm's, its slots are the same)."""

    slots_per_task: int = Field(1, ge=1)
    """P: the slots each task owns (every slot: one rank-`adapter.rank` increment per target layer
    and one DTKR key). 1, with dtkr.top_k 1, measured best at CPU scale (bench/results/plasticity/:
    a task's one slot sees all of its data); the paper's 4 with top-k 2 is one override away."""
    init: Literal["paper", "lora"] = "lora"
    """How a new slot's V starts (U starts at 0 either way). lora: as PEFT starts a LoRA's A
    (kaiming-uniform, +-1/sqrt(d_in)), so a slot learns like a LoRA at a LoRA's learning rate;
    paper: N(0, 1), the reference code's, which Adam barely moves in a few hundred steps."""
    transfer: Literal["none", "init_from_retrieved", "route_retrieved"] = "init_from_retrieved"
    """What a new task takes from the earlier ones; earlier slots are never written, so none of
    these can cause forgetting. none: fresh slots. init_from_retrieved: its slots start as copies
    of the earlier slots DTKR retrieves most for its training queries (measured best:
    bench/results/plasticity/). route_retrieved: every query also routes through its top-k
    earlier-task slots (frozen) beside its own, in training and at inference alike."""


class JareMethod(Method):
    Options = JareOptions
    learns_keys = True
    has_slots = True
    forget_refusal = None  # a task's slots and keys are its own: removing them is exact

    def forget_problem(self, cfg: ExperimentConfig) -> str | None:
        # init_from_retrieved only copies earlier slots before training (the copy is the later
        # task's own); route_retrieved trains the later tasks through the earlier slots.
        if self.options(cfg).transfer == "route_retrieved":
            return (f"with methods.{self.section}.transfer=route_retrieved every later task was trained routing "
                    "through this task's slots, so removing them would change the later tasks")
        return None

    def config_problems(self, cfg: ExperimentConfig) -> list[str]:
        if cfg.dtkr.top_k > self.options(cfg).slots_per_task * len(cfg.tasks):
            return [f"dtkr.top_k: {cfg.dtkr.top_k} exceeds the slots of all tasks "
                    f"({self.options(cfg).slots_per_task} x {len(cfg.tasks)} tasks)"]
        return []

    def export(self, exp: Experiment, t: int) -> TaskExport:
        """Task t's P slots at equal weights 1/P, as one LoRA of rank P*r.

        Why equal weights: a LoRA has one fixed increment, while DTKR picks top-k slots and their
        weights per input. Equal weights over the task's own slots is the one weighting that does not
        depend on an input, and what `serve.merged_task` merges into W; retrieval's per-input choice
        among (and across) tasks' slots is what the export gives up.
        """
        cfg, layout = exp.cfg, exp.layout
        from pipeline.errors import ConfigError
        from pipeline.peft_export import TaskExport, task_lora_weights
        from pipeline.state.artifacts import read_safetensors

        opts = self.options(cfg)
        if opts.transfer == "route_retrieved":
            raise ConfigError(f"slm export: with methods.{self.section}.transfer=route_retrieved a task also routes "
                              "through the earlier tasks' slots it retrieves per input, which one fixed LoRA cannot "
                              "hold", hint="serve this run with `slm serve`, which keeps the routing, or export a run "
                                           "with transfer none or init_from_retrieved")
        name, slots = cfg.tasks[t].name, opts.slots_per_task
        path = layout.adapter_file(t, name)
        weights = [1.0 / slots] * slots
        return TaskExport(task_lora_weights(read_safetensors(path), t, weights),
                          describes=f"the {slots} slots of task {t} ({name}) at equal weights 1/{slots}, as "
                                    "serve.merged_task merges them (no per-input retrieval)",
                          info={"sources": [str(path)], "slot_weights": weights})

    def key_slots(self, cfg: ExperimentConfig) -> int:
        return self.options(cfg).slots_per_task

    def memory_load(self, cfg: ExperimentConfig, shape: ModelShape, encoder_dim: int) -> MethodLoad:
        from pipeline.planning.loads import compute_bytes, jare_load

        p = self.options(cfg).slots_per_task
        return jare_load(shape.targets(cfg.adapter.target_modules), cfg.adapter.rank, len(cfg.tasks), p,
                         max(p, cfg.dtkr.top_k), encoder_dim, compute_bytes(cfg), cfg.method)

    def trainer(self, exp: Experiment, t: int, records: list[dict], device: torch.device,
                load_base: LoadBase) -> Trainer:
        from pipeline.dtkr.encoder import SentenceEncoder
        from pipeline.dtkr.router import Router

        cfg, layout = exp.cfg, exp.layout
        name = cfg.tasks[t].name
        encoder = SentenceEncoder(cfg.dtkr.encoder, device)
        embeddings = encoder.encode(_queries(records), progress=distributed.is_main())
        earlier = [(other, load_keys(layout.keys_file(j, other), cfg.dtkr.encoder, cfg.dtkr.groups))
                   for j, other in kept_tasks(cfg, layout, t)]
        keys = learn_keys(cfg, layout, t, embeddings, earlier, self.key_slots(cfg))
        opts = self.options(cfg)
        router = Router.from_keys([*earlier, (name, keys)], encoder, cfg.dtkr, opts.slots_per_task,
                                  through_earlier=opts.transfer == "route_retrieved")
        routing = router.route_embeddings(embeddings, tasks=[name])  # task t's own slots (+ earlier, frozen)
        captured = capture_warning(cfg, layout, t, router)
        # The base only now: under ZeRO-3 every from_pretrained after it loads partitioned, and
        # the encoder above must load whole.
        model, bank = jare_model(cfg, layout, t, opts.slots_per_task, device, model=load_base())
        # Its place in the bank (and the index): t, less the earlier tasks `slm forget` removed.
        own = bank.add_task(name, seed=cfg.seed + 1000 * t, init=opts.init)
        info: dict = {"capture": captured}
        if opts.transfer == "init_from_retrieved" and earlier:
            sources = most_retrieved_slots(router, embeddings, [n for n, _ in earlier], opts.slots_per_task)
            bank.copy_slots(own, sources)
            info["init_from_slots"] = [router.describe_slot(s) for s in sources]
            distributed.log(f"train: task {t} ({name}) starts from the earlier slots " +
                            ", ".join(f"{d['task']}:{d['slot']}" for d in info["init_from_slots"]))
        params = bank.train_only(own)

        def before_forward(idx: list[int]) -> None:
            bank.set_routing(Routing(routing.slot_ids[idx], routing.weights[idx], task=routing.task))

        def save() -> list[str]:
            state = distributed.gathered(params, lambda: bank.task_state_dict(own))
            if distributed.is_main():
                meta = {"method": cfg.method, "encoder": cfg.dtkr.encoder}
                bank.save_task(own, layout.adapter_file(t, name), meta, state=state)
                save_keys(layout.keys_file(t, name), keys, cfg.dtkr.encoder, cfg.dtkr.groups)
            return [ADAPTER_FILE, KEYS_FILE]

        return Trainer(model, params, save, before_forward=before_forward, info=info)

    def predictor(self, exp: Experiment, after: int, device: torch.device) -> Predictor:
        cfg, layout = exp.cfg, exp.layout
        from pipeline.dtkr.encoder import SentenceEncoder
        from pipeline.dtkr.router import Router
        from pipeline.dtkr.store import load_store

        model, bank = jare_model(cfg, layout, after + 1, self.key_slots(cfg), device)
        router = Router(load_store(exp, after + 1), SentenceEncoder(cfg.dtkr.encoder, device), cfg.dtkr,
                        through_earlier=self.options(cfg).transfer == "route_retrieved")
        seen = [name for _, name in kept_tasks(cfg, layout, after + 1)]

        def route(records: list[dict], task: int) -> Routing | None:
            return self.route_eval(router, seen, cfg.tasks[task].name, records)

        return Predictor(model, route, router.top1_names if self.retrieves else None, bank.routed, router, bank)

    def route_eval(self, router, seen: list[str], true_task: str, records: list[dict]) -> Routing | None:
        """Routing of an eval batch of `true_task`'s records, given the finished tasks `seen`."""
        raise NotImplementedError


def most_retrieved_slots(router, embeddings: torch.Tensor, earlier: list[str], slots: int) -> list[int]:
    """The `slots` earlier slots with the largest summed routing weight over a task's training
    queries (retrieved among the earlier tasks only), most-weighted first; when fewer distinct
    slots were retrieved, the list repeats them in that order."""
    routing = router.retrieve(embeddings, earlier)  # (N, k) over the earlier tasks' slots
    total = torch.zeros(len(earlier) * router.store.slots_per_task)
    total.index_add_(0, routing.slot_ids.reshape(-1), routing.weights.reshape(-1).float())
    order = total.argsort(descending=True, stable=True)
    ranked = [int(s) for s in order if total[s] > 0]
    return [ranked[i % len(ranked)] for i in range(slots)]


def _queries(records: list[dict]) -> list[str]:
    from pipeline.prompts.batching import queries

    return queries(records)


def learn_keys(cfg: ExperimentConfig, layout: RunLayout, t: int, embeddings: torch.Tensor,
               earlier: list[tuple[str, torch.Tensor]], slots: int) -> torch.Tensor:
    """Task t's keys, learned on its own queries (and the earlier tasks' frozen keys, for the
    centrifugal term) before any value; cached in train_state so a resumed run routes exactly as
    the interrupted one did."""
    from pipeline.dtkr.keys import learn_task_keys

    name = cfg.tasks[t].name
    d = cfg.dtkr
    cached = layout.train_state(t, name) / KEYS_FILE
    cached_before = cached.is_file()
    distributed.barrier()  # every rank looks before rank 0 may write it, so all take one branch
    if cached_before:
        return load_keys(cached, d.encoder, d.groups)
    distributed.log(f"train: learning DTKR keys of task {t} ({name}) on {len(embeddings)} queries")
    previous = torch.cat([k for _, k in earlier]) if earlier else None
    keys, losses = learn_task_keys(embeddings, d, slots, seed=cfg.seed + t,
                                   previous_keys=previous, progress=distributed.is_main())
    if losses:
        distributed.log(f"train: key loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    if distributed.is_main():
        save_keys(cached, keys, d.encoder, d.groups)
    distributed.barrier()
    return keys


def capture_warning(cfg: ExperimentConfig, layout: RunLayout, t: int, router) -> dict[str, float]:
    """How much of each earlier task's held-out queries task t's keys now capture (top-1), warned
    about above CAPTURE_WARN: the user should know before any evaluation. Recorded in the DONE."""
    from pipeline.data.prepared import load_prepared
    from pipeline.dtkr.router import capture_rates

    if not kept_tasks(cfg, layout, t):
        return {}
    prepared = load_prepared(cfg, layout)
    names = [name for _, name in kept_tasks(cfg, layout, t)]
    held_out = {n: router.embed([dict(r) for r in prepared[n]["test"]][:CAPTURE_QUERIES]) for n in names}
    rates = capture_rates(router, held_out)
    for task, rate in rates.items():
        if rate > CAPTURE_WARN:
            distributed.log(f"warning: the keys of task {t} ({cfg.tasks[t].name}) capture {rate:.0%} of task "
                            f"{task!r}'s held-out queries (top-1 slot); those inputs will use the new task's "
                            "slots. See bench/retrieval.py and the dtkr.* key settings.")
    return {k: round(v, 4) for k, v in rates.items()}
