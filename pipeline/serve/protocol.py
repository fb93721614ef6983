"""The OpenAI wire format: request validation and response bodies, plus the `slm` extension.

Requests are validated strictly, as vLLM's OpenAI server does: a string where a number belongs is
an error (not coerced), and a field this server cannot honour is a 400 that names it, never
silently dropped. Supported: model, messages / prompt, max_tokens / max_completion_tokens,
temperature, top_p, top_k, min_p, presence_penalty, frequency_penalty, repetition_penalty, seed,
stop, n = 1, stream, stream_options.include_usage, user (an end-user id: recorded by no one,
changes nothing, as with OpenAI). Fields clients send with a value that asks for nothing
(`logprobs: false`, `tools: []`, `response_format: {"type": "text"}`, ...) are accepted; the same
fields asking for something are refused by name.

Chat: every message goes through the experiment's prompt format, as training did: with
`prompt_format: chat_template` the prompt is the tokenizer's chat template over the system
prompt, the history and the last user message (a system prompt first, then user and assistant
messages in turn, ending with the user's). The last user message is the instruction DTKR
retrieves with. Completions: `prompt` is the instruction. Extensions, on either: `input` (the
task input, as `slm generate --input`), `task` (answer with that task's slots only, the oracle;
JARe methods) and `ignore_eos` (decode exactly max_tokens, vLLM's name; for benchmarks).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import RequestError
from pipeline.serve.decode import Row
from pipeline.serve.sampling import Sampling

# Fields OpenAI clients may send, and the values of each that ask for nothing this server lacks.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False), "best_of": (None, 1),
    "suffix": (None, ""), "logit_bias": (None, {}), "tools": (None, []), "functions": (None, []),
    "tool_choice": (None, "none"), "function_call": (None, "none"), "parallel_tool_calls": (None, True, False),
    "response_format": (None, {"type": "text"}), "service_tier": (None, "auto", "default"),
    "store": (None, False), "metadata": (None, {}),
}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(_Strict):
    include_usage: bool = False


class _Request(_Strict):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens (chat)
    temperature: float | None = Field(None, ge=0, le=2)  # None / 0: greedy (the default here)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)  # vLLM: 0 or -1 = no cut
    min_p: float | None = Field(None, ge=0, le=1)  # vLLM
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0)  # vLLM / HF: 1 = none
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)
    user: str | None = None
    input: str = ""  # extension: the task input of the instruction
    task: str | None = None  # extension: answer with this task's slots only
    ignore_eos: bool = False  # extension (vLLM's name): always decode max_tokens tokens

    def sampling(self, default_tokens: int, limit: int) -> Sampling:
        wanted = self.max_completion_tokens or self.max_tokens or default_tokens
        if wanted > limit:
            raise RequestError(f"max_tokens is {wanted}; this server allows at most {limit} (serve.max_tokens_limit)",
                               param="max_tokens")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise RequestError("stop: at most 4 non-empty strings", param="stop")
        if self.stream_options is not None and not self.stream:
            raise RequestError("stream_options is only allowed when stream is true", param="stream_options")
        return Sampling(wanted, self.temperature or 0.0, self.top_p or 1.0, tuple(stops), self.seed, self.ignore_eos,
                        top_k=self.top_k or 0, min_p=self.min_p or 0.0, presence_penalty=self.presence_penalty or 0.0,
                        frequency_penalty=self.frequency_penalty or 0.0,
                        repetition_penalty=self.repetition_penalty or 1.0)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)

    def record(self) -> dict:
        """{instruction: the last user message, input, history: the messages before it}."""
        turns = []
        for i, m in enumerate(self.messages):
            if m.role == "tool" or m.content is None:
                raise RequestError(f"messages[{i}]: tool calls and tool messages are not supported by slm serve "
                                   "(every message needs text content)", param=f"messages[{i}]")
            turns.append({"role": ROLES[m.role], "content": m.text()})
        _check_turns(turns)
        *history, last = turns
        return {"instruction": last["content"], "input": self.input, "history": history}


def _check_turns(turns: list[dict]) -> None:
    """A system prompt first (optional), then user and assistant messages in turn, ending with the
    user's: the conversations the prompt formats render, and the ones training data holds."""
    first = 1 if turns[0]["role"] == "system" else 0
    for i in range(first, len(turns)):
        want = "user" if (i - first) % 2 == 0 else "assistant"
        if turns[i]["role"] != want:
            raise RequestError(f"messages[{i}] has role {turns[i]['role']!r} where a {want!r} message belongs: "
                               "a chat is an optional system message, then user and assistant messages in turn, "
                               "ending with a user message", param=f"messages[{i}]")
    if len(turns) == first or turns[-1]["role"] != "user":
        raise RequestError("messages: the last message must have role 'user' (the one to answer)", param="messages")


