"""`slm eval --after i`: score every task's test split after training task i -> row i (the
validation split instead with `eval.split=validation`, what the sweeps pick on).

No task id is given to the model: for slm each test input retrieves its slots from the index
of tasks 0..i (per sample), and the row also records how often the top-1 slot belongs to the
input's own task (retrieval accuracy) and the confusion of true task x retrieved task.
`--after -1` scores the untrained base model (the b_i of FWT).

Nothing is loaded before tasks 0..i are checked against the current config, data and earlier
tasks, and their files against their DONE (pipeline/state/validity.py): a changed split is never
scored with adapters trained on its test records. A row records its inputs and format; a row
that no longer matches is scored again. Runs under the writer lock of the output folder.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from pipeline import metrics, preflight
from pipeline.data.prepared import load_prepared, read_manifest
from pipeline.errors import StageInputError
from pipeline.methods.base import Predictor
from pipeline.prompts.batching import TokenCaps, collate, encode_prompts_left_padded, tokenize_for_training
from pipeline.runtime.models import base_model, default_device, load_tokenizer
from pipeline.stages import CHECK_HELP
from pipeline.stages.fetch import require_fetched
from pipeline.state import validity
from pipeline.state.artifacts import DONE_FORMAT, atomic_write_json, format_of
from pipeline.state.locks import writer_stage
from pipeline.state.validity import done_tasks, read_row

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig
    from pipeline.experiment import Experiment


@dataclass(frozen=True)
class Args:
    after: int | None = None
    check: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--after", type=int, default=None, metavar="I",
                   help="row of the matrix: scores after training task I; -1 = untrained model "
                        "(default: the last finished task)")
    p.add_argument("--check", action="store_true", help=CHECK_HELP)


def main(experiment: Experiment, args: Args) -> int:
    exp = experiment.single()
    after = args.after
    if args.check:
        last = done_tasks(exp) - 1
        return preflight.check(exp, "eval", after if after is not None else (last if last >= 0 else None))
    if after is None:
        after = done_tasks(exp) - 1
        if after < 0:
            raise StageInputError(f"no task is DONE under {exp.layout.root / 'tasks'}: run `slm train --task 0` "
                                  "first, or `slm eval --after -1` for the untrained model")
    return run(exp, after)


def run(exp: Experiment, after: int) -> int:
    preflight.use_faiss_of(exp)
    require_fetched(exp)  # offline (a job): the models are in the cache, else stop before any work
    with writer_stage(exp.layout):
        return _run(exp, after)


def _run(exp: Experiment, after: int) -> int:
    cfg, layout = exp.cfg, exp.layout
    n_done = done_tasks(exp)
    if after >= n_done:
        raise StageInputError(f"cannot evaluate after task {after}: only {n_done} task(s) are DONE under "
                              f"{layout.root / 'tasks'}; run `slm train --task {n_done}` first")
    if after >= 0 and layout.forgotten(after, cfg.tasks[after].name):
        print(f"eval: task {after} ({cfg.tasks[after].name}) was removed by `slm forget`: no row after it")
        return 0
    validity.require_tasks(exp, after + 1)  # before any adapter or key is loaded
    if after >= 0 and exp.method.learns_keys:
        validity.require_index(exp, after + 1)
    row = _new_row(exp, after)
    kept = _kept_cells(exp, after, read_row(layout, after))
    todo = [name for name in row["tasks"] if name not in kept]
    if not todo:
        print(f"eval: row {after} already done ({layout.eval_row(after)})")
        return 0
    for name in row["tasks"]:
        if name in kept:
            for field in CELL_FIELDS:
                row[field][name] = kept[name][field]
            print(f"eval after {after}: {name:<16} kept (scored before from the same records and model)")
    prepared = load_prepared(cfg, layout)
    labels = {n: t.get("labels") for n, t in read_manifest(layout)["tasks"].items()}
    scorer = Scorer(exp, after)
    for name in todo:
        task = cfg.tasks[cfg.task_index(name)]
        records = [dict(r) for r in scored_split(cfg, prepared, name)][: cfg.eval.max_records_per_task]
        preds, top1 = scorer.predict(cfg.task_index(name), records, labels.get(name))
        # every record's score, in test-split order: a paired comparison of two methods needs them
        scores = metrics.record_scores(task.metric, preds, [metrics.references(r) for r in records], cfg.eval)
        row["record_scores"][name], row["scores"][name] = scores, sum(scores) / len(scores)
        row["metric"][name] = task.metric
        row["n_records"][name] = len(records)
        row["predictions"][name] = preds[:5]
        row["top1"][name] = dict(Counter(top1))
        row["data"][name] = validity.cell_data(exp)[name]
        print(f"eval after {after}: {name:<16} {task.metric:<12} {row['scores'][name]:.3f}")
    row["retrieval"] = _retrieval_summary(exp, after, row, scorer.retrieves)
    atomic_write_json(layout.eval_row(after), row)
    print(f"eval: row {after} -> {layout.eval_row(after)}" + (f" ({len(kept)} cell(s) kept)" if kept else ""))
    from pipeline.tracking import log_eval_row

    log_eval_row(cfg, layout, after, read_row)  # the row and AA / BWT / forgetting so far, to report_to
    return 0


# A row's per-task fields: one cell of the accuracy matrix each, kept as long as the row's model
# and that task's records are the ones it was scored with.
CELL_FIELDS = ("scores", "metric", "n_records", "predictions", "record_scores", "top1", "data")


def _new_row(exp: Experiment, after: int) -> dict:
    return {"after": after, "method": exp.cfg.method, "tasks": validity.scored_tasks(exp), "split": exp.cfg.eval.split,
            **{field: {} for field in CELL_FIELDS}, "format": DONE_FORMAT,
            "inputs": validity.eval_inputs(exp, after), "settings": validity.eval_settings(exp)}


def _kept_cells(exp: Experiment, after: int, old: dict | None) -> dict[str, dict]:
    """The cells of the row on disk that still hold: same code format, same model (row inputs),
    same records of that task. A task appended since, or edited, is scored; the rest is kept."""
    if old is None or format_of(old) != DONE_FORMAT or old.get("inputs") != validity.eval_inputs(exp, after):
        return {}
    current = validity.cell_data(exp)
    return {name: {field: old[field][name] for field in CELL_FIELDS}
            for name, digest in current.items()
            if (old.get("data") or {}).get(name) == digest and all(name in (old.get(f) or {}) for f in CELL_FIELDS)}


def row_is_current(exp: Experiment, after: int) -> bool:
    """Row `after` is on disk and every cell was scored from the current inputs (reads only: the
    ranks of a torchrun `slm run` wait for it while rank 0 evaluates)."""
    if after >= 0 and exp.layout.forgotten(after, exp.cfg.tasks[after].name):
        return True  # no row after a task `slm forget` removed
    row = read_row(exp.layout, after)
    return row is not None and validity.problem_of(lambda: validity.require_row(exp, after, row)) is None


def scored_split(cfg: ExperimentConfig, prepared: Mapping, name: str):
    """Task `name`'s eval.split records (validation: only where data.validation_ratio > 0 carved one)."""
    split = cfg.eval.split
    if split not in prepared[name]:
        raise StageInputError(f"eval.split={split}: the prepared data of {name} has no {split} split "
                              f"(data.validation_ratio is {cfg.data.validation_ratio})",
                              hint="set data.validation_ratio (and data.max_validation) above 0 and rerun `slm "
                                   "prepare`, or score the test split (eval.split=test)")
    return prepared[name][split]


