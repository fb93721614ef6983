"""`slm generate "prompt"`: answer with retrieval and show which tasks' knowledge was used.

One prompt shares one weighting, so the retrieved slots are merged into W for generation
(re-parameterisation: no side branch per token) and removed afterwards.
"""

from __future__ import annotations

import argparse

import torch

from pipeline.adapters import JARE_METHODS, jare_model, lora_model
from pipeline.batching import encode_prompts_left_padded, queries
from pipeline.config import ExperimentConfig
from pipeline.errors import StageInputError
from pipeline.layout import RunLayout
from pipeline.models import default_device, load_tokenizer
from pipeline.stages.index import done_tasks, load_store


def run(cfg: ExperimentConfig, layout: RunLayout, prompt: str, input_text: str = "",
        max_new_tokens: int = 64) -> str:
    n = done_tasks(cfg, layout)
    if n == 0:
        raise StageInputError(f"no task is DONE under {layout.root / 'tasks'}: train first (`slm run`)")
    device = default_device()
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    record = {"instruction": prompt, "input": input_text}
    enc = {k: v.to(device) for k, v in
           encode_prompts_left_padded(tokenizer, cfg.model.prompt_format, [record], cfg.model.max_seq_len).items()}
    gen = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    if cfg.method in JARE_METHODS:
        from pipeline.dtkr.encoder import SentenceEncoder

        model, bank = jare_model(cfg, layout, n, device)
        store = load_store(cfg, layout, n)
        emb = SentenceEncoder(cfg.dtkr.encoder, device).encode(queries([record]))
        routing = store.route(emb, cfg.jare.top_k, cfg.dtkr.weighting, cfg.dtkr.temperature,
                              [t.name for t in cfg.tasks[:n]])
        print("retrieved slots (task, slot, weight):")
        for slot, w in zip(routing.slot_ids[0].tolist(), routing.weights[0].tolist(), strict=True):
            print(f"  {store.task_of(slot):<16} slot {slot % cfg.jare.slots_per_task}  weight {w:.3f}")
        with torch.no_grad(), bank.merged(routing.slot_ids[0], routing.weights[0]):
            out = model.generate(**enc, **gen)
    else:
        model = lora_model(cfg, layout, n - 1, device)
        print(f"method {cfg.method}: one LoRA after task {n - 1} ({cfg.tasks[n - 1].name}); no retrieval")
        with torch.no_grad():
            out = model.generate(**enc, **gen)
    answer = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    print(f"answer: {answer}")
    return answer


def main(cfg: ExperimentConfig, layout: RunLayout, args: argparse.Namespace) -> int:
    run(cfg, layout, args.prompt, args.input, args.max_new_tokens)
    return 0
