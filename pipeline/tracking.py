"""Where a run reports as it goes: TensorBoard, Weights & Biases, MLflow (`report_to`), and a JSONL log.

Two streams, each a named axis with its own step:
- `train/<i>-<task>`: loss and lr at every optimizer step of task i (`slm train`);
- `eval`: after task i (`slm eval --after i`, step i), the score on every task (the row of the
  accuracy matrix), AA / BWT / forgetting over the tasks learned so far, and retrieval accuracy
  (methods that retrieve).

The per-step training log is also written, always, as JSONL (`<output_dir>/logs/train/<method>/
<i>-<task>.jsonl`): `slm report` draws the loss curve from it (or, for older runs, from the
TensorBoard event files). `slm train --task i` and `slm eval --after i` are separate processes (one
Slurm array task each), so a W&B or MLflow run is found again by a key of the run's folder: W&B
resumes the run with that id, MLflow finds the run tagged with it. W&B runs offline by default
(`wandb sync <output_dir>/logs/wandb/offline-run-*` uploads them later); MLflow logs to a local
file store under `<output_dir>/logs/mlflow` unless `logging.mlflow_tracking_uri` names another.
Logging happens on rank 0 only; a tracker that fails while logging is warned about, never fatal.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

from pipeline.config import ExperimentConfig
from pipeline.errors import ConfigError
from pipeline.state.layout import RunLayout

OPTIONAL = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow-skinny")}  # backend -> (module, pip name)


def check_report_to(cfg: ExperimentConfig) -> None:
    """Refuse, before any work, a `report_to` backend whose package is not installed."""
    for backend in cfg.report_to:
        module, pip_name = OPTIONAL.get(backend, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise ConfigError(f"report_to lists {backend}, but the {pip_name} package is not installed",
                              hint=f'pip install "slm-pipeline[tracking]" (or pip install {pip_name}), or drop '
                                   f"{backend} from report_to")


def run_key(layout: RunLayout) -> str:
    """The same id for every process of one run (its folder): W&B's run id, MLflow's run tag."""
    return hashlib.sha256(str(layout.root).encode()).hexdigest()[:16]


def train_log(layout: RunLayout, t: int, name: str) -> Path:
    return layout.logs / "train" / layout.method / f"{t}-{name}.jsonl"


class Trackers:
    """Every backend of `report_to` behind one `log` / `close`."""

    def __init__(self, backends: list[Any]) -> None:
        self.backends = backends

    @classmethod
    def open(cls, cfg: ExperimentConfig, layout: RunLayout, tensorboard_dir: str) -> Trackers:
        """The backends of `cfg.report_to`; TensorBoard writes into `layout.tensorboard / tensorboard_dir`."""
        check_report_to(cfg)
        makers = {"tensorboard": lambda: _TensorBoard(layout.tensorboard / tensorboard_dir),
                  "wandb": lambda: _Wandb(cfg, layout), "mlflow": lambda: _Mlflow(cfg, layout)}
        backends = []
        for name in dict.fromkeys(cfg.report_to):
            try:
                backends.append(makers[name]())
            except OSError as e:  # a full disk, a read-only log folder: the stage goes on without it
                from pipeline import distributed

                distributed.log(f"warning: {name} not started ({e}); this stage logs to the others")
        return cls(backends)

    def log(self, axis: str, step: int, metrics: dict[str, float | None]) -> None:
        values = {k: float(v) for k, v in metrics.items() if v is not None}
        for backend in self.backends:
            _guard(backend, "log", lambda b=backend: b.log(axis, step, values))

    def close(self) -> None:
        for backend in self.backends:
            _guard(backend, "close", backend.close)


def _guard(backend: Any, what: str, call) -> None:
    try:
        call()
    except Exception as e:  # a tracker must never stop training or evaluation
        from pipeline import distributed

        distributed.log(f"warning: {type(backend).__name__.strip('_')} {what} failed: {type(e).__name__}: {e}")


class JsonlLog:
    """Per-step training metrics of one task, one JSON object per line; a fresh start truncates it."""

    def __init__(self, path: Path, fresh: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("w" if fresh else "a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.file.write(json.dumps({"step": step, **metrics, "time": round(time.time(), 3)}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class _TensorBoard:
    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def log(self, axis: str, step: int, metrics: dict[str, float]) -> None:
        # One writer per task folder: the tags stay "train/loss", as every TensorBoard user expects.
        prefix = axis.split("/")[0]
        for key, value in metrics.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, cfg: ExperimentConfig, layout: RunLayout) -> None:
        import wandb

        folder = layout.logs
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=cfg.logging.wandb_project, id=run_key(layout), resume="allow",
                              mode=cfg.logging.wandb_mode, dir=str(folder), name=f"{cfg.name}/{layout.method}",
                              config=cfg.model_dump(mode="json"), group=cfg.name,
                              settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))
        self.axes: set[str] = set()

    def log(self, axis: str, step: int, metrics: dict[str, float]) -> None:
        if axis not in self.axes:  # each axis has its own x: a task's steps restart at 1
            self.run.define_metric(f"{axis}/step")
            self.run.define_metric(f"{axis}/*", step_metric=f"{axis}/step")
            self.axes.add(axis)
        self.run.log({f"{axis}/step": step, **{f"{axis}/{k}": v for k, v in metrics.items()}})

    def close(self) -> None:
        self.run.finish()


class _Mlflow:
    def __init__(self, cfg: ExperimentConfig, layout: RunLayout) -> None:
        from mlflow.tracking import MlflowClient

        uri = cfg.logging.mlflow_tracking_uri or (layout.logs / "mlflow").as_uri()
        if uri.startswith("file:"):
            # MLflow 3 keeps its file store in maintenance mode behind this opt-in; it is what
            # mlflow-skinny can write without a database (`mlflow ui --backend-store-uri <it>` reads it).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        name = cfg.logging.mlflow_experiment or cfg.name
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        key = run_key(layout)
        runs = self.client.search_runs([experiment], filter_string=f"tags.`slm.run_key` = '{key}'", max_results=1)
        if runs:
            self.run_id = runs[0].info.run_id
        else:
            run = self.client.create_run(experiment, run_name=f"{cfg.name}/{layout.method}",
                                         tags={"slm.run_key": key, "slm.method": layout.method,
                                               "slm.output_dir": str(layout.root)})
            self.run_id = run.info.run_id
            sections = {"method", "model", "adapter", "dtkr", "methods", "train"}
            for k, v in _flat(cfg.model_dump(mode="json", include=sections)):
                self.client.log_param(self.run_id, k, str(v)[:500])

    def log(self, axis: str, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, f"{axis}/{key}", value, step=step)

    def close(self) -> None:
        pass  # the run stays open: the next task's process logs into it


def _flat(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        return [kv for k, v in obj.items() for kv in _flat(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), obj)]


# ---- the eval axis ---------------------------------------------------------------------------------


def eval_metrics(cfg: ExperimentConfig, rows: list[dict]) -> dict[str, float | None]:
    """After the last of `rows` (rows 0..i, in order): every task's score, AA / BWT / forgetting over
    the tasks learned so far, and retrieval accuracy."""
    from pipeline import metrics

    names = [t.name for t in cfg.tasks]
    matrix = [[row["scores"][n] for n in names] for row in rows]
    cl = metrics.cl_metrics(matrix)
    last = rows[-1]
    return {**{f"score/{n}": last["scores"][n] for n in names}, "AA": cl["AA"], "BWT": cl["BWT"],
            "forgetting": cl["forgetting"], "retrieval_accuracy": (last.get("retrieval") or {}).get("accuracy")}


def log_eval_row(cfg: ExperimentConfig, layout: RunLayout, after: int, read_row) -> None:
    """Report row `after` and the CL metrics so far, when rows 0..after are all there."""
    if after < 0 or not cfg.report_to:
        return
    rows = [read_row(layout, j) for j in range(after + 1)]
    if any(r is None for r in rows):
        return  # an earlier row is missing: the metrics so far are not defined yet
    trackers = Trackers.open(cfg, layout, "eval")
    try:
        trackers.log("eval", after, eval_metrics(cfg, rows))
    finally:
        trackers.close()
