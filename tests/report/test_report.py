"""The report stage on fake eval rows: metrics, matrix, markdown, plots, partial runs and comparisons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import ExperimentConfig
from pipeline.errors import StageInputError
from pipeline.experiment import Experiment, load_config
from pipeline.stages import report
from pipeline.state.layout import RunLayout

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MATRIX = [
    [0.9, 0.1, 0.0],
    [0.8, 0.7, 0.1],
    [0.6, 0.7, 0.5],
]
UNTRAINED = [0.2, 0.0, 0.1]
CONFUSION = [[19, 1, 0], [0, 20, 0], [2, 0, 18]]


@pytest.fixture
def cfg(tmp_path: Path) -> ExperimentConfig:
    # Task names pinned here so the hand-made rows below do not depend on the default's tasks.
    return load_config(None, [f"output_dir={tmp_path}", "tasks.0.name=sentiment", "tasks.1.name=arithmetic",
                              "tasks.2.name=geography"])


@pytest.fixture
def exp(cfg: ExperimentConfig) -> Experiment:
    return Experiment.of(cfg)


@pytest.fixture
def layout(exp: Experiment) -> RunLayout:
    return exp.layout


def of_method(cfg: ExperimentConfig, method: str) -> Experiment:
    """The same experiment run by another method (its own folder beside slm's)."""
    return Experiment.of(cfg.model_copy(update={"method": method}))


def write_row(exp: Experiment, after: int, scores: list[float], retrieval: bool = True,
              extra: dict | None = None) -> None:
    tasks = ["sentiment", "arithmetic", "geography"]
    row = {**(extra or {}),
        "after": after,
        "method": exp.layout.method,
        "tasks": tasks,
        "scores": dict(zip(tasks, scores, strict=True)),
        "metric": (extra or {}).get("metric") or dict.fromkeys(tasks, "exact_match"),
        "n_records": dict.fromkeys(tasks, 20),
        "retrieval": {
            "accuracy": 57 / 60,
            "per_task": {"sentiment": 0.95, "arithmetic": 1.0, "geography": 0.9},
            "confusion": CONFUSION,
        } if retrieval else {"accuracy": None, "per_task": {}, "confusion": None},
    }
    path = exp.layout.eval_row(after)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(as_scored(exp, row, after)))


def as_scored(exp: Experiment, row: dict, after: int) -> dict:
    """`row` as `slm eval` records it, over fake finished tasks 0..after: the report checks each
    task's DONE against the config and each row's inputs against the tasks on disk."""
    from pipeline.state import validity
    from pipeline.state.artifacts import write_done

    for j in range(after + 1):
        write_done(exp.layout.task_dir(j, exp.cfg.tasks[j].name), "train", inputs=validity.task_inputs(exp, j),
                   files=[])
    return {**row, "inputs": validity.eval_inputs(exp, after), "data": validity.cell_data(exp)}


def write_rows(exp: Experiment, rows: list[list[float]], untrained: bool = True, retrieval: bool = True) -> None:
    for i, scores in enumerate(rows):
        write_row(exp, i, scores, retrieval)
    if untrained:
        write_row(exp, -1, UNTRAINED, retrieval=False)


