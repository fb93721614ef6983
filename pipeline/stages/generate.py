"""`slm generate "prompt"`: answer with retrieval and show which tasks' knowledge was used.

JARe methods answer through the same inference session and decode loop as `slm serve`
(pipeline/serve/): the prompt's retrieved slots on the per-sample side branch, with the gathered
slots cached across decode steps. So `slm generate` and a served request give the same tokens
for the same prompt, by construction. Other methods generate with their one adapter.

Every finished task, and the index, is checked against the current config and its DONE
(pipeline/state/validity.py) before anything is loaded.
"""

from __future__ import annotations

import argparse

import torch

from pipeline import preflight
from pipeline.config import ExperimentConfig
from pipeline.errors import StageInputError
from pipeline.methods import get_method
from pipeline.prompts.batching import TokenCaps, encode_prompts_left_padded
from pipeline.runtime.models import default_device, load_tokenizer
from pipeline.state import validity
from pipeline.state.artifacts import read_done
from pipeline.state.layout import RunLayout
from pipeline.state.orders import single_run
from pipeline.state.validity import done_tasks


def run(cfg: ExperimentConfig, layout: RunLayout, prompt: str, input_text: str = "",
        max_new_tokens: int = 64) -> str:
    n = done_tasks(cfg, layout)
    if n == 0:
        raise StageInputError(f"no task is DONE under {layout.root / 'tasks'}: train first (`slm run`)")
    record = {"instruction": prompt, "input": input_text}
    method = get_method(cfg.method)
    validity.require_tasks(cfg, method, layout, n)
    if method.learns_keys:  # no task id here: retrieve over every finished task
        indexed = len((read_done(layout.index) or {}).get("tasks", []))
        validity.require_index(cfg, layout, max(1, min(n, indexed)))
        return _generate_with_retrieval(cfg, layout, record, max_new_tokens)
    device = default_device()
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    enc = {k: v.to(device) for k, v in
           encode_prompts_left_padded(tokenizer, cfg.model.prompt_format, [record], TokenCaps.of(cfg.model)).items()}
    gen = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    model = method.predictor(cfg, layout, n - 1, device).model
    print(f"method {cfg.method}: {method.infers} (after task {n - 1}, {cfg.tasks[n - 1].name}); no retrieval")
    with torch.no_grad():
        out = model.generate(**enc, **gen)
    answer = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    print(f"answer: {answer}")
    return answer


def _generate_with_retrieval(cfg: ExperimentConfig, layout: RunLayout, record: dict, max_new_tokens: int) -> str:
    from pipeline.serve.decode import generate_one
    from pipeline.serve.session import load_session

    text, retrieval = generate_one(load_session(cfg, layout), record, max_new_tokens)
    print("retrieved slots (task, slot, weight):")
    for r in retrieval:
        print(f"  {r['task']:<16} slot {r['slot']}  weight {r['weight']:.3f}")
    answer = text.strip()
    print(f"answer: {answer}")
    return answer


def main(cfg: ExperimentConfig, layout: RunLayout, args: argparse.Namespace) -> int:
    cfg, layout = single_run(cfg, args)
    preflight.use_faiss_of(cfg)
    run(cfg, layout, args.prompt, args.input, args.max_new_tokens)
    return 0
