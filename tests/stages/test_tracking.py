"""`report_to`: per-step loss and lr, and after each task the eval row and the CL metrics so far, in
TensorBoard, W&B (offline) and MLflow (local file store), checked by reading their files back;
and `slm report`'s loss curve from the JSONL log or, for older runs, the TensorBoard events.
"""

from __future__ import annotations

import glob
import json
import struct
from pathlib import Path

import pytest

from pipeline.cli import main as slm
from pipeline.errors import ConfigError
from pipeline.experiment import load_config
from pipeline.state.layout import RunLayout
from pipeline.tracking import eval_metrics, run_key, train_log

STEPS = 3
TASKS = ["sentiment", "geography", "animals"]  # the embedded default


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir) -> tuple:
    root = tmp_path_factory.mktemp("tracking")
    overrides = [f"output_dir={root / 'run'}", f"model.name_or_path={tiny_model_dir}", "data.synthetic_size=40",
                 f"train.max_steps={STEPS}", "train.micro_batch_size=4", f"train.save_every={STEPS}",
                 "model.max_seq_len=64", "eval.max_records_per_task=4", "eval.max_new_tokens=3",
                 "method=seq_lora", "report_to=[tensorboard, wandb, mlflow]"]
    assert slm(["run", *overrides]) == 0
    cfg = load_config(None, overrides)
    return cfg, RunLayout.of(cfg)


@pytest.mark.slow
def test_every_step_is_in_the_jsonl_log_with_its_loss_and_lr(run):
    cfg, layout = run
    for t, name in enumerate(TASKS):
        lines = [json.loads(x) for x in train_log(layout, t, name).read_text().splitlines()]
        assert [x["step"] for x in lines] == list(range(1, STEPS + 1))
        assert all(x["loss"] > 0 and x["lr"] >= 0 for x in lines)


