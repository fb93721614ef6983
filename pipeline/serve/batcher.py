"""The worker thread that owns the model: gathers concurrent requests into batches and decodes them.

The HTTP side (asyncio) submits a `Job` and reads its events from an asyncio queue; this thread
takes the first waiting job, waits at most `serve.max_wait_ms` for more (up to
`serve.max_batch_size`), routes each row to its own slots and decodes the batch in one loop.
Only this thread touches the model, so loading new tasks (every `serve.reload_poll_s`, or when
POST /admin/reload asks) happens between batches: a batch in flight finishes on the task set it
began with, and requests still queued get the new one.

A job past its deadline, or whose client has gone, is cancelled: it leaves the batch at the next
step. An exception while decoding fails that batch's requests (HTTP 500 with the message) and the
worker goes on with the next batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from pipeline.config import ServeSpec
from pipeline.errors import RequestError
from pipeline.serve.decode import Row, decode
from pipeline.serve.session import InferenceSession, TaskUpdate

log = logging.getLogger("slm.serve")
_WAKE = object()  # queued to wake the worker for a reload


@dataclass
class Job:
    """One request in flight. Events put on `events`: ("text", str), ("done", Row), ("error", exc)."""

    record: dict
    task: str | None
    row: Row
    loop: asyncio.AbstractEventLoop
    timeout_s: float
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    retrieval: list[dict] = field(default_factory=list)
    _cancel: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.timeout_s
        self.row.cancelled = self.is_cancelled

    def cancel(self) -> None:
        """Stop this job (its client left, or it failed): the worker drops it at its next step."""
        self._cancel.set()

    def is_cancelled(self) -> bool:
        return self._cancel.is_set() or self.timed_out()

    def timed_out(self) -> bool:
        return time.monotonic() > self.deadline

    def timeout_error(self) -> RequestError:
        return RequestError(f"the request took longer than serve.request_timeout_s={self.timeout_s:g} s and was "
                            "cancelled", status=408, kind="timeout")

    def post(self, kind: str, value) -> None:
        """Hand an event to the request's coroutine, from the worker thread."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: the server is stopping
            pass


class Batcher:
    def __init__(self, session: InferenceSession, spec: ServeSpec) -> None:
        self.session, self.spec = session, spec
        self._queue: queue.Queue = queue.Queue()
        self._reloads: list[concurrent.futures.Future] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slm-serve-batcher", daemon=True)
        self._next_poll = time.monotonic() + spec.reload_poll_s
        self.batches = 0  # decoded so far (tests and /health)
        self.largest_batch = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(_WAKE)
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def queued(self) -> int:
        return self._queue.qsize()

    def request_reload(self) -> concurrent.futures.Future:
        """A future of the TaskUpdate the worker makes before its next batch."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._reloads.append(future)
        self._queue.put(_WAKE)
        return future

    # ---- worker thread ------------------------------------------------------------------------
    def _run(self) -> None:
        if self.spec.threads is not None:
            import torch

            torch.set_num_threads(self.spec.threads)
        while not self._stop.is_set():
            jobs = self._gather()
            self._reload_if_due()
            live = [j for j in jobs if not self._refuse_cancelled(j)]
            if live:
                self._serve(live)

    def _gather(self) -> list[Job]:
        poll = self.spec.reload_poll_s
        timeout = max(0.0, self._next_poll - time.monotonic()) if poll > 0 else None
        try:
            first = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        jobs = [] if first is _WAKE else [first]
        end = time.monotonic() + self.spec.max_wait_ms / 1000
        while jobs and len(jobs) < self.spec.max_batch_size:
            try:
                item = self._queue.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                break
            if item is not _WAKE:
                jobs.append(item)
        return jobs

    def _reload_if_due(self) -> None:
        with self._lock:
            waiting, self._reloads = self._reloads, []
        due = self.spec.reload_poll_s > 0 and time.monotonic() >= self._next_poll
        if not waiting and not due:
            return
        try:
            update = self.session.refresh()
        except Exception as e:  # never let a broken task folder stop the server
            log.exception("serve: reload failed")
            update = TaskUpdate(rejected={"?": f"reload failed: {e}"})
        self._next_poll = time.monotonic() + self.spec.reload_poll_s
        for future in waiting:
            future.set_result(update)

    def _refuse_cancelled(self, job: Job) -> bool:
        if not job.is_cancelled():
            return False
        job.post("error", job.timeout_error())
        return True

    def _serve(self, jobs: list[Job]) -> None:
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(jobs))
        try:
            routed = self.session.route([j.record for j in jobs], [j.task for j in jobs])
            for job, retrieval in zip(jobs, routed.retrieval, strict=True):
                job.retrieval = retrieval
                job.row.on_finish = lambda row, job=job: _answer(job)
            decode(self.session, [j.row for j in jobs], routed.routing)
        except Exception as e:
            log.exception("serve: a batch of %d request(s) failed", len(jobs))
            for job in jobs:
                if job.row.finish_reason is None:
                    job.post("error", e)


def _answer(job: Job) -> None:
    """A row just finished: its answer (or its timeout) goes out now, not when the batch ends."""
    if job.row.finish_reason == "cancelled":
        job.post("error", job.timeout_error())
    else:
        job.post("done", job.row)

