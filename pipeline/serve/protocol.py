"""The OpenAI wire format: request validation and response bodies, plus the `slm` extension.

Requests are validated strictly (a string where a number belongs is an error, not coerced) and
every refusal is a RequestError naming the field, which the app turns into an OpenAI-style
`{"error": {...}}` with a 4xx status. Fields OpenAI clients send that do not change a greedy
answer (user, presence_penalty, ...) are accepted and ignored; ones we cannot honour (n > 1,
logprobs, tools) are refused rather than silently dropped.

Both endpoints put the text through the experiment's prompt format, as training did: the slots
were learned on that format. Chat: the last user message is the instruction (earlier turns are
not used: the tasks are single-turn). Completions: `prompt` is the instruction. Extensions, on
either: `input` (the task input, as `slm generate --input`), `task` (answer with that task's slots
only, the oracle) and `ignore_eos` (decode exactly max_tokens, vLLM's name; for benchmarks).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import RequestError
from pipeline.serve.decode import Row, Sampling

UNSUPPORTED = ("logprobs", "top_logprobs", "tools", "functions", "tool_choice", "function_call", "logit_bias",
               "best_of", "echo", "suffix", "response_format")


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens (chat)
    temperature: float | None = Field(None, ge=0, le=2)  # None / 0: greedy (the default here)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)
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
        return Sampling(wanted, self.temperature or 0.0, self.top_p or 1.0, tuple(stops), self.seed, self.ignore_eos)


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)

    def record(self) -> dict:
        users = [m for m in self.messages if m.role == "user"]
        if not users:
            raise RequestError("messages: at least one message with role 'user' is needed", param="messages")
        return {"instruction": users[-1].text(), "input": self.input}


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
    for name in UNSUPPORTED:
        if body.get(name) not in (None, False):
            raise RequestError(f"{name} is not supported by slm serve", param=name)
    try:
        return kind.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise RequestError(f"{where}: {first['msg']}{more}", param=where) from None


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
        """The closing chunk: finish_reason, usage and the retrieval extension."""
        body = self.chunk("")
        body["choices"][0]["finish_reason"] = row.finish_reason
        if self.chat:
            body["choices"][0]["delta"] = {}
        return {**body, "usage": self._usage(row), "slm": slm}
