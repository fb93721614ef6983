"""`slm serve`: the finished tasks behind an OpenAI-compatible HTTP API (see pipeline/serve/, docs/serve.md).

Loads the model once (JARe methods: every DONE, indexed task's slots and keys; the others: their
model after the last finished task), then serves until stopped: retrieval per request (JARe),
continuous batching, tasks finished later loaded when the batch is empty. An API key (--api-key,
$SLM_API_KEY or serve.api_key) makes every /v1 route answer 401 without it.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline import preflight
from pipeline.config import ServeSpec
from pipeline.serve import LOOPBACK_HOSTS

if TYPE_CHECKING:
    from pipeline.experiment import Experiment

API_KEY_ENV = "SLM_API_KEY"


@dataclass(frozen=True)
class Args:
    host: str | None = None
    port: int | None = None
    api_key: str | None = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="address to listen on (default: serve.host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: serve.port, 8000; 0: any free)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help=f"clients must send `Authorization: Bearer KEY` (default: ${API_KEY_ENV}, else serve.api_key; "
                        "none: no check)")


def main(experiment: Experiment, args: Args) -> int:
    exp = experiment.single()
    preflight.use_faiss_of(exp)
    return run(exp, serve_spec(exp.cfg.serve, args))


def serve_spec(spec: ServeSpec, args: Args) -> ServeSpec:
    """`serve:` of the config with --host / --port applied, and the API key from --api-key, else
    $SLM_API_KEY, else serve.api_key."""
    key = args.api_key or os.environ.get(API_KEY_ENV) or spec.api_key
    changes = {k: v for k, v in (("host", args.host), ("port", args.port), ("api_key", key)) if v is not None}
    return spec.model_copy(update=changes)


def run(exp: Experiment, spec: ServeSpec) -> int:
    import uvicorn

    from pipeline.serve.app import create_app
    from pipeline.serve.session import load_session

    cfg = exp.cfg
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    session = load_session(exp)
    if spec.merged_task:
        session.merge_task(spec.merged_task)
    if spec.merged_task:
        mode = f"retrieval off, task {spec.merged_task} merged into W"
    elif session.retrieves:
        mode = f"DTKR retrieval per request, top-{cfg.dtkr.top_k}"
    elif session.has_slots:
        mode = "the slots of the task each request names"
    else:
        mode = f"the model after task {session.tasks[-1]} (no retrieval)"
    auth = "API key required" if spec.api_key else "no API key"
    print(f"serve: {cfg.name} ({cfg.method}), {len(session.tasks)} task(s): {', '.join(session.tasks)}; {mode}; "
          f"{spec.batching} batching of up to {spec.max_batch_size}; {auth}; http://{spec.host}:{spec.port}/v1",
          flush=True)
    if not spec.api_key and spec.host not in LOOPBACK_HOSTS:
        print(f"warning: serving on {spec.host} without an API key: anyone who reaches the port can use it; set "
              f"{API_KEY_ENV} or pass --api-key", flush=True)
    uvicorn.run(create_app(session, spec), host=spec.host, port=spec.port, log_level="info")
    return 0