@pytest.mark.slow
def test_tensorboard_gets_loss_and_lr_per_task_and_the_eval_axis(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, layout = run
    task = EventAccumulator(str(layout.tensorboard / "1-geography"))
    task.Reload()
    assert {"train/loss", "train/lr"} <= set(task.Tags()["scalars"])
    assert [e.step for e in task.Scalars("train/loss")] == list(range(1, STEPS + 1))
    evals = EventAccumulator(str(layout.tensorboard / "eval"))
    evals.Reload()
    assert [e.step for e in evals.Scalars("eval/AA")] == [0, 1, 2]


@pytest.mark.slow
def test_mlflow_gets_every_step_and_after_each_task_the_row_and_the_metrics_so_far(run):
    from mlflow.tracking import MlflowClient

    cfg, layout = run
    client = MlflowClient(tracking_uri=(layout.logs / "mlflow").as_uri())
    experiment = client.get_experiment_by_name(cfg.name)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`slm.run_key` = '{run_key(layout)}'")
    assert len(runs) == 1  # every process (3 trainings, 4 evals) logged into the same run
    run_id = runs[0].info.run_id

    def history(key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]

    loss = history("train/0-sentiment/loss")
    jsonl = [json.loads(x) for x in train_log(layout, 0, "sentiment").read_text().splitlines()]
    assert loss == [(x["step"], pytest.approx(x["loss"])) for x in jsonl]
    assert [s for s, _ in history("train/2-animals/lr")] == list(range(1, STEPS + 1))
    matrix = json.loads((layout.eval / "matrix.json").read_text())["matrix"]
    assert history("eval/score/geography") == [(i, pytest.approx(matrix[i][1])) for i in range(3)]
    metrics = json.loads((layout.eval / "metrics.json").read_text())
    assert history("eval/AA")[-1] == (2, pytest.approx(metrics["AA"]))
    assert history("eval/BWT")[-1] == (2, pytest.approx(metrics["BWT"]))
    assert [s for s, _ in history("eval/forgetting")] == [1, 2]  # undefined after one task: not logged


def wandb_records(folder: Path) -> list[dict[str, str]]:
    """The history rows of every offline W&B run under `folder` (the .wandb files are LevelDB-style
    logs of protobuf records: a 7-byte file header, then 32 KiB blocks of 7-byte-headed chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for path in sorted(glob.glob(str(folder / "wandb" / "offline-run-*" / "run-*.wandb"))):
        data, i, parts = Path(path).read_bytes(), 7, b""
        while i + 7 <= len(data):
            if 32768 - i % 32768 < 7:  # a block's tail too short for a header is padding
                i += 32768 - i % 32768
                continue
            _, length, kind = struct.unpack("<IHB", data[i:i + 7])
            parts, i = parts + data[i + 7:i + 7 + length], i + 7 + length
            if kind == 0 and length == 0:
                break
            if kind in (1, 4):  # a whole record, or the last chunk of one
                record = pb.Record()
                record.ParseFromString(parts)
                parts = b""
                if record.WhichOneof("record_type") == "history":
                    rows.append({"/".join(x.nested_key) or x.key: x.value_json for x in record.history.item})
    return rows


@pytest.mark.slow
def test_wandb_offline_gets_every_step_and_the_eval_axis(run):
    cfg, layout = run
    rows = wandb_records(layout.logs)
    steps = [int(r["train/1-geography/step"]) for r in rows if "train/1-geography/loss" in r]
    assert steps == list(range(1, STEPS + 1))
    aa = [(int(r["eval/step"]), float(r["eval/AA"])) for r in rows if "eval/AA" in r]
    metrics = json.loads((layout.eval / "metrics.json").read_text())
    assert [s for s, _ in aa] == [0, 1, 2] and aa[-1][1] == pytest.approx(metrics["AA"])


@pytest.mark.slow
def test_the_report_draws_the_loss_curve_beside_the_heatmaps(run, tmp_path):
    cfg, layout = run
    report = (layout.eval / "report.md").read_text()
    assert "## Training loss" in report and "![training loss](loss.png)" in report
    assert (layout.eval / "loss.png").stat().st_size > 1000
    assert report.index("![accuracy matrix]") < report.index("![training loss]")
    # A run from before the JSONL log: the curve comes from the TensorBoard event files.
    for t, name in enumerate(TASKS):
        train_log(layout, t, name).rename(tmp_path / f"{t}.jsonl")
    try:
        assert slm(["report", f"output_dir={layout.base}", f"model.name_or_path={cfg.model.name_or_path}",
                    "data.synthetic_size=40", f"train.max_steps={STEPS}", "train.micro_batch_size=4",
                    f"train.save_every={STEPS}", "model.max_seq_len=64", "eval.max_records_per_task=4",
                    "eval.max_new_tokens=3", "method=seq_lora"]) == 0
        assert "| 0-sentiment | 3 |" in (layout.eval / "report.md").read_text()
        assert "tensorboard |" in (layout.eval / "report.md").read_text()
    finally:
        for t, name in enumerate(TASKS):
            (tmp_path / f"{t}.jsonl").rename(train_log(layout, t, name))


def test_a_tracker_that_is_not_installed_is_refused_before_any_work(monkeypatch):
    import importlib.util

    from pipeline.tracking import check_report_to

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = load_config(None, ["report_to=[wandb]"])
    with pytest.raises(ConfigError, match="wandb package is not installed") as err:
        check_report_to(cfg)
    assert "slm-pipeline[tracking]" in err.value.hint


def test_eval_metrics_cover_the_tasks_learned_so_far():
    cfg = load_config(None)
    rows = [{"scores": {"sentiment": 1.0, "geography": 0.2, "animals": 0.1}, "retrieval": {"accuracy": 0.9}},
            {"scores": {"sentiment": 0.5, "geography": 0.8, "animals": 0.3}, "retrieval": {"accuracy": 0.7}}]
    m = eval_metrics(cfg, rows)
    assert m["AA"] == pytest.approx(0.65) and m["BWT"] == pytest.approx(-0.5)
    assert m["forgetting"] == pytest.approx(0.5) and m["retrieval_accuracy"] == 0.7
    assert m["score/animals"] == 0.3