def _retrieval_summary(exp: Experiment, after: int, row: dict, retrieves: bool) -> dict:
    if not retrieves:
        return {"accuracy": None, "per_task": {}, "confusion": None}
    names = row["tasks"]
    confusion = [[row["top1"][true].get(got, 0) for got in names] for true in names]
    # only tasks already in the index can be retrieved correctly
    seen = [i for i, name in enumerate(names) if exp.cfg.task_index(name) <= after]
    per_task = {names[i]: confusion[i][i] / max(1, sum(confusion[i])) for i in seen}
    total = sum(sum(confusion[i]) for i in seen)
    return {"accuracy": sum(confusion[i][i] for i in seen) / max(1, total), "per_task": per_task,
            "confusion": confusion}


class Scorer:
    """The model of one row (the untrained base, or the method's model after task `after`) and
    how to route and score a batch with it."""

    def __init__(self, exp: Experiment, after: int) -> None:
        cfg = exp.cfg
        self.cfg, self.after = cfg, after
        self.device = default_device()
        self.tokenizer = load_tokenizer(cfg.model.name_or_path)
        if after < 0:
            self.predictor = Predictor(base_model(cfg.model, self.device))
        else:
            self.predictor = exp.method.predictor(exp, after, self.device)
        self.model = self.predictor.model.eval()
        # The untrained model routes nothing; a method that retrieves reports how well it did.
        self.retrieves = exp.method.retrieves and after >= 0

    @torch.no_grad()
    def predict(self, j: int, records: list[dict], labels: list[str] | None) -> tuple[list[str], list[str]]:
        """Answers to task j's records, and (methods that retrieve) the task of each one's top-1 slot."""
        bs = self.cfg.eval.batch_size
        preds: list[str] = []
        top1: list[str] = []
        task = self.cfg.tasks[j]
        for i in tqdm(range(0, len(records), bs), desc=f"eval {task.name}", leave=False):
            batch = records[i:i + bs]
            routing = self.predictor.route(batch, j)
            if self.retrieves:
                top1 += self.predictor.top1_tasks(routing)
            with self.predictor.routed(routing):
                if task.metric == "label_choice" and labels:
                    preds += self._choose_label(batch, labels)
                else:
                    preds += self._generate(batch)
        return preds, top1

    def _generate(self, batch: list[dict]) -> list[str]:
        enc = encode_prompts_left_padded(self.tokenizer, self.cfg.model.prompt_format, batch,
                                         TokenCaps.of(self.cfg.model))
        enc = {k: v.to(self.device) for k, v in enc.items()}
        out = self.model.generate(**enc, max_new_tokens=self.cfg.eval.max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        return [s.strip() for s in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def _choose_label(self, batch: list[dict], labels: list[str]) -> list[str]:
        """The label with the highest total log-likelihood after the prompt (one forward pass
        over every record x label pair; rows are record-major so routing repeats per record)."""
        pairs = [dict(r, output=label) for r in batch for label in labels]
        examples = tokenize_for_training(self.tokenizer, self.cfg.model.prompt_format, pairs,
                                         TokenCaps.of(self.cfg.model))
        b = {k: v.to(self.device) for k, v in collate(examples, self.tokenizer.pad_token_id).items()}
        logits = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        target = b["labels"][:, 1:]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, target.clamp_min(0)[..., None])[..., 0]
        total = (logp * (target >= 0)).sum(-1).view(len(batch), len(labels))
        return [labels[i] for i in total.argmax(-1).tolist()]
