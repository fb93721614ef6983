"""The FastAPI app of `slm serve`: OpenAI routes, SSE streaming, and 4xx for every bad request.

Bodies are read and parsed here rather than by FastAPI's automatic validation, so the size cap
(413), a non-JSON body (400) and a wrong field (400, naming it) all get an OpenAI-style error
body instead of FastAPI's 422 list. With an API key, every /v1 and /admin route needs
`Authorization: Bearer <key>` (401 otherwise, as vLLM's `--api-key`); /health stays open for
load balancers. Anything unexpected is logged and answered with a 500 that says so; the worker
thread keeps serving either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from pipeline.config import ServeSpec
from pipeline.errors import RequestError
from pipeline.serve import LOOPBACK_HOSTS
from pipeline.serve.batcher import Batcher, Job
from pipeline.serve.decode import Row
from pipeline.serve.protocol import ChatRequest, CompletionRequest, Reply, error_body, parse
from pipeline.serve.session import InferenceSession

log = logging.getLogger("slm.serve")
LOOPBACK = {*LOOPBACK_HOSTS, "testclient"}  # starlette's TestClient connects as "testclient"
POLL_S = 0.5  # how often a waiting request looks whether its client is still there


def create_app(session: InferenceSession, spec: ServeSpec) -> FastAPI:
    batcher = Batcher(session, spec)
    model_name = spec.model_name or session.cfg.name
    started = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title="slm serve", lifespan=lifespan)
    app.state.batcher, app.state.session = batcher, session

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError) -> JSONResponse:
        return JSONResponse(error_body(e), status_code=e.status)

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if spec.api_key and request.url.path.startswith(PROTECTED) and not _authorized(request, spec.api_key):
            err = RequestError("missing or wrong API key: send the header `Authorization: Bearer <key>` (the "
                               "openai client's api_key)", status=401, kind="authentication_error")
            return JSONResponse(error_body(err), status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception) -> JSONResponse:
        log.exception("serve: %s %s failed", request.method, request.url.path)
        err = RequestError(f"internal error: {type(e).__name__}: {e}", status=500, kind="server_error")
        return JSONResponse(error_body(err), status_code=500)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "tasks": session.tasks, "queued": batcher.queued(), "batches": batcher.batches}

    @app.get("/v1/models")
    async def models() -> dict:
        info = {"method": session.cfg.method, "tasks": session.tasks, "rejected": dict(session.rejected),
                "retrieval": session.retrieves, "merged_task": session.merged_task}
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": started,
                                            "owned_by": "slm", "slm": info}]}

    @app.post("/admin/reload")
    async def reload(request: Request) -> dict:
        host = request.client.host if request.client else ""
        if host not in LOOPBACK:
            raise RequestError(f"/admin/reload is for loopback clients only (this one is {host})", status=403,
                               kind="permission_error")
        update = await asyncio.wrap_future(batcher.request_reload())
        return {"added": update.added, "rejected": update.rejected, "tasks": session.tasks}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await _complete(request, ChatRequest, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _complete(request, CompletionRequest, chat=False)

    async def _complete(request: Request, kind: type, chat: bool):
        req = parse(kind, await read_json(request, spec.max_body_bytes))
        if req.model != model_name:
            raise RequestError(f"model {req.model!r} is not served here; this server serves {model_name!r}",
                               status=404, kind="not_found_error", param="model")
        record = req.record()
        session.check_task(req.task)
        sampling = req.sampling(spec.max_tokens, spec.max_tokens_limit)
        ids = session.encode(record)
        job = Job(record, req.task, Row(ids, sampling), asyncio.get_running_loop(), spec.request_timeout_s)
        reply = Reply(chat, model_name, len(ids))
        extension = (lambda: _extension(job)) if session.has_slots else (lambda: {"method": session.cfg.method})
        if req.stream:
            job.row.emit = lambda text: job.post("text", text)
            batcher.submit(job)
            return StreamingResponse(_stream(job, reply, extension, req.include_usage),
                                     media_type="text/event-stream")
        batcher.submit(job)
        row = await _wait(request, job)
        return reply.whole(row, extension())

    return app


async def read_json(request: Request, limit: int):
    """The body as JSON, refusing bodies over `limit` bytes before reading them whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"the request body is {declared} bytes; the limit is {limit} (serve.max_body_bytes)",
                           status=413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(f"the request body exceeds {limit} bytes (serve.max_body_bytes)", status=413)
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"the request body is not valid JSON: {e}") from None


PROTECTED = ("/v1", "/admin")


def _authorized(request: Request, key: str) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


def _extension(job: Job) -> dict:
    """The `slm` field of an answer of a retrieving method: the slots it used, and a forced task."""
    return {"retrieval": job.retrieval, "task": job.task}


async def _next_event(request: Request | None, job: Job) -> tuple[str, object]:
    """The job's next event. Past its deadline: a timeout error (the worker frees the row at its
    next step). Its client gone: the job is cancelled."""
    while True:
        try:
            return await asyncio.wait_for(job.events.get(), timeout=POLL_S)
        except TimeoutError:
            if job.timed_out():
                job.cancel()
                return "error", job.timeout_error()
            if request is not None and await request.is_disconnected():
                job.cancel()
                return "error", RequestError("the client disconnected", status=499, kind="cancelled")


async def _wait(request: Request, job: Job) -> Row:
    kind, value = await _next_event(request, job)
    while kind == "text":  # not streaming: no text events, but be safe
        kind, value = await _next_event(request, job)
    if kind == "done":
        return value
    job.cancel()
    if isinstance(value, RequestError):
        raise value
    raise RequestError(f"generation failed: {type(value).__name__}: {value}", status=500, kind="server_error")


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"


async def _stream(job: Job, reply: Reply, extension, include_usage: bool) -> AsyncIterator[str]:
    """SSE chunks as the worker produces text; the last one carries finish_reason and `slm`, then
    (stream_options.include_usage) one with the usage and no choices, as OpenAI and vLLM send it.
    Starlette cancels this generator when the client goes away: the job is cancelled with it."""
    try:
        yield _sse(reply.chunk("", first=True))
        while True:
            kind, value = await _next_event(None, job)
            if kind == "text":
                yield _sse(reply.chunk(value))
                continue
            if kind == "done":
                yield _sse(reply.last_chunk(value, extension()))
                if include_usage:
                    yield _sse(reply.usage_chunk(value))
            else:
                err = value if isinstance(value, RequestError) else RequestError(
                    f"generation failed: {type(value).__name__}: {value}", status=500, kind="server_error")
                yield _sse(error_body(err))
            break
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # a no-op after "done"; frees the row when the client left mid-stream
