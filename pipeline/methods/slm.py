"""slm: JARe + DTKR. Each test input retrieves its top-k slots over every finished task, per sample."""

from __future__ import annotations

from pipeline.config import ExperimentConfig
from pipeline.export import TaskExport, jare_task_export
from pipeline.jare.routing import Routing
from pipeline.layout import RunLayout
from pipeline.methods.jare import JareMethod


class Slm(JareMethod):
    name = "slm"
    role = "ours"
    trains = "DTKR keys, then P slots per task (only task i's slots train)"
    infers = "DTKR retrieval over all tasks' slots, per sample, no task id"
    retrieves = True

    def route_eval(self, router, seen: list[str], true_task: str, records: list[dict]) -> Routing | None:
        return router.route(records, tasks=seen)  # the true task is never looked at

    def export(self, cfg: ExperimentConfig, layout: RunLayout, t: int) -> TaskExport:
        return jare_task_export(cfg, layout, t)
