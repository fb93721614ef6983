"""`slm fetch`: everything the jobs load from the Hugging Face Hub, into the cache they read.

Run where the hub is reachable (the login node; `slm submit` runs it before submitting): the base
model, the DTKR encoder and the BERTScore encoder are downloaded with the hub's own client
(pipeline/runtime/hub.py), hub datasets are loaded once so the datasets cache holds them, and
bundled models are converted or assembled into $SLM_CACHE. The job scripts then run with
HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1: no rank of a 16-GPU job downloads anything.

`--check` only looks: every hub model whole in the cache (exit 0), or an error naming each one
that is not and this command (exit 2). `slm prepare`, `train` and `eval` run that check first
when the hub is offline, so an offline job stops in seconds, not at its first from_pretrained.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.runtime import hub

if TYPE_CHECKING:
    from pipeline.experiment import Experiment


@dataclass(frozen=True)
class Args:
    check: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="store_true",
                   help="only check that every hub model is in the cache (offline): exit 0, else 2 naming them")


def main(experiment: Experiment, args: Args) -> int:
    exp = experiment.runs()[0]  # task orders permute the same tasks: one fetch serves every run
    if args.check:
        hub.require_cached(models_of(exp))
        print(f"fetch: every hub model of {exp.cfg.name} is in {hub.cache_folder()}")
        return 0
    run(exp)
    return 0


def models_of(exp: Experiment) -> list[hub.HubModel]:
    return hub.hub_models(exp.cfg, uses_encoder=exp.method.learns_keys)


def run(exp: Experiment) -> None:
    """Download (or confirm) every model and hub dataset the experiment's jobs load; prints each."""
    from pipeline.runtime.models import resolve_encoder_path, resolve_model_path

    cfg = exp.cfg
    where = "offline: checking the cache only" if hub.hub_offline() else "downloading what is missing"
    print(f"fetch: into {hub.cache_folder()} ({where}; the jobs read it with HF_HUB_OFFLINE=1)")
    for model in models_of(exp):
        print(f"fetch: {model.setting}={model.repo} -> {hub.fetch_model(model)}", flush=True)
    if cfg.model.name_or_path.startswith("bundled:"):
        print(f"fetch: model.name_or_path={cfg.model.name_or_path} -> {resolve_model_path(cfg.model.name_or_path)}")
    if exp.method.learns_keys and cfg.dtkr.encoder.startswith("bundled:"):
        print(f"fetch: dtkr.encoder={cfg.dtkr.encoder} -> {resolve_encoder_path(cfg.dtkr.encoder)}")
    for task in cfg.tasks:
        if task.source.type == "hub" and task.source.path and hub.is_hub_id(task.source.path):
            fetch_dataset(task)


def fetch_dataset(task) -> None:
    """Load a hub dataset's splits exactly as `slm prepare` will, so the datasets cache answers
    the same call offline."""
    from pipeline.data.readers import read_dataset

    src = task.source
    for split in (s for s in (src.split, src.test_split) if s):
        rows = read_dataset(src.path, None, src.config, split)
        print(f"fetch: task {task.name}: {rows.origin}: {len(rows.rows)} rows cached", flush=True)


def require_fetched(exp: Experiment) -> None:
    """When the hub is offline (a job): every hub model is in the cache, else stop now naming `slm fetch`."""
    if hub.hub_offline():
        hub.require_cached(models_of(exp))
