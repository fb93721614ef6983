"""RunLayout: every path under output_dir, in one place, so no stage builds paths by hand."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ExperimentConfig

# The files a finished adapter task holds (listed, relative to its folder, in its DONE).
ADAPTER_FILE = "adapter.safetensors"  # its slots, or its LoRA
KEYS_FILE = "keys.safetensors"  # its DTKR keys
FORGOTTEN_FILE = "FORGOTTEN.json"  # `slm forget` removed the task: its DONE is kept for the identity chain


def run_folder(output_dir: str | Path, run: str) -> Path:
    """The output_dir of one run (task order x seed) of an experiment: <output_dir>/<run>.

    The one place that decides it: `slm run`, prepare, train, status, report and the jobs
    `slm submit` renders all reach a run's files through it (pipeline.state.orders.order_runs).
    An experiment without orders or seeds has one unnamed run, output_dir itself.
    """
    return Path(output_dir) / run if run else Path(output_dir)


@dataclass(frozen=True)
class RunLayout:
    """`base` = output_dir (prepared data, shared by every method); `root` = base/<method>.

    Each method (slm, seq_lora, oracle_task_id, multitask) trains into its own root, so one
    report can compare them side by side on the same prepared data.
    """

    base: Path
    method: str

    @classmethod
    def of(cls, cfg: ExperimentConfig) -> RunLayout:
        return cls(Path(cfg.output_dir).expanduser().resolve(), cfg.method)

    @property
    def root(self) -> Path:
        return self.base / self.method

    def for_method(self, method: str) -> RunLayout:
        return RunLayout(self.base, method)

    # experiment
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    # prepare
    @property
    def data(self) -> Path:
        return self.base / "data"

    def task_data(self, name: str) -> Path:
        return self.data / name

    @property
    def manifest(self) -> Path:
        return self.data / "manifest.json"

    # train
    def task_dir(self, index: int, name: str) -> Path:
        return self.root / "tasks" / f"{index}-{name}"

    def keys_file(self, index: int, name: str) -> Path:
        return self.task_dir(index, name) / KEYS_FILE

    def adapter_file(self, index: int, name: str) -> Path:
        return self.task_dir(index, name) / ADAPTER_FILE

    def train_state(self, index: int, name: str) -> Path:
        return self.task_dir(index, name) / "train_state"

    def forgotten_file(self, index: int, name: str) -> Path:
        return self.task_dir(index, name) / FORGOTTEN_FILE

    def forgotten(self, index: int, name: str) -> bool:
        """`slm forget` removed task `index`'s slots and keys (pipeline.stages.forget)."""
        return self.forgotten_file(index, name).is_file()

    # index / eval / report
    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def eval_row(self, after: int) -> Path:
        """Row `after` of the accuracy matrix; -1 is the untrained model's row."""
        return self.eval / ("row-untrained.json" if after < 0 else f"row-{after}.json")

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    @property
    def tensorboard(self) -> Path:
        return self.logs / "tensorboard" / self.method
