"""InferenceSession: the model (and, for JARe methods, its DTKR router) and the tokenizer, loaded once.

`slm generate` (one prompt) and `slm serve` (batches of concurrent requests) both answer through
a session, so the same prompt gets the same tokens from either. The model comes from the experiment's
method (`load_session` is the one place that asks it for a predictor), so every method serves:
methods with slots route each row to its own retrieved slots (or the task a request names)
through the side branch; the LoRA baselines, multitask and seq_ft answer with the one model they
have after their last task.

Tasks finished while a session runs are added by `refresh`: methods with slots add the task's slots to
the bank and its keys to the router; the others load the model of the newest finished
task in place of the old one. Either only after the task's DONE hashes check out, and only from
the thread that runs the model, between batches, so a batch in flight finishes on the model it
began with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from pipeline.dtkr.key_files import load_keys
from pipeline.errors import ConfigError, RequestError, SlmError, StageInputError
from pipeline.jare.routing import Routing
from pipeline.prompts.batching import prompts
from pipeline.prompts.truncation import TokenCaps, fit_prompt
from pipeline.state import validity
from pipeline.state.artifacts import read_done
from pipeline.state.validity import done_tasks

if TYPE_CHECKING:
    from pipeline.experiment import Experiment

log = logging.getLogger("slm.serve")


@dataclass
class TaskUpdate:
    """What one `refresh` did: tasks added, and tasks refused with the reason."""

    added: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)


@dataclass
class BatchRouting:
    routing: Routing | None  # None: no JARe routing (the merged adapter, or a method without slots)
    retrieval: list[list[dict]]  # per row: [{task, slot, weight}], what the response reports ([] without DTKR)


class InferenceSession:
    def __init__(self, exp: Experiment, model, bank, router, tokenizer, device: torch.device,
                 n_tasks: int | None = None) -> None:
        self.exp = exp
        self.cfg, self.layout, self.method = exp.cfg, exp.layout, exp.method
        self.model, self.bank, self.router, self.tokenizer = model, bank, router, tokenizer
        self.device = device
        self.caps = TokenCaps.of(exp.cfg.model)
        self.rejected: dict[str, str] = {}  # task -> why it is not loaded (latest refresh)
        self.merged_task: str | None = None
        self._merged_retrieval: list[dict] = []
        self._n_tasks = n_tasks if bank is None else None  # methods without slots: tasks learned so far

    @property
    def has_slots(self) -> bool:
        """Answers come from per-task slots, routed per row (and report which slots they used)."""
        return self.bank is not None

    @property
    def retrieves(self) -> bool:
        """A request without a task retrieves its slots by DTKR (the method retrieves, nothing is merged)."""
        return self.method.retrieves and self.merged_task is None

    @property
    def tasks(self) -> list[str]:
        if not self.has_slots:
            return [t.name for t in self.cfg.tasks[: self._n_tasks]]
        return list(self.bank.task_names)

    # ---- prompts ----------------------------------------------------------------------------
    def prompt_limit(self) -> int:
        return self.caps.prompt_cap()

    def encode(self, record: dict, truncate: bool = False) -> list[int]:
        """Prompt token ids of {instruction, input} in the experiment's prompt format. Too long:
        cut as training cuts (`truncate`, slm generate) or refused (RequestError, slm serve)."""
        from pipeline.prompts.templates import prompt_add_special_tokens

        fmt = self.cfg.model.prompt_format
        ids = self.tokenizer(prompts(self.tokenizer, fmt, [record]),
                             add_special_tokens=prompt_add_special_tokens(fmt))["input_ids"][0]
        cap = self.prompt_limit()
        if len(ids) > cap:
            if not truncate:
                raise RequestError(f"the prompt is {len(ids)} tokens; this model takes at most {cap} "
                                   "(model.max_seq_len / model.max_prompt_len)", param="messages")
            ids = fit_prompt(self.tokenizer, fmt, record, ids, cap, self.caps)
        return ids

    def check_task(self, task: str | None) -> None:
        """Refuse a request's `task` this session cannot honour (RequestError), before it is queued."""
        if task is None:
            if self.has_slots and not self.retrieves and self.merged_task is None:
                raise RequestError(f"method {self.cfg.method} answers with the true task's slots and retrieves "
                                   f"nothing: name the task (one of {', '.join(self.tasks)})", param="task")
            return
        if not self.has_slots:
            raise RequestError(f"method {self.cfg.method} answers every request with one model (after task "
                               f"{self.tasks[-1]}); it has no per-task slots to force", param="task")
        if self.merged_task is not None:
            raise RequestError(f"this server runs with retrieval off (serve.merged_task={self.merged_task}); "
                               "it cannot force a task", param="task")
        if task not in self.bank.task_names:
            raise RequestError(f"unknown task {task!r}; loaded tasks: {', '.join(self.tasks)}", param="task")

    # ---- routing ----------------------------------------------------------------------------
    def route(self, records: list[dict], forced: list[str | None]) -> BatchRouting:
        """Per-row slots: DTKR retrieval over every loaded task, or over the forced task's slots
        only (the oracle). Rows forced to one task are routed together, the rest together."""
        if not self.has_slots:
            return BatchRouting(None, [[] for _ in records])
        if self.merged_task is not None:
            return BatchRouting(None, [self._merged_retrieval for _ in records])
        groups: dict[str | None, list[int]] = {}
        for i, task in enumerate(forced):
            groups.setdefault(task, []).append(i)
        parts: dict[int, tuple[list[int], list[float]]] = {}
        retrieval: list[list[dict]] = [[] for _ in records]
        for task, rows in groups.items():
            routed = self.router.route([records[i] for i in rows], tasks=None if task is None else [task])
            for j, i in enumerate(rows):
                parts[i] = (routed.slot_ids[j].tolist(), routed.weights[j].tolist())
                retrieval[i] = self.router.describe(routed, j)
        return BatchRouting(_stack(parts, len(records), self._task_hint(forced)), retrieval)

    def _task_hint(self, forced: list[str | None]) -> int | None:
        """All rows forced to one task: layers may index that task's slots directly."""
        if forced and forced[0] is not None and all(t == forced[0] for t in forced):
            return self.bank.task_names.index(forced[0])
        return None

    # ---- retrieval off ------------------------------------------------------------------------
    def merge_task(self, name: str) -> None:
        """Merge task `name`'s slots (equal weights, i.e. one adapter of rank P*r) into W for good."""
        if not self.has_slots:
            raise ConfigError(f"serve.merged_task is for the methods with per-task slots (slm, oracle_task_id); "
                              f"method {self.cfg.method} already answers with one merged model",
                              hint="drop serve.merged_task")
        if name not in self.bank.task_names:
            raise ConfigError(f"serve.merged_task {name!r} is not a loaded task; loaded: {', '.join(self.tasks)}")
        self.bank.merge_task(self.bank.task_names.index(name))
        self.merged_task = name
        p = self.bank.shape.slots_per_task
        self._merged_retrieval = [{"task": name, "slot": s, "weight": 1.0 / p} for s in range(p)]

    # ---- new tasks ----------------------------------------------------------------------------
    def refresh(self) -> TaskUpdate:
        """Load every task after the loaded ones whose DONE is there and whose files hash as recorded,
        in order; the first that fails is reported (and retried on the next refresh), later ones wait."""
        update = TaskUpdate()
        if not self.has_slots:
            return self._refresh_model(update)
        loaded = set(self.bank.task_names)
        last = max((self.cfg.task_index(n) for n in loaded), default=-1)
        for t in range(last + 1, len(self.cfg.tasks)):
            name = self.cfg.tasks[t].name
            if read_done(self.layout.task_dir(t, name)) is None:
                break
            if self.layout.forgotten(t, name):
                continue  # removed by `slm forget`: nothing to serve
            try:
                self._load_task(t, name)
            except SlmError as e:
                update.rejected[name] = str(e)
                if self.rejected.get(name) != str(e):
                    log.warning("serve: task %d (%s) not loaded: %s; still serving %d task(s)", t, name, e,
                                len(self.bank.task_names))
                break
            update.added.append(name)
            log.info("serve: loaded task %d (%s); now serving %d task(s): %s", t, name, len(self.tasks),
                     ", ".join(self.tasks))
        self.rejected = update.rejected
        return update

    def _refresh_model(self, update: TaskUpdate) -> TaskUpdate:
        """A method without slots: the model of the newest finished task replaces the current one."""
        n = done_tasks(self.exp)
        if n <= (self._n_tasks or 0):
            return update
        name = self.cfg.tasks[n - 1].name
        try:
            validity.require_tasks(self.exp, n)
            self.model = self.method.predictor(self.exp, n - 1, self.device).model.eval()
        except SlmError as e:
            update.rejected[name] = str(e)
            if self.rejected.get(name) != str(e):
                log.warning("serve: the model after task %d (%s) not loaded: %s", n - 1, name, e)
            self.rejected = update.rejected
            return update
        update.added = [t.name for t in self.cfg.tasks[self._n_tasks:n]]
        self._n_tasks = n
        self.rejected = {}
        log.info("serve: now answering with the model after task %d (%s)", n - 1, name)
        return update

    def _load_task(self, t: int, name: str) -> None:
        validity.require_task(self.exp, t)  # DONE, its files, and built from these inputs
        d = self.cfg.dtkr
        keys = load_keys(self.layout.keys_file(t, name), d.encoder, d.groups)
        self.bank.load_task(name, self.layout.adapter_file(t, name), expect_meta={"task": name})
        try:
            self.router.add_task(name, keys)
        except Exception:
            self.bank.remove_task(name)  # keep the bank and the store in step
            raise


