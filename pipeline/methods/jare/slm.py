"""slm: JARe + DTKR. Each test input retrieves its top-k slots over every finished task, per sample."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.methods.jare.method import JareMethod

if TYPE_CHECKING:
    from pipeline.jare.routing import Routing


class Slm(JareMethod):
    name = "slm"
    role = "ours"
    trains = "DTKR keys, then P slots per task (only task i's slots train)"
    infers = "DTKR retrieval over all tasks' slots, per sample, no task id"
    retrieves = True

    def route_eval(self, router, seen: list[str], true_task: str, records: list[dict]) -> Routing | None:
        return router.route(records, tasks=seen)  # the true task is never looked at
