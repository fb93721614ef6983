"""The worker thread that owns the model: admits concurrent requests into one running batch and decodes it.

The HTTP side (asyncio) submits a `Job` and reads its events from an asyncio queue. This thread
keeps one `DecodeBatch` (pipeline/serve/decode.py) and, between two decode steps, admits the jobs
that are waiting (`serve.batching: continuous`, the default): a new request is prefilled and joins
at the next step, up to `serve.max_batch_size` rows, each routed to its own slots. With
`serve.batching: static` (the server before continuous batching, kept as the benchmark's
baseline) a batch is gathered only when the previous one has finished: the first waiting job, and
whatever arrives within `serve.max_wait_ms`, decoded until all are done. An idle worker also waits
`max_wait_ms` for company before it starts a batch.

Only this thread touches the model, so loading new tasks (every `serve.reload_poll_s`, or when
POST /admin/reload asks) happens when the batch is empty: while a reload is wanted, waiting jobs
are not admitted, the rows in flight finish on the task set they began with, then the reload runs
and the queued requests get the new set.

A job past its deadline, or whose client has gone, is cancelled: it leaves the batch at the next
step. An exception while decoding fails the requests in the batch (HTTP 500 with the message) and
the worker goes on with the next ones.
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
from pipeline.serve.decode import DecodeBatch, Row
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
        batch = DecodeBatch(self.session)
        try:
            while not self._stop.is_set():
                jobs = self._next_jobs(batch)
                if not batch:
                    self._reload_if_due()
                    batch = DecodeBatch(self.session)  # after a reload the model may be another object
                live = [j for j in jobs if not self._refuse_cancelled(j)]
                if live:
                    self._admit(batch, live)
                if batch:
                    self._step(batch)
        finally:
            batch.close()

    def _next_jobs(self, batch: DecodeBatch) -> list[Job]:
        """The jobs to admit now: none while a reload waits for the batch to drain or a static batch
        runs; a gathered batch when idle; whatever is waiting (up to the free rows) otherwise."""
        if not batch:
            return self._gather()
        if self.spec.batching == "static" or self._reload_wanted():
            return []
        jobs = []
        while len(batch) + len(jobs) < self.spec.max_batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _WAKE:
                jobs.append(item)
        return jobs

    def _reload_wanted(self) -> bool:
        with self._lock:
            asked = bool(self._reloads)
        return asked or (self.spec.reload_poll_s > 0 and time.monotonic() >= self._next_poll)

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

    def _admit(self, batch: DecodeBatch, jobs: list[Job]) -> None:
        """Route and prefill `jobs` into the running batch; a failure fails these jobs only."""
        self.batches += 1
        try:
            routed = self.session.route([j.record for j in jobs], [j.task for j in jobs])
            for job, retrieval in zip(jobs, routed.retrieval, strict=True):
                job.retrieval = retrieval
                job.row.on_finish = lambda row, job=job: _answer(job)
                job.row.on_error = lambda error, job=job: job.post("error", error)
            batch.admit([j.row for j in jobs], routed.routing)
        except Exception as e:
            log.exception("serve: %d request(s) could not join the batch", len(jobs))
            for job in jobs:
                if job.row.finish_reason is None:
                    job.post("error", e)
        self.largest_batch = max(self.largest_batch, len(batch))

    def _step(self, batch: DecodeBatch) -> None:
        try:
            batch.step()
        except Exception as e:
            log.exception("serve: a decode step of %d request(s) failed", len(batch))
            batch.fail(e)


def _answer(job: Job) -> None:
    """A row just finished: its answer (or its timeout) goes out now, not when the batch ends."""
    if job.row.finish_reason == "cancelled":
        job.post("error", job.timeout_error())
    else:
        job.post("done", job.row)

