"""oracle_task_id: SLM's slots, but each input uses its true task's slots: the retrieval ceiling."""

from __future__ import annotations

from pipeline.config import ExperimentConfig
from pipeline.export import TaskExport, jare_task_export
from pipeline.jare.routing import Routing
from pipeline.layout import RunLayout
from pipeline.methods.jare import JareMethod


class OracleTaskId(JareMethod):
    name = "oracle_task_id"
    role = "ceiling"
    trains = "as slm"
    infers = "the true task's slots (the retrieval ceiling)"

    def route_eval(self, router, seen: list[str], true_task: str, records: list[dict]) -> Routing | None:
        if true_task not in seen:
            return None  # the true task has no slots yet: the base model answers
        return router.route(records, tasks=[true_task])

    def export(self, cfg: ExperimentConfig, layout: RunLayout, t: int) -> TaskExport:
        return jare_task_export(cfg, layout, t)
