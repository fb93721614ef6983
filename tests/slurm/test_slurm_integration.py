"""The whole pipeline through a real single-node Slurm: `slm submit` of the embedded default at
reduced sizes. One module-scoped run covers ordering, preemption and the report; a second method
in the same output_dir covers a failing task. About 3 minutes on 2 idle cores.

Needs a Slurm that answers `sinfo` (scripts/local_slurm.sh start, then export SLURM_CONF=...).
With CI=true or SLM_TEST_SLURM=1 the fixture starts scripts/local_slurm.sh itself when none
answers, and stops it (by PID) at the end; otherwise these tests skip.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline import cli, slurm
from pipeline.config import ExperimentConfig
from pipeline.experiment import load_config
from pipeline.stages import status
from pipeline.state.layout import RunLayout

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
LOCAL_SLURM = REPO / "scripts" / "local_slurm.sh"
STAGES = ("prepare", "train", "index", "evaluate", "report")
# Small enough for a CPU. A checkpoint after every step tells the test that task 1 is inside its
# training loop (srun passes output on line by line, so progress bars arrive late).
OVERRIDES = ["data.synthetic_size=40", "train.max_steps=4", "train.save_every=1", "dtkr.key_epochs=1",
             "eval.max_records_per_task=4", "eval.max_new_tokens=4", "model.max_seq_len=64"]
# About 3 minutes on 2 idle cores; the margin is for a machine shared with other work.
DEADLINE_S = 900


def sinfo_answers() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def local_slurm() -> Iterator[None]:
    # A renamed or removed stage is a failure of this suite, never a reason to skip it.
    missing = [s for s in STAGES if not (REPO / "pipeline" / "stages" / f"{s}.py").is_file()]
    assert not missing, f"the Slurm jobs run stages that do not exist: {missing}"
    if sinfo_answers():
        yield
        return
    if os.environ.get("CI") != "true" and os.environ.get("SLM_TEST_SLURM") != "1":
        pytest.skip("no Slurm answers `sinfo`: run scripts/local_slurm.sh start and export the SLURM_CONF it "
                    "prints, or set SLM_TEST_SLURM=1 to let the tests start it")
    already_up = subprocess.run([str(LOCAL_SLURM), "status"], capture_output=True).returncode == 0
    out = subprocess.run([str(LOCAL_SLURM), "env" if already_up else "start"], capture_output=True, text=True,
                         check=True).stdout
    conf = re.search(r"export SLURM_CONF=(\S+)", out).group(1)
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield
    finally:
        if not already_up:  # stop only what this fixture started
            subprocess.run([str(LOCAL_SLURM), "stop"], check=False)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


@dataclass
class Submitted:
    cfg: ExperimentConfig
    layout: RunLayout
    jobs: dict[str, str]  # kind -> job id

    @property
    def ids(self) -> set[str]:
        return set(self.jobs.values())

    def log(self, task: int, suffix: str = "out") -> Path:
        return slurm.log_file(self.layout, slurm.job_name(self.cfg, "train"), self.jobs["train"], task, suffix)


def submit(args: list[str]) -> Submitted:
    assert cli.main(["submit", *args]) == 0
    cfg = load_config(None, args)
    layout = RunLayout.of(cfg)
    record = json.loads((slurm.script_dir(layout) / "jobs.json").read_text())
    return Submitted(cfg, layout, {kind: job["id"] for kind, job in record["jobs"].items()})


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def log_tails(layout: RunLayout) -> str:
    return "\n".join(f"== {p.name}\n{read(p)[-1500:]}" for p in sorted(layout.logs.glob("*.*")) if p.is_file())


def wait_until(condition: Callable[[], bool], what: str, layout: RunLayout, deadline: float) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{log_tails(layout)}")
        time.sleep(0.5)


def preempt_task_1_while_it_trains(run: Submitted, deadline: float) -> None:
    """USR1 to task 1's batch shell, as Slurm sends it before the time limit, once a step is done."""
    first = run.layout.train_state(1, run.cfg.tasks[1].name) / "step-000001" / "COMPLETE"
    wait_until(first.is_file, "task 1 to checkpoint its first training step", run.layout, deadline)
    subprocess.run(["scancel", "--signal=USR1", "--batch", f"{run.jobs['train']}_1"], check=True)
    # The requeued task starts again once its job credential expired (15 s on the local Slurm).
    wait_until(lambda: "requeueing" in read(run.log(1)), "task 1 to requeue itself", run.layout, deadline)


def queue_is_empty(ids: set[str]) -> bool:
    return not status.live_jobs(ids)


