"""`slm generate "prompt"`: answer with retrieval and show which tasks' knowledge was used.

Methods with slots (slm, oracle_task_id) answer through the same inference session and decode
loop as `slm serve` (pipeline/serve/): the prompt's retrieved slots (or, with --task, that task's
slots) on the per-sample side branch, with the gathered slots cached across decode steps. So
`slm generate` and a served request give the same tokens for the same prompt, by construction.
Other methods generate with their one adapter.

Every finished task, and the index, is checked against the current config and its DONE
(pipeline/state/validity.py) before anything is loaded.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pipeline import preflight
from pipeline.errors import StageInputError
from pipeline.prompts.batching import TokenCaps, encode_prompts_left_padded
from pipeline.runtime.models import default_device, load_tokenizer
from pipeline.state import validity
from pipeline.state.artifacts import read_done
from pipeline.state.validity import done_tasks

if TYPE_CHECKING:
    from pipeline.experiment import Experiment


@dataclass(frozen=True)
class Args:
    prompt: str
    input: str = ""
    max_new_tokens: int = 64
    task: str | None = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="the instruction / question to answer (before any KEY=VALUE)")
    p.add_argument("--input", default="", help="optional input text for the instruction")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--task", default=None, metavar="NAME",
                   help="answer with this task's slots only, no retrieval (methods with slots; oracle_task_id needs "
                        "it: it routes by the true task)")


def main(experiment: Experiment, args: Args) -> int:
    exp = experiment.single()
    preflight.use_faiss_of(exp)
    run(exp, args.prompt, args.input, args.max_new_tokens, args.task)
    return 0


def run(exp: Experiment, prompt: str, input_text: str = "", max_new_tokens: int = 64, task: str | None = None) -> str:
    cfg, layout, method = exp.cfg, exp.layout, exp.method
    n = done_tasks(exp)
    if n == 0:
        raise StageInputError(f"no task is DONE under {layout.root / 'tasks'}: train first (`slm run`)")
    record = {"instruction": prompt, "input": input_text}
    validity.require_tasks(exp, n)
    if method.has_slots:  # retrieve over every finished task, or answer with the task named
        indexed = len((read_done(layout.index) or {}).get("tasks", []))
        validity.require_index(exp, max(1, min(n, indexed)))
        return _generate_with_slots(exp, record, max_new_tokens, task)
    if task is not None:
        raise StageInputError(f"--task {task}: method {cfg.method} answers every prompt with one model; it has no "
                              "per-task slots to choose", hint="leave --task out")
    device = default_device()
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    enc = {k: v.to(device) for k, v in
           encode_prompts_left_padded(tokenizer, cfg.model.prompt_format, [record], TokenCaps.of(cfg.model)).items()}
    gen = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    model = method.predictor(exp, n - 1, device).model
    print(f"method {cfg.method}: {method.infers} (after task {n - 1}, {cfg.tasks[n - 1].name}); no retrieval")
    with torch.no_grad():
        out = model.generate(**enc, **gen)
    answer = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    print(f"answer: {answer}")
    return answer


def _generate_with_slots(exp: Experiment, record: dict, max_new_tokens: int, task: str | None) -> str:
    from pipeline.serve.decode import generate_one
    from pipeline.serve.session import load_session

    session = load_session(exp)
    session.check_task(task)
    text, retrieval = generate_one(session, record, max_new_tokens, task)
    print("retrieved slots" if task is None else f"the slots of task {task}", "(task, slot, weight):")
    for r in retrieval:
        print(f"  {r['task']:<16} slot {r['slot']}  weight {r['weight']:.3f}")
    answer = text.strip()
    print(f"answer: {answer}")
    return answer