def _stack(parts: dict[int, tuple[list[int], list[float]]], n: int, task: int | None) -> Routing:
    """Rows of possibly different k (a forced task with fewer than top_k slots) as one (B, k)
    routing: short rows are padded with their own first slot at weight 0, which adds exactly 0."""
    k = max(len(parts[i][0]) for i in range(n))
    ids = [parts[i][0] + [parts[i][0][0]] * (k - len(parts[i][0])) for i in range(n)]
    ws = [parts[i][1] + [0.0] * (k - len(parts[i][1])) for i in range(n)]
    return Routing(torch.tensor(ids, dtype=torch.long), torch.tensor(ws, dtype=torch.float32), task)


def load_session(exp: Experiment, device: torch.device | None = None) -> InferenceSession:
    """The model of every finished task (through the experiment's method), its router and tokenizer.

    Methods with slots need `slm index` over at least the first task; finished tasks the index does
    not cover yet are loaded from their own folders (as `refresh` does for tasks finished later).
    """
    from pipeline.runtime.models import default_device, load_tokenizer

    cfg, layout, method = exp.cfg, exp.layout, exp.method
    device = device or default_device()
    if not method.has_slots:
        return _one_model_session(exp, device)
    n = min(done_tasks(exp), _indexed_tasks(layout))
    if n == 0:
        raise StageInputError(f"no finished, indexed task under {layout.root}: run `slm run` (or `slm train "
                              "--task 0` and `slm index`) before `slm serve`")
    validity.require_tasks(exp, n)  # each DONE, its files, and built from the current inputs
    predictor = method.predictor(exp, n - 1, device)
    if predictor.bank is None or predictor.router is None:
        raise ConfigError(f"method {cfg.method!r} gives no JARe bank and router to serve")
    for extra in predictor.router.tasks[n:]:  # indexed, but its DONE is gone (being retrained?)
        log.warning("serve: task %s is in the index but not DONE; not served until it is", extra)
        predictor.router.remove_task(extra)
    if predictor.router.tasks != predictor.bank.task_names:
        raise StageInputError(f"the index in {layout.index} holds tasks {predictor.router.tasks}, the model "
                              f"{predictor.bank.task_names}: rerun `slm index`")
    predictor.model.eval()
    session = InferenceSession(exp, predictor.model, predictor.bank, predictor.router,
                               load_tokenizer(cfg.model.name_or_path), device)
    session.refresh()
    return session


def _one_model_session(exp: Experiment, device: torch.device) -> InferenceSession:
    """A method without slots (LoRA baselines, multitask, seq_ft): its model after the last finished task."""
    from pipeline.runtime.models import load_tokenizer

    if exp.method.serve_refusal:
        raise ConfigError(f"slm serve cannot serve method {exp.cfg.method}: {exp.method.serve_refusal}")
    n = done_tasks(exp)
    if n == 0:
        raise StageInputError(f"no finished task under {exp.layout.root}: run `slm run --method {exp.cfg.method}` "
                              f"(or `slm train --task 0 --method {exp.cfg.method}`) before `slm serve`")
    validity.require_tasks(exp, n)
    model = exp.method.predictor(exp, n - 1, device).model.eval()
    return InferenceSession(exp, model, None, None, load_tokenizer(exp.cfg.model.name_or_path), device, n)


def _indexed_tasks(layout) -> int:
    marker = read_done(layout.index)
    return len(marker.get("tasks", [])) if marker else 0
