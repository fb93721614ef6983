"""The majority-label floor of a continual-learning benchmark: what always answering a task's most
common training answer scores, and how close each recorded method comes to doing just that.

    python bench/majority_label.py cross_domain_cpu
    python bench/majority_label.py cl_benchmark_cpu

A small model trained for a few steps can learn a classification task's label prior and nothing
else; its score then equals the share of the majority label in the test records, which reads like
learning. This bench measures that floor, with no model, on exactly the records the tables score.
It reads the cl_methods bench experiment (bench/experiments/cl_methods/<name>.yaml), builds every
task's records as `slm prepare` builds them (pipeline.data.build.build_task), and, for each task
with a closed answer set (its source names labels, or its metric is `letter`), scores the most
common training answer on every test record with the task's own metric
(pipeline.metrics.record_scores). Open-answer tasks (ROUGE-L, GSM8K's final number) have no such
floor and are listed with `majority: null`.

Then, for every committed bench/results/cl_methods/<name>-<row>.json and each order it ran, the
share of test records on which the row's final score equals the majority answer's score
(`agreement`): 1.000 on a letter task means the row is right on exactly the majority-label records,
i.e. it scores as a constant answer would. Writes bench/results/majority_label/<name>.json
(sections `tasks` and `rows`) through bench.runner, and prints one line per task.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/x.py` puts bench/ on sys.path

from bench import runner  # noqa: E402
from bench.cl_methods import BenchExperiment, load_results  # noqa: E402
from pipeline.experiment import load_experiment  # noqa: E402

runner.preamble()

BENCH = "majority_label"
MEASURED = ("bench.majority_label", "pipeline.data.build", "pipeline.metrics")


def majority_floor(experiment: Any) -> dict[str, dict[str, Any]]:
    """Task -> its metric, number of test records, majority training answer and that answer's
    per-record scores on the test split (`majority` and `scores` None for an open-answer task)."""
    from pipeline.data.build import build_task
    from pipeline.metrics import record_scores, references

    floor = {}
    for spec in experiment.cfg.tasks:
        prepared = build_task(spec, experiment.cfg)
        entry: dict[str, Any] = {"metric": spec.metric, "n_test": len(prepared.test), "majority": None,
                                 "train_share": None, "score": None, "scores": None}
        if prepared.labels is not None or spec.metric == "letter":
            counts = Counter(r["output"].strip() for r in prepared.train)
            # ties go to the answer that sorts first, so the floor does not depend on file order
            answer, n = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            scores = record_scores(spec.metric, [answer] * len(prepared.test), [references(r) for r in prepared.test],
                                   experiment.cfg.eval)
            entry.update(majority=answer, train_share=n / len(prepared.train), scores=scores,
                         score=sum(scores) / len(scores))
        floor[spec.name] = entry
    return floor


def agreement(floor: dict[str, dict[str, Any]], results: Path, name: str) -> dict[str, dict[str, dict[str, float]]]:
    """Row -> order -> task -> share of test records on which the row's final score equals the
    majority answer's (closed-answer tasks only; a row recorded before per-record scores is skipped)."""
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for record in load_results(results, name):
        row = record["run_info"]["method"]
        for order, entry in record.get("metrics", {}).get("per_order", {}).items():
            finals = entry.get("final_record_scores") or {}
            shares = {task: sum(a == b for a, b in zip(finals[task], f["scores"], strict=True)) / len(f["scores"])
                      for task, f in floor.items()
                      if f["scores"] is not None and len(finals.get(task, ())) == len(f["scores"])}
            if shares:
                rows.setdefault(row, {})[order] = shares
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", help="a bench/experiments/cl_methods/<name>.yaml")
    p.add_argument("--results-dir", type=Path, default=runner.RESULTS)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_intermixed_args(argv)
    bench = BenchExperiment.read(args.experiment, args.overrides)
    # the tasks' records do not depend on the method: the experiment as its config names it
    experiment = load_experiment(bench.config, bench.overrides)
    floor = majority_floor(experiment)
    rows = agreement(floor, args.results_dir, bench.name)
    for task, f in floor.items():
        head = f"task={task} metric={f['metric']}"
        print(f"{head} n_test={f['n_test']} majority={f['majority']!r} score={f['score']:.3f}"
              if f["scores"] is not None else f"{head} open_answers")
    settings = experiment.cfg.model_dump(mode="json", include={"data", "tasks"})
    path = runner.write_result(BENCH, bench.name, {"tasks": floor, "rows": rows},
                               run=runner.bench_run_info(MEASURED, settings), results=args.results_dir)
    runner.log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
