"""Prompt texts: the DTKR query and the model prompt/response of one record.

Pure string functions. Training and evaluation tokenize the prompt and the response
separately and mask the prompt from the loss, so the prompt ends exactly where the answer
starts and the response carries the end-of-sequence text that teaches the model to stop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pipeline.errors import ConfigError

PROMPT_FORMATS: tuple[str, ...] = ("llama2_chat", "chat_template", "plain")
QUERY_SEPARATOR = " ### "


def query_text(instruction: str, input: str) -> str:
    """The text DTKR embeds to retrieve slots (the paper's `instruction ### input`)."""
    return instruction + QUERY_SEPARATOR + input


def user_message(instruction: str, input: str) -> str:
    """Instruction and input as one user turn; no blank tail when the input is empty."""
    return f"{instruction}\n\n{input}" if input else instruction


Turn = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


def history_turns(record: dict[str, Any]) -> list[Turn]:
    """The turns before a record's instruction (pipeline.data.conversations); stored on disk as JSON
    text, "" or absent for single-turn records."""
    history = record.get("history")
    if not history:
        return []
    return json.loads(history) if isinstance(history, str) else list(history)


def build_prompt(tokenizer: Any, prompt_format: str, instruction: str, input: str,
                 history: Sequence[Turn] = ()) -> str:
    """The full prompt text, up to where the answer starts. `history`: earlier turns of a
    conversation (a system prompt, user/assistant turns), rendered before the instruction.

    llama2_chat follows the SLM reference code: the instruction is the <<SYS>> block and the
    input the user turn (no system block when there is no input). No "<s>": the Llama tokenizer
    adds BOS itself. No trailing space after [/INST]: sentencepiece gives the answer's first
    word its own leading-space piece when the response is tokenized on its own.
    """
    if prompt_format == "llama2_chat":
        if history:
            return _llama2_conversation(history, user_message(instruction, input))
        if not input:
            return f"[INST] {instruction.strip()} [/INST]"
        return f"[INST] <<SYS>>\n{instruction.strip()}\n<</SYS>>\n\n{input.strip()} [/INST]"
    if prompt_format == "chat_template":
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"model.prompt_format is chat_template but the tokenizer "
                              f"{getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; "
                              f"use prompt_format llama2_chat or plain")
        messages = [*history, {"role": "user", "content": user_message(instruction, input)}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if prompt_format == "plain":
        turns = "".join(f"### {PLAIN_ROLES[t['role']]}:\n{t['content']}\n\n" for t in history)
        block = f"### Input:\n{input}\n\n" if input else ""
        return f"{turns}### Instruction:\n{instruction}\n\n{block}### Response:\n"
    raise ConfigError(f"unknown prompt_format {prompt_format!r}; valid: {', '.join(PROMPT_FORMATS)}")


def _llama2_conversation(history: Sequence[Turn], last_user: str) -> str:
    """Llama-2-chat's multi-turn layout: the system prompt inside the first [INST], each answered
    turn closed by </s><s> (as Meta's chat_completion formats a dialog)."""
    system = history[0]["content"].strip() if history and history[0]["role"] == "system" else None
    turns = [t["content"].strip() for t in history[1 if system is not None else 0:]]
    users, answers = turns[0::2] + [last_user.strip()], turns[1::2]
    if system is not None:
        users[0] = f"<<SYS>>\n{system}\n<</SYS>>\n\n{users[0]}"
    done = "".join(f"[INST] {u} [/INST] {a} </s><s>" for u, a in zip(users, answers, strict=False))
    return f"{done}[INST] {users[-1]} [/INST]"


# Stands in for the cuttable text while the prompt is rendered, to find where that text sits.
_SENTINEL = "\u241fSLM-CUT\u241f"


def prompt_parts(tokenizer: Any, prompt_format: str, instruction: str, input: str,
                 history: Sequence[Turn] = ()) -> tuple[str, str, str]:
    """(head, body, tail) with head + body + tail == build_prompt(...): body is what a too-long
    prompt may lose (the input; the instruction when there is no input), head and tail are the
    instruction header and the text where the answer starts.

    Found by rendering the prompt with a sentinel in the body's place, so it holds for every
    format, the tokenizer's chat template included. A template that changes the body's text
    (escaping, say) gives ("", prompt, ""): the caller then cuts the middle of the whole prompt.
    """
    prompt = build_prompt(tokenizer, prompt_format, instruction, input, history)
    if input:
        marked = build_prompt(tokenizer, prompt_format, instruction, _SENTINEL, history)
    else:
        marked = build_prompt(tokenizer, prompt_format, _SENTINEL, input, history)
    head, found, tail = marked.partition(_SENTINEL)
    fits = found and _SENTINEL not in tail and len(head) + len(tail) <= len(prompt)
    if not (fits and prompt.startswith(head) and prompt.endswith(tail)):
        return "", prompt, ""
    return head, prompt[len(head):len(prompt) - len(tail)], tail


def _turn_sentinel(i: int) -> str:
    return f"\u241fSLM-TURN-{i}\u241f"


def assistant_spans(tokenizer: Any, prompt_format: str, instruction: str, input: str,
                    history: Sequence[Turn] = ()) -> list[tuple[int, int]] | None:
    """Character spans [start, end) of the earlier assistant turns inside build_prompt(...): each
    turn's text plus the end-of-sequence text the format writes right after it (a chat template's
    `<|im_end|>`, Llama-2's ` </s>`), so a supervised turn also learns to stop. What
    `source.train_on: all_turns` trains besides the answer.

    Found like `prompt_parts`: every assistant turn rendered as a sentinel, then each sentinel's
    place in the real prompt. None when the format changes a turn's text (a template that drops or
    rewrites earlier answers): then only the final answer can be trained.
    """
    turns = [i for i, turn in enumerate(history) if turn["role"] == "assistant"]
    if not turns:
        return []
    prompt = build_prompt(tokenizer, prompt_format, instruction, input, history)
    marked = [{**turn, "content": _turn_sentinel(i)} if i in turns else turn for i, turn in enumerate(history)]
    text = build_prompt(tokenizer, prompt_format, instruction, input, marked)
    rebuilt, spans, cursor = [], [], 0
    for i in turns:
        at = text.find(_turn_sentinel(i), cursor)
        if at < 0:
            return None
        rebuilt.append(text[cursor:at])
        start = sum(map(len, rebuilt))
        rebuilt.append(history[i]["content"])
        spans.append((start, start + len(history[i]["content"])))
        cursor = at + len(_turn_sentinel(i))
    rebuilt.append(text[cursor:])
    if "".join(rebuilt) != prompt:
        return None
    eos = getattr(tokenizer, "eos_token", None) or ""
    return [(s, _after_eos(prompt, e, eos)) for s, e in spans]


def _after_eos(prompt: str, end: int, eos: str) -> int:
    """`end` moved past the EOS text that follows it (after spaces only), if one does."""
    gap = len(prompt[end:]) - len(prompt[end:].lstrip(" "))
    return end + gap + len(eos) if eos and prompt.startswith(eos, end + gap) else end


def build_response(tokenizer: Any, output: str) -> str:
    """The answer text the model learns: the output followed by the EOS token's text."""
    return output + (getattr(tokenizer, "eos_token", None) or "")


def prompt_add_special_tokens(prompt_format: str) -> bool:
    """Whether to tokenize the prompt with `add_special_tokens=True`.

    A chat template renders its own BOS/role tokens as text, so adding them again would double
    them; the other formats rely on the tokenizer for BOS. Responses never add special tokens.
    """
    return prompt_format != "chat_template"
