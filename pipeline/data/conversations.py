"""Conversations (ShareGPT, OpenAI `messages`) -> unified records whose prompt keeps the history.

A conversation of n turns becomes one record: the last assistant turn is the `output` (what is
learned), the user turn before it the `instruction`, and everything earlier (a system prompt,
earlier user/assistant turns) the record's `history`, which the prompt renders before the last
user turn (with the chat template: `apply_chat_template(history + [user])`). The DTKR query
stays `instruction ### input`, the last user turn.

    sharegpt   {"conversations": [{"from": "system"|"human"|"gpt", "value": "..."}], "system": "..."}
    messages   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}

The column holding the turns can be renamed with `source.fields.messages`. Every problem names
the row (file:line or record) and the turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pipeline.errors import DataError

Turn = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass(frozen=True)
class Style:
    column: str  # the row field that holds the list of turns
    role_key: str
    content_key: str
    roles: dict[str, str]  # the style's role names -> system / user / assistant


STYLES: dict[str, Style] = {
    # ShareGPT as LLaMA-Factory and axolotl read it; "chatgpt"/"bard"/"bing" appear in ShareGPT dumps.
    "sharegpt": Style("conversations", "from", "value",
                      {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                       "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant"}),
    "messages": Style("messages", "role", "content",
                      {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}),
}
CONVERSATION_FORMATS: tuple[str, ...] = tuple(STYLES)


def conversation_record(row: dict[str, Any], where: str, fmt: str, column: str | None = None) -> dict[str, Any]:
    """{instruction, input, output, history} of one conversation row; DataError naming row and turn."""
    style = STYLES[fmt]
    column = column or style.column
    if column not in row:
        raise DataError(f"{where}: missing field {column!r} (source.format {fmt} reads the turns from it); keys "
                        f"present: {sorted(row)}. Name the right column with source.fields.messages")
    raw = row[column]
    if isinstance(raw, str):  # a CSV cell, or a column saved as JSON text
        raw = _json_turns(raw, where, column)
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{where}: field {column!r} must be a non-empty list of turns, got {_show(raw)}")
    turns = [_turn(t, where, f"{column}[{i}]", style, fmt) for i, t in enumerate(raw)]
    if fmt == "sharegpt" and isinstance(row.get("system"), str) and row["system"].strip():
        if turns[0]["role"] == "system":
            raise DataError(f"{where}: two system prompts (field 'system' and {column}[0]); keep one")
        turns.insert(0, {"role": "system", "content": row["system"].strip()})
    _check_order(turns, where, column, row.get("system") is not None and fmt == "sharegpt")
    *history, user, answer = turns
    return {"instruction": user["content"], "input": "", "output": answer["content"],
            "history": json.dumps(history, ensure_ascii=False) if history else ""}


def _json_turns(text: str, where: str, column: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: field {column!r} is text that is not a JSON list of turns ({e.msg})") from None


def _turn(turn: Any, where: str, at: str, style: Style, fmt: str) -> Turn:
    if not isinstance(turn, dict):
        raise DataError(f"{where}: {at} must be an object with {style.role_key!r} and {style.content_key!r}, "
                        f"got {_show(turn)}")
    for key in (style.role_key, style.content_key):
        if key not in turn:
            raise DataError(f"{where}: {at} has no {key!r} (source.format {fmt} turns are "
                            f"{{{style.role_key!r}: ..., {style.content_key!r}: ...}}); keys present: {sorted(turn)}")
    role = style.roles.get(str(turn[style.role_key]).lower())
    if role is None:
        raise DataError(f"{where}: {at}.{style.role_key} is {turn[style.role_key]!r}; source.format {fmt} knows "
                        f"{', '.join(sorted(style.roles))}")
    content = turn[style.content_key]
    if isinstance(content, list):  # OpenAI content parts: [{"type": "text", "text": ...}]
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    if not isinstance(content, str) or not content.strip():
        raise DataError(f"{where}: {at}.{style.content_key} is empty or not text ({_show(content)}); every turn "
                        "needs text")
    return {"role": role, "content": content.strip()}


def _check_order(turns: list[Turn], where: str, column: str, shifted: bool) -> None:
    """[system] then user/assistant alternating, ending with the assistant's answer."""
    first = 1 if turns[0]["role"] == "system" else 0
    offset = 1 if shifted else 0  # the `system` field was put in front: indices in the file are one less
    for i, turn in enumerate(turns[first:], start=first):
        want = "user" if (i - first) % 2 == 0 else "assistant"
        if turn["role"] != want:
            article = "an" if want == "assistant" else "a"
            raise DataError(f"{where}: {column}[{i - offset}] is a {turn['role']} turn where {article} {want} turn "
                            "belongs; a conversation is [system], then user and assistant turns alternating")
    if len(turns) - first < 2 or turns[-1]["role"] != "assistant":
        raise DataError(f"{where}: the conversation must end with an assistant turn after a user turn (the "
                        f"answer that is learned); it has {len(turns) - first} user/assistant turn(s)")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

