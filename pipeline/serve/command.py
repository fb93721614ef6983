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

from pipeline import preflight
from pipeline.config import ExperimentConfig, ServeSpec
from pipeline.state.layout import RunLayout
from pipeline.state.orders import single_run

API_KEY_ENV = "SLM_API_KEY"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def serve_spec(cfg: ExperimentConfig, args: argparse.Namespace) -> ServeSpec:
    """`serve:` of the config with --host / --port applied, and the API key from --api-key, else
    $SLM_API_KEY, else serve.api_key."""
    key = getattr(args, "api_key", None) or os.environ.get(API_KEY_ENV) or cfg.serve.api_key
    changes = {k: v for k, v in (("host", getattr(args, "host", None)), ("port", getattr(args, "port", None)),
                                 ("api_key", key)) if v is not None}
    return cfg.serve.model_copy(update=changes)


def run(cfg: ExperimentConfig, layout: RunLayout, spec: ServeSpec) -> int:
    import uvicorn

    from pipeline.serve.app import create_app
    from pipeline.serve.session import load_session

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    session = load_session(cfg, layout)
    if spec.merged_task:
        session.merge_task(spec.merged_task)
    if spec.merged_task:
        mode = f"retrieval off, task {spec.merged_task} merged into W"
    elif session.retrieves:
        mode = f"DTKR retrieval per request, top-{cfg.dtkr.top_k}"
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


def main(cfg: ExperimentConfig, layout: RunLayout, args: argparse.Namespace) -> int:
    cfg, layout = single_run(cfg, args)
    preflight.use_faiss_of(cfg)
    return run(cfg, layout, serve_spec(cfg, args))
