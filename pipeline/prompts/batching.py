"""Records -> token ids: prompt masked from the loss, response learned; padding for batches.

`caps` is `model.max_seq_len` (an int: one cap) or a `TokenCaps` with separate prompt and
answer caps; `pipeline.prompts.truncation` holds the rule, shared with prepare's counts.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch

from pipeline.prompts.templates import (
    assistant_spans,
    build_prompt,
    build_response,
    history_turns,
    prompt_add_special_tokens,
    query_text,
)
from pipeline.prompts.truncation import TokenCaps, fit_prompt, kept_positions

IGNORE = -100


def prompts(tokenizer: Any, prompt_format: str, records: list[dict]) -> list[str]:
    return [build_prompt(tokenizer, prompt_format, r["instruction"], r["input"], history_turns(r)) for r in records]


def queries(records: list[dict]) -> list[str]:
    return [query_text(r["instruction"], r["input"]) for r in records]


def tokenize_for_training(tokenizer: Any, prompt_format: str, records: list[dict], caps: int | TokenCaps,
                          all_turns: Collection[str] = ()) -> list[dict[str, list[int]]]:
    """input_ids + labels (prompt tokens = IGNORE). Long examples lose prompt tokens first, so
    the response, the part that is learned, survives truncation (up to its cap).

    Records of the tasks in `all_turns` (`source.train_on: all_turns`) also learn the earlier
    assistant turns of their history, where they stand in the prompt; evaluation scores the final
    answer only and passes none."""
    caps = TokenCaps.coerce(caps)
    add_special = prompt_add_special_tokens(prompt_format)
    prompt_ids = tokenizer(prompts(tokenizer, prompt_format, records), add_special_tokens=add_special)["input_ids"]
    response_ids = tokenizer([build_response(tokenizer, r["output"]) for r in records],
                             add_special_tokens=False)["input_ids"]
    out = []
    for record, p, r in zip(records, prompt_ids, response_ids, strict=True):
        r = r[:caps.answer_cap()]
        history = earlier_turn_labels(tokenizer, prompt_format, record, p) if record.get("task") in all_turns else None
        keep = kept_positions(tokenizer, prompt_format, record, len(p), caps.prompt_cap(len(r)), caps)
        labels = [history[i] for i in keep] if history else [IGNORE] * len(keep)
        out.append({"input_ids": [p[i] for i in keep] + r, "labels": labels + r})
    return out


def earlier_turn_labels(tokenizer: Any, prompt_format: str, record: dict, ids: list[int]) -> list[int] | None:
    """Labels aligned with the prompt `ids`: the tokens of each earlier assistant turn (and its
    end-of-sequence token) learned, every other prompt token IGNORE. None when there is nothing to
    learn there, or the turns cannot be placed (a template that rewrites them, a slow tokenizer)."""
    spans = assistant_spans(tokenizer, prompt_format, record["instruction"], record["input"], history_turns(record))
    if not spans or not getattr(tokenizer, "is_fast", False):
        return None
    text = build_prompt(tokenizer, prompt_format, record["instruction"], record["input"], history_turns(record))
    enc = tokenizer(text, add_special_tokens=prompt_add_special_tokens(prompt_format), return_offsets_mapping=True)
    if enc["input_ids"] != list(ids):
        return None
    return [tok if any(_inside(text, a, b, s, e) for s, e in spans) else IGNORE
            for tok, (a, b) in zip(ids, enc["offset_mapping"], strict=True)]


def _inside(text: str, a: int, b: int, start: int, end: int) -> bool:
    """Token [a, b) belongs to the turn [start, end): it ends inside, and what it holds before the
    turn's start is whitespace only (BPE merges the space before a word into the word's token)."""
    return start < b <= end and not text[a:start].strip()


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a training micro-batch."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def encode_prompts_left_padded(tokenizer: Any, prompt_format: str, records: list[dict],
                               caps: int | TokenCaps) -> dict[str, torch.Tensor]:
    """Left-padded prompts for batched generation / scoring (answers start at the same column),
    cut as training cuts them."""
    caps = TokenCaps.coerce(caps)
    add_special = prompt_add_special_tokens(prompt_format)
    texts = prompts(tokenizer, prompt_format, records)
    ids = [fit_prompt(tokenizer, prompt_format, record, x, caps.prompt_cap(), caps)
           for record, x in zip(records, tokenizer(texts, add_special_tokens=add_special)["input_ids"], strict=True)]
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": mask}
