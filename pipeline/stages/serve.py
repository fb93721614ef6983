"""`slm serve`: the finished tasks behind an OpenAI-compatible HTTP API (see pipeline/serve/).

Loads the model once (every DONE, indexed task's slots and keys), then serves until stopped:
retrieval per request, concurrent requests batched, tasks finished later loaded between batches.
"""

from __future__ import annotations

import argparse
import logging

from pipeline import preflight
from pipeline.config import ExperimentConfig, ServeSpec
from pipeline.layout import RunLayout
from pipeline.orders import single_run


def serve_spec(cfg: ExperimentConfig, args: argparse.Namespace) -> ServeSpec:
    """`serve:` of the config with --host / --port applied."""
    changes = {k: v for k, v in (("host", getattr(args, "host", None)), ("port", getattr(args, "port", None)))
               if v is not None}
    return cfg.serve.model_copy(update=changes)


def run(cfg: ExperimentConfig, layout: RunLayout, spec: ServeSpec) -> int:
    import uvicorn

    from pipeline.serve.app import create_app
    from pipeline.serve.session import load_session

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    session = load_session(cfg, layout)
    if spec.merged_task:
        session.merge_task(spec.merged_task)
    mode = (f"retrieval off, task {spec.merged_task} merged into W" if spec.merged_task
            else f"DTKR retrieval per request, top-{cfg.dtkr.top_k}")
    print(f"serve: {cfg.name} ({cfg.method}), {len(session.tasks)} task(s): {', '.join(session.tasks)}; {mode}; "
          f"batches of up to {spec.max_batch_size}; http://{spec.host}:{spec.port}/v1", flush=True)
    uvicorn.run(create_app(session, spec), host=spec.host, port=spec.port, log_level="info")
    return 0


def main(cfg: ExperimentConfig, layout: RunLayout, args: argparse.Namespace) -> int:
    cfg, layout = single_run(cfg, args)
    preflight.use_faiss_of(cfg)
    return run(cfg, layout, serve_spec(cfg, args))