@pytest.fixture(scope="module")
def runs(local_slurm, tmp_path_factory) -> Iterator[tuple[Submitted, Submitted]]:
    """`good`: slm, preempted during task 1. `bad`: seq_lora in the same output_dir, whose task 0
    DONE marker is a fake: task 0 fails at `slm train --check` (its DONE records none of the current
    inputs) instead of being skipped, and task 1 at its input check."""
    out = tmp_path_factory.mktemp("slurm") / "run dir; it's"  # the scripts must survive this path
    good = submit([f"output_dir={out}", *OVERRIDES])
    bad_cfg = load_config(None, [f"output_dir={out}", "method=seq_lora", *OVERRIDES])
    task0 = RunLayout.of(bad_cfg).task_dir(0, bad_cfg.tasks[0].name)
    task0.mkdir(parents=True)
    (task0 / "DONE").write_text(json.dumps({"stage": "train", "outputs": {"adapter.safetensors": "0" * 64}}))
    bad = submit([f"output_dir={out}", "method=seq_lora", *OVERRIDES])
    deadline = time.monotonic() + DEADLINE_S
    try:
        preempt_task_1_while_it_trains(good, deadline)
        wait_until(lambda: queue_is_empty(good.ids | bad.ids), "every job to end", good.layout, deadline)
        yield good, bad
    finally:
        subprocess.run(["scancel", *good.ids, *bad.ids], check=False, capture_output=True)


def first_time(log: str) -> float:
    """When the job script logged its first line (the script's `log` prints local time)."""
    stamp = re.search(r"^\[slm (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\]", log, re.M).group(1)
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").timestamp()


def restart_of(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"train: task \d+ of 0-\d+ on \d+ node\(s\), restart (\d+)", log)]


def test_every_array_task_ran_once_in_order_and_the_report_exists(runs) -> None:
    good, _ = runs
    done = [good.layout.task_dir(i, t.name) / "DONE" for i, t in enumerate(good.cfg.tasks)]
    assert all(p.is_file() for p in done), log_tails(good.layout)
    mtimes = [p.stat().st_mtime for p in done]
    assert mtimes == sorted(mtimes)
    for i in range(len(done)):
        assert f"task {i} DONE" in read(good.log(i)), log_tails(good.layout)
    assert (good.layout.eval / "metrics.json").is_file() and (good.layout.eval / "report.md").is_file()
    states = {j.task: j.state for j in status.recent_jobs(good.jobs["train"])}
    assert states == {0: "COMPLETED", 1: "COMPLETED", 2: "COMPLETED"}


def test_usr1_during_training_requeues_the_task_which_resumes_and_completes(runs) -> None:
    good, _ = runs
    log = read(good.log(1))
    assert "got SIGUSR1" in log and "requeueing" in log, log
    assert restart_of(log) == [0, 1], log
    assert re.search(r"train: resumed task 1 from step [1-4]/4", log), log
    # Task 2 was held while task 1 waited to restart, so it ran once, after task 1 was DONE.
    assert restart_of(read(good.log(2))) == [0]
    task1_done = (good.layout.task_dir(1, good.cfg.tasks[1].name) / "DONE").stat().st_mtime
    assert first_time(read(good.log(2))) >= int(task1_done)


def test_a_failed_task_stops_the_later_tasks_and_the_finish_job(runs, capsys) -> None:
    _, bad = runs
    assert not (bad.layout.task_dir(1, bad.cfg.tasks[1].name) / "DONE").exists()
    assert not (bad.layout.task_dir(2, bad.cfg.tasks[2].name) / "DONE").exists()
    states = {j.task: j.state for j in status.recent_jobs(bad.jobs["train"])}
    assert states == {0: "FAILED", 1: "FAILED", 2: "FAILED"}, log_tails(bad.layout)
    task0 = read(bad.log(0)) + read(bad.log(0, "err"))
    assert "does not match the current inputs" in task0 and "--restart" in task0, task0
    assert "task 1 is not DONE" in read(bad.log(2))
    assert {j.state for j in status.recent_jobs(bad.jobs["finish"])} <= {"CANCELLED"}
    assert cli.main(["status", f"output_dir={bad.layout.base}", "method=seq_lora", *OVERRIDES]) == 0
    assert "failed (FAILED" in capsys.readouterr().out


