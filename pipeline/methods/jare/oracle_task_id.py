"""oracle_task_id: SLM's slots, but each input uses its true task's slots: the retrieval ceiling."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.methods.jare.method import JareMethod

if TYPE_CHECKING:
    from pipeline.jare.routing import Routing


class OracleTaskId(JareMethod):
    name = "oracle_task_id"
    role = "ceiling"
    trains = "as slm"
    infers = "the true task's slots (the retrieval ceiling)"
    options_key = "slm"  # the same slots as slm, routed by the true task

    def route_eval(self, router, seen: list[str], true_task: str, records: list[dict]) -> Routing | None:
        if true_task not in seen:
            return None  # the true task has no slots yet: the base model answers
        return router.route(records, tasks=[true_task])