class CompletionRequest(_Request):
    prompt: str | list[str]

    def record(self) -> dict:
        prompt = self.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise RequestError(f"prompt: one prompt per request (got a list of {len(prompt)})", param="prompt")
            prompt = prompt[0]
        return {"instruction": prompt, "input": self.input}


def parse(kind: type[_Request], body: Any) -> _Request:
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, not {type(body).__name__}")
    body = dict(body)
    for name in [k for k in body if k not in kind.model_fields]:
        if name in NEUTRAL and body[name] in NEUTRAL[name]:
            del body[name]  # asks for nothing (logprobs: false, tools: [])
        elif name in NEUTRAL:
            raise RequestError(f"{name}={body[name]!r} is not supported by slm serve", param=name)
        else:
            raise RequestError(f"unknown field {name!r}: slm serve does not support it (fields: "
                               f"{', '.join(kind.model_fields)})", param=name)
    try:
        return kind.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = _where(first["loc"])
        msg = "not supported by slm serve" if first["type"] == "extra_forbidden" else first["msg"]
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise RequestError(f"{where}: {msg}{more}", param=where) from None


def _where(loc: tuple) -> str:
    """messages.2.name -> messages[2].name"""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


# ---- responses ------------------------------------------------------------------------------


def error_body(e: RequestError) -> dict:
    return {"error": {"message": str(e), "type": e.kind, "param": e.param, "code": None}}


class Reply:
    """The body pieces of one answer, for either endpoint, whole or streamed."""

    def __init__(self, chat: bool, model: str, prompt_tokens: int) -> None:
        self.chat, self.model, self.prompt_tokens = chat, model, prompt_tokens
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def _head(self, chunk: bool) -> dict:
        obj = ("chat.completion" if self.chat else "text_completion") + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def _usage(self, row: Row) -> dict:
        n = len(row.tokens)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": n, "total_tokens": self.prompt_tokens + n}

    def whole(self, row: Row, slm: dict) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": row.text},
                      "finish_reason": row.finish_reason}
        else:
            choice = {"index": 0, "text": row.text, "logprobs": None, "finish_reason": row.finish_reason}
        return {**self._head(False), "choices": [choice], "usage": self._usage(row), "slm": slm}

    def chunk(self, text: str, first: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": text} if first else {"content": text}
            choice = {"index": 0, "delta": delta, "finish_reason": None}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
        return {**self._head(True), "choices": [choice]}

    def last_chunk(self, row: Row, slm: dict) -> dict:
        """The closing chunk: finish_reason and the `slm` extension."""
        body = self.chunk("")
        body["choices"][0]["finish_reason"] = row.finish_reason
        if self.chat:
            body["choices"][0]["delta"] = {}
        return {**body, "slm": slm}

    def usage_chunk(self, row: Row) -> dict:
        """stream_options.include_usage: one more chunk, no choices, the usage of the whole answer."""
        return {**self._head(True), "choices": [], "usage": self._usage(row)}