def test_each_task_order_runs_as_its_own_strictly_ordered_chain(local_slurm, tmp_path, tiny_model_dir) -> None:
    """`slm submit` of an experiment with two orders: two independent chains, each training its
    tasks in its own order into <output_dir>/<order>/, each with its own report; then `slm report`
    over the experiment gives the mean over both."""
    out = tmp_path / "orders"
    args = [f"output_dir={out}", f"model.name_or_path={tiny_model_dir}", "data.synthetic_size=40",
            "train.max_steps=2", "dtkr.key_epochs=1", "eval.max_records_per_task=4", "eval.max_new_tokens=2",
            "model.max_seq_len=64", "tasks=[{name: sentiment, source: {type: synthetic, generator: sentiment}},"
            " {name: geography, source: {type: synthetic, generator: geography}}]",
            "orders=[{name: fwd, tasks: [sentiment, geography]}, {name: rev, tasks: [geography, sentiment]}]"]
    assert cli.main(["submit", *args]) == 0
    chains = {order: json.loads((out / order / "slurm" / "slm" / "jobs.json").read_text()) for order in ("fwd", "rev")}
    ids = {job["id"] for record in chains.values() for job in record["jobs"].values()}
    assert len(ids) == 6  # two chains of three jobs
    try:
        wait_until(lambda: queue_is_empty(ids), "both chains to end", RunLayout.of(load_config(None, args)),
                   time.monotonic() + DEADLINE_S)
    finally:
        subprocess.run(["scancel", *ids], check=False, capture_output=True)
    for order, names in (("fwd", ["sentiment", "geography"]), ("rev", ["geography", "sentiment"])):
        tasks = out / order / "slm" / "tasks"
        done = [tasks / f"{i}-{name}" / "DONE" for i, name in enumerate(names)]
        logs = "\n".join(read(p)[-1500:] for p in sorted((out / order / "logs").glob("*.*")) if p.is_file())
        assert all(p.is_file() for p in done), logs
        assert done[0].stat().st_mtime <= done[1].stat().st_mtime
        assert (out / order / "slm" / "eval" / "report.md").is_file(), logs
        assert chains[order]["jobs"]["train"]["name"] == f"default-{order}-slm-train"
    assert cli.main(["report", *args]) == 0
    assert json.loads((out / "orders.json").read_text())["methods"][0]["complete_runs"] == 2


# ---- faults 26-28 of docs/faults.md through the real batch script and a real signal -------------------


def _long_single_task(tmp_path: Path, model: str) -> Submitted:
    """One task of many steps on the tiny model, a checkpoint after every step: long enough to be
    signalled mid-training, short enough for CI."""
    return submit([f"output_dir={tmp_path / 'signals'}", f"model.name_or_path={model}", "data.synthetic_size=40",
                   "train.max_steps=400", "train.save_every=1", "train.keep_checkpoints=1", "dtkr.key_epochs=1",
                   "eval.max_records_per_task=4", "model.max_seq_len=64",
                   "tasks=[{name: sentiment, source: {type: synthetic, generator: sentiment}}]"])


def _signal_after_first_checkpoint(run: Submitted, *signals: str) -> str:
    """Send `signals` to the training task's batch shell (as Slurm and scancel do) once it has
    checkpointed a step; wait for every job to end; return the task's log."""
    deadline = time.monotonic() + DEADLINE_S
    state = run.layout.train_state(0, run.cfg.tasks[0].name)
    wait_until(lambda: any(state.glob("step-*/COMPLETE")), "the first checkpoint", run.layout, deadline)
    for sig in signals:
        subprocess.run(["scancel", f"--signal={sig}", "--batch", f"{run.jobs['train']}_0"], check=True)
        time.sleep(0.2)
    try:
        wait_until(lambda: queue_is_empty(run.ids), "the jobs to end", run.layout, deadline)
    finally:
        subprocess.run(["scancel", *run.ids], check=False, capture_output=True)
    return read(run.log(0)) + read(run.log(0, "err"))


def test_sigterm_checkpoints_and_stops_the_task_with_143_and_no_requeue(local_slurm, tmp_path, tiny_model_dir) -> None:
    """Fault 27: SIGTERM (scancel, a drain) to the batch shell."""
    run = _long_single_task(tmp_path, tiny_model_dir)
    log = _signal_after_first_checkpoint(run, "TERM")
    assert "got SIGTERM" in log and "not requeued" in log and "requeueing" not in log, log
    assert restart_of(log) == [0], log
    assert not (run.layout.task_dir(0, "sentiment") / "DONE").exists()
    assert any((run.layout.train_state(0, "sentiment")).glob("step-*/COMPLETE")), log  # the checkpoint to resume
    job = status.recent_jobs(run.jobs["train"])[0]
    assert job.state in ("FAILED", "CANCELLED") and job.exit_code.startswith("143"), job


def test_sigterm_during_a_usr1_checkpoint_wins_no_requeue(local_slurm, tmp_path, tiny_model_dir) -> None:
    """Fault 28: USR1 (time limit near), then SIGTERM while that checkpoint is being saved."""
    run = _long_single_task(tmp_path, tiny_model_dir)
    log = _signal_after_first_checkpoint(run, "USR1", "TERM")
    assert "got SIGUSR1" in log and "got SIGTERM" in log, log
    assert "not requeued" in log and "requeueing" not in log and restart_of(log) == [0], log