def test_a_full_matrix_gives_metrics_matrix_report_and_plots(exp: Experiment, cfg: ExperimentConfig, layout: RunLayout,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    write_rows(exp, MATRIX)
    assert report.main(exp, report.Args()) == 0

    m = json.loads((layout.eval / "metrics.json").read_text())
    assert {"method", "AA", "BWT", "forgetting", "FWT", "retrieval_accuracy", "matrix", "untrained",
            "tasks"} <= set(m)
    assert m["method"] == "slm" and m["complete"] is True
    assert m["tasks"] == ["sentiment", "arithmetic", "geography"]
    assert m["AA"] == pytest.approx((0.6 + 0.7 + 0.5) / 3)
    assert m["BWT"] == pytest.approx(((0.6 - 0.9) + (0.7 - 0.7)) / 2)
    assert m["forgetting"] == pytest.approx(((0.9 - 0.6) + (0.7 - 0.7)) / 2)
    assert m["FWT"] == pytest.approx(((0.1 - 0.0) + (0.1 - 0.1)) / 2)
    assert m["retrieval_accuracy"] == pytest.approx(0.95)
    assert m["matrix"] == MATRIX and m["untrained"] == UNTRAINED

    mj = json.loads((layout.eval / "matrix.json").read_text())
    assert mj["matrix"] == MATRIX
    assert mj["row_labels"] == ["after 0: sentiment", "after 1: arithmetic", "after 2: geography"]
    assert mj["untrained"] == {"label": "untrained", "scores": UNTRAINED}

    md = (layout.eval / "report.md").read_text()
    assert "| after 2: geography | 0.600 | 0.700 | **0.500** |" in md
    assert "| untrained (b) | 0.200 | 0.000 | 0.100 |" in md
    assert "| BWT | -0.150 |" in md and "| forgetting | 0.150 |" in md
    assert "**0.950**" in md and "| sentiment | 19 | 1 | 0 |" in md
    assert "Partial" not in md
    for png in ("matrix.png", "retrieval_confusion.png"):
        assert (layout.eval / png).read_bytes()[:8] == PNG_MAGIC
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(layout.eval / "report.md")


def test_a_partial_matrix_is_reported_as_the_tasks_learned_so_far(exp: Experiment, cfg: ExperimentConfig,
                                                                   layout: RunLayout) -> None:
    write_rows(exp, MATRIX[:2])
    m = report.run(exp)
    assert m["complete"] is False and m["rows_present"] == 2 and m["rows_expected"] == 3
    assert m["AA"] == pytest.approx((0.8 + 0.7) / 2)
    assert m["BWT"] == pytest.approx(0.8 - 0.9)
    assert json.loads((layout.eval / "matrix.json").read_text())["complete"] is False
    md = (layout.eval / "report.md").read_text()
    assert "Partial matrix: 2 of 3 rows" in md and "slm eval --after 2" in md


def test_no_rows_at_all_tells_the_user_what_to_run(exp: Experiment, cfg: ExperimentConfig, layout: RunLayout) -> None:
    with pytest.raises(StageInputError, match=r"slm eval --after 0.*slm run"):
        report.run(exp)


def test_a_gap_in_the_rows_names_the_missing_row(exp: Experiment, cfg: ExperimentConfig, layout: RunLayout) -> None:
    write_rows(exp, MATRIX)
    layout.eval_row(1).unlink()
    with pytest.raises(StageInputError, match=r"row 1 .* missing but row 2 exists.*slm eval --after 1"):
        report.run(exp)


def test_a_row_from_another_task_list_is_refused(exp: Experiment, cfg: ExperimentConfig, layout: RunLayout) -> None:
    write_rows(exp, MATRIX)
    row = json.loads(layout.eval_row(0).read_text())
    row["tasks"] = ["sentiment", "geography", "arithmetic"]
    layout.eval_row(0).write_text(json.dumps(row))
    with pytest.raises(StageInputError, match="another config"):
        report.run(exp)


def test_without_the_untrained_row_fwt_is_null_and_the_report_says_how_to_get_it(exp: Experiment,
        cfg: ExperimentConfig, layout: RunLayout) -> None:
    write_rows(exp, MATRIX, untrained=False)
    m = report.run(exp)
    assert m["FWT"] is None and m["untrained"] is None
    assert "slm eval --after -1" in (layout.eval / "report.md").read_text()


def test_a_method_without_retrieval_has_no_retrieval_plot(cfg: ExperimentConfig, layout: RunLayout) -> None:
    seq = of_method(cfg, "seq_lora")
    write_rows(seq, MATRIX, retrieval=False)
    m = report.run(seq)
    assert m["retrieval_accuracy"] is None and m["retrieval_confusion"] is None
    assert (seq.layout.eval / "matrix.png").is_file() and not (seq.layout.eval / "retrieval_confusion.png").exists()
    assert "does not retrieve" in (seq.layout.eval / "report.md").read_text()


def test_the_comparison_lists_every_method_with_metrics(exp: Experiment, cfg: ExperimentConfig,
                                                        layout: RunLayout) -> None:
    seq = of_method(cfg, "seq_lora")
    write_rows(seq, [[0.9, 0.0, 0.0], [0.1, 0.9, 0.0], [0.0, 0.1, 0.9]], retrieval=False)
    report.run(seq)
    comparison = (layout.base / "comparison.md").read_text()
    assert "`seq_lora`" in comparison and "`slm`" not in comparison

    write_rows(exp, MATRIX)
    report.run(exp)
    comparison = (layout.base / "comparison.md").read_text()
    # slm first (registry order). seq_lora: AA (0.0 + 0.1 + 0.9) / 3, BWT ((0.0 - 0.9) + (0.1 - 0.9)) / 2.
    assert comparison.index("`slm`") < comparison.index("`seq_lora`")
    assert "| `seq_lora` | floor | 3/3 | 0.333 | -0.850 |" in comparison
    assert "trainable params | stored / task | train wall" in comparison
    assert "slm/eval/report.md" in comparison
    md = (layout.eval / "report.md").read_text()
    assert "## Comparison across methods" in md and "`seq_lora`" in md


def test_keys_that_captured_an_earlier_task_are_warned_about_in_the_report(exp: Experiment,
        cfg: ExperimentConfig, layout: RunLayout, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.state import validity
    from pipeline.state.artifacts import write_done

    write_rows(exp, MATRIX)
    # what `slm train` records for task 2: the share of each earlier task's held-out queries it takes
    inputs = validity.task_inputs(exp, 2)
    write_done(layout.task_dir(2, "geography"), "train", inputs=inputs, files=[],
               capture={"sentiment": 0.3, "arithmetic": 0.01})
    assert report.main(exp, report.Args()) == 0

    m = json.loads((layout.eval / "metrics.json").read_text())
    assert m["training"]["capture_warnings"] == ["task 2 (geography) captures 30% of sentiment's held-out queries"]
    assert "captures 30% of sentiment's held-out queries" in (layout.eval / "report.md").read_text()
    out = capsys.readouterr().out
    assert "warning: task 2 (geography) captures 30%" in out and "arithmetic's" not in out


def test_mixed_metrics_are_named_per_task_and_the_last_rows_record_scores_reach_metrics_json(
        exp: Experiment, layout: RunLayout) -> None:
    metric = {"sentiment": "letter", "arithmetic": "final_number", "geography": "rouge_l"}
    per_record = {"sentiment": [1.0, 0.0], "arithmetic": [0.0, 1.0], "geography": [0.25, 0.75]}
    for i, scores in enumerate(MATRIX):
        write_row(exp, i, scores, extra={"metric": metric, **({"record_scores": per_record} if i == 2 else {})})
    assert report.main(exp, report.Args()) == 0
    m = json.loads((layout.eval / "metrics.json").read_text())
    assert m["final_record_scores"] == per_record and m["metric"] == metric
    assert m["AA"] == pytest.approx(sum(MATRIX[-1]) / 3)  # the mean of the per-task scores, whatever each metric
    md = (layout.eval / "report.md").read_text()
    assert "Task metrics: sentiment: letter on 20 records, arithmetic: final_number on 20 records, geography: " \
           "rouge_l on 20 records." in md
    assert "after the last one, each by its own metric" in md


def test_rows_from_before_per_record_scores_leave_them_none(exp: Experiment, layout: RunLayout) -> None:
    write_rows(exp, MATRIX)
    assert report.main(exp, report.Args()) == 0
    assert json.loads((layout.eval / "metrics.json").read_text())["final_record_scores"] is None
