"""Alpaca-style instruction data (tatsu-lab/stanford_alpaca, Code Alpaca, GenMedGPT and most
instruction sets since): a JSON list (or JSONL) of `{"instruction", "input", "output"}`, with
LLaMA-Factory's optional `system` (a system prompt) and `history` (earlier turns as
`[[user, assistant], ...]`) columns.

`system` and `history` are not dropped: they become the example's history, the turns before the
instruction, in the shape pipeline.data.conversations gives a conversation (a JSON list of
`{"role", "content"}`), so the prompt shows them before the instruction as a chat would.

Records with an empty `output` are skipped and counted (Code Alpaca 2k ships two: a record that
teaches an empty answer teaches the model to stop); any other malformed record is an error naming
its file, index and field. There is no test split: a seeded one is cut (or name a test file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_prep.common import DataPrepError, Example, Source, json_objects, text_field

FORMAT = "alpaca"
ROLES = ("system", "user", "assistant")


def read(path: Path, test_split: Path | None = None, fmt: str = FORMAT) -> Source:
    train, skipped = examples(path, fmt)
    test = None
    if test_split is not None:
        test, more = examples(test_split, fmt)
        skipped += more
    return Source(str(path), train, test, None, {"empty output": skipped})


def examples(path: Path, fmt: str = FORMAT) -> tuple[list[Example], int]:
    """The file's examples and how many records were skipped for an empty output."""
    out, empty = [], 0
    for row, where in json_objects(path):
        instruction = text_field(row, "instruction", where, fmt)
        if not instruction:
            raise DataPrepError(f"{where}: field 'instruction' is empty; an {fmt} record needs the task's "
                                "instruction (the `input` is optional)")
        output = text_field(row, "output", where, fmt)
        if not output:
            empty += 1
            continue
        history = history_json(row.get("history"), row.get("system"), where)
        out.append(Example(instruction, text_field(row, "input", where, fmt, required=False), output, where,
                           history=history))
    return out, empty


def history_json(history: Any, system: Any, where: str) -> str:
    """`system` + `history` as JSON text of [{"role", "content"}] turns; "" when there are none.

    `history` may be LLaMA-Factory's `[[user, assistant], ...]`, a list of `{"role", "content"}`
    turns, or that list as JSON text (what `python -m data_prep` writes and the pipeline stores).
    """
    if isinstance(history, str):
        text = history.strip()
        try:
            history = json.loads(text) if text else []
        except json.JSONDecodeError as e:
            raise DataPrepError(f"{where}: field 'history' is text that is not JSON ({e.msg}); give a list of "
                                "[user, assistant] pairs") from None
    if history is not None and not isinstance(history, list):
        raise DataPrepError(f"{where}: field 'history' must be a list of [user, assistant] pairs, got "
                            f"{type(history).__name__}")
    turns = [_turn(t, where, i) for i, pair in enumerate(history or []) for t in _pair(pair, where, i)]
    if system is not None and not isinstance(system, str):
        raise DataPrepError(f"{where}: field 'system' must be text, got {type(system).__name__}")
    if system and system.strip():
        if turns and turns[0]["role"] == "system":
            raise DataPrepError(f"{where}: two system prompts (field 'system' and history[0]); keep one")
        turns.insert(0, {"role": "system", "content": system.strip()})
    _check_order(turns, where)
    return json.dumps(turns, ensure_ascii=False) if turns else ""


def _pair(pair: Any, where: str, i: int) -> list[Any]:
    if isinstance(pair, dict):
        return [pair]  # already one {"role", "content"} turn
    if isinstance(pair, list | tuple) and len(pair) == 2:
        return [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    raise DataPrepError(f"{where}: history[{i}] must be a [user, assistant] pair or a {{'role', 'content'}} turn, "
                        f"got {pair!r:.60}")


def _turn(turn: dict, where: str, i: int) -> dict[str, str]:
    role, content = turn.get("role"), turn.get("content")
    if role in ROLES and isinstance(content, str) and not content.strip():
        raise DataPrepError(f"{where}: history[{i}] has an empty {'answer' if role == 'assistant' else role + ' turn'}")
    if role not in ROLES or not isinstance(content, str) or not content.strip():
        raise DataPrepError(f"{where}: history[{i}] needs a role ({', '.join(ROLES)}) and non-empty text, got "
                            f"{turn!r:.60}")
    return {"role": role, "content": content.strip()}


def _check_order(turns: list[dict[str, str]], where: str) -> None:
    """[system], then user and assistant alternating, ending with an assistant turn (the
    instruction is the next user turn)."""
    first = 1 if turns and turns[0]["role"] == "system" else 0
    for i, turn in enumerate(turns[first:], start=first):
        want = "user" if (i - first) % 2 == 0 else "assistant"
        if turn["role"] != want:
            raise DataPrepError(f"{where}: history turn {i} is a {turn['role']} turn where a {want} turn belongs; "
                                "the history is [system], then user and assistant turns alternating")
    if (len(turns) - first) % 2:
        raise DataPrepError(f"{where}: the history ends with a user turn; it must end with the assistant's answer "
                            "(the instruction is the next user turn)")
