"""The job scripts' edge cases around requeues, in bash with stub Slurm commands: a predecessor
that Slurm is requeueing (COMPLETING, REQUEUE_HOLD, ...), a step plus its checkpoint longer than
the signal leaves, the finish job's own requeue, and the rendezvous port."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pipeline import slurm
from pipeline.experiment import load_config
from pipeline.state.layout import RunLayout
from pipeline.state.preemption import EXIT_PREVIOUS_NOT_DONE, EXIT_TERMINATED, requeue_deadline
from tests.slurm.test_slurm_render import fake_cluster_env, read, train_script, wait_for, write_stub


@pytest.fixture
def cluster(tmp_path: Path) -> dict[str, str]:
    """fake_cluster_env, with an squeue that answers the states in $FAKE_DIR/states one call at a
    time (the last one for ever), filtered by `-t` as squeue filters (all: every state)."""
    env = fake_cluster_env(tmp_path)
    write_stub(tmp_path / "bin", "squeue", SQUEUE)
    return env


SQUEUE = """\
echo "$*" >> "$FAKE_DIR/squeue.log"
want=all
while (( $# )); do [[ $1 == -t ]] && want=$2; shift; done
f="$FAKE_DIR/states"; [[ -s $f ]] || exit 0
state=$(head -n1 "$f"); (( $(wc -l < "$f") > 1 )) && sed -i 1d "$f"
[[ $want == all || ,$want, == *,$state,* ]] && echo "$state"
exit 0
"""


def states(tmp_path: Path, *answers: str) -> None:
    (tmp_path / "states").write_text("".join(f"{a}\n" for a in answers))


@pytest.mark.parametrize("state", ["REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT", "REQUEUED", "PENDING"])
def test_a_task_whose_previous_task_slurm_is_requeueing_waits_on_hold_instead_of_failing(
        tmp_path, cluster, state: str) -> None:
    states(tmp_path, state)
    proc = subprocess.run(["bash", str(train_script(tmp_path, cluster, previous_done=False))], env=cluster,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # not 3: the finish job is not cancelled
    assert read(tmp_path, "scontrol.log").splitlines() == ["hold 100_[2-2]", "requeuehold 100_1"]
    assert f"queued again ({state})" in proc.stdout and not (tmp_path / "args").exists()


def test_a_previous_task_that_is_completing_is_waited_for_then_judged_by_its_next_state(tmp_path, cluster) -> None:
    states(tmp_path, "COMPLETING", "COMPLETING", "REQUEUED")
    proc = subprocess.run(["bash", str(train_script(tmp_path, cluster, previous_done=False))], env=cluster,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "queued again (REQUEUED)" in proc.stdout
    assert len(read(tmp_path, "squeue.log").splitlines()) == 3


def test_a_previous_task_that_completes_without_done_still_stops_the_chain(tmp_path, cluster) -> None:
    states(tmp_path, "COMPLETING", "FAILED")
    proc = subprocess.run(["bash", str(train_script(tmp_path, cluster, previous_done=False))], env=cluster,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_PREVIOUS_NOT_DONE and "task 0 is not DONE" in proc.stdout
    assert "requeue" not in read(tmp_path, "scontrol.log")


def test_a_step_and_checkpoint_longer_than_the_signal_leaves_is_requeued_before_the_time_limit(
        tmp_path, cluster) -> None:
    cluster["FAKE_MODE"] = "slow_checkpoint"  # USR1 reaches training, which does not stop
    script = train_script(tmp_path, cluster, overrides=("slurm.signal_seconds=4",))
    assert requeue_deadline(4) == 3
    proc = subprocess.Popen(["bash", str(script)], env=cluster, stdout=subprocess.PIPE, text=True)
    wait_for(tmp_path / "started")
    start = time.monotonic()
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert 2.5 <= time.monotonic() - start < 10
    assert "has not stopped 3 s after SIGUSR1" in out
    assert read(tmp_path, "scontrol.log").splitlines()[-2:] == ["hold 100_[2-2]", "requeue 100_1"]


def test_the_usual_preemption_does_not_wait_for_the_deadline(tmp_path, cluster) -> None:
    cluster["FAKE_MODE"] = "preempt"  # training checkpoints and exits 75 at once
    proc = subprocess.Popen(["bash", str(train_script(tmp_path, cluster))], env=cluster, stdout=subprocess.PIPE,
                            text=True)
    wait_for(tmp_path / "started")
    start = time.monotonic()
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and time.monotonic() - start < 30  # the 90 s timer died with the script
    assert "has not stopped" not in out and read(tmp_path, "scontrol.log").count("requeue 100_1") == 1


# ---- the finish job ---------------------------------------------------------------------------------

FAKE_STAGES = """\
echo "$*" >> "$FAKE_DIR/stages.log"
if [[ " $* " == *" eval --after 0 "* && -n ${FAKE_SLOW_ROW:-} ]]; then
  trap 'echo "row stopped" >> "$FAKE_DIR/stages.log"; exit 143' TERM
  touch "$FAKE_DIR/started"; while :; do sleep 0.05; done
fi
"""


def finish_script(tmp_path: Path, env: dict[str, str]) -> Path:
    write_stub(tmp_path / "bin", "python", FAKE_STAGES)
    cfg = load_config(None, [f"output_dir={tmp_path / 'out dir'}"])
    env["SLURM_JOB_ID"] = "200"
    script = tmp_path / "finish.sbatch"
    script.write_text(slurm.render_sbatch(cfg, RunLayout.of(cfg), "finish", str(tmp_path / "bin" / "python")))
    return script


def test_the_finish_job_asks_for_a_requeue_and_the_preemption_signal() -> None:
    cfg = load_config(None, [])
    opts = slurm.sbatch_options(cfg, RunLayout.of(cfg), "finish")
    assert opts["requeue"] is True and opts["signal"] == f"B:USR1@{cfg.slurm.signal_seconds}"
    assert "requeue" not in slurm.sbatch_options(cfg, RunLayout.of(cfg), "prepare")


def test_the_finish_job_runs_every_stage_in_order(tmp_path, cluster) -> None:
    proc = subprocess.run(["bash", str(finish_script(tmp_path, cluster))], env=cluster, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stages = [line.split(" -c ")[0] for line in read(tmp_path, "stages.log").splitlines()]
    rows = [f"-m pipeline.cli eval --after {i}" for i in (-1, 0, 1, 2)]  # the default's 3 tasks
    assert stages == ["-m pipeline.cli index", *rows, "-m pipeline.cli report"]


def _signal_during_a_slow_row(tmp_path, cluster, sig: signal.Signals) -> tuple[int, str]:
    """Start the finish job with an eval row that waits, send `sig` once the row started: (exit code, stdout)."""
    cluster["FAKE_SLOW_ROW"] = "1"
    proc = subprocess.Popen(["bash", str(finish_script(tmp_path, cluster))], env=cluster, stdout=subprocess.PIPE,
                            text=True)
    wait_for(tmp_path / "started")
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out


def test_usr1_during_an_eval_row_requeues_the_finish_job(tmp_path, cluster) -> None:
    code, out = _signal_during_a_slow_row(tmp_path, cluster, signal.SIGUSR1)
    assert code == 0, out
    assert read(tmp_path, "scontrol.log").splitlines() == ["requeue 200"]
    log = read(tmp_path, "stages.log")
    assert "row stopped" in log and "report" not in log  # the rerun does the rest, skipping done rows


def test_sigterm_stops_the_finish_job_without_a_requeue(tmp_path, cluster) -> None:
    code, out = _signal_during_a_slow_row(tmp_path, cluster, signal.SIGTERM)
    assert code == EXIT_TERMINATED, out
    assert "requeue" not in read(tmp_path, "scontrol.log")


# ---- the rendezvous port --------------------------------------------------------------------------


def test_the_master_port_is_below_the_ephemeral_range_and_follows_the_job_id() -> None:
    low, _ = slurm.ephemeral_ports()
    for job in (1, 49_999, 123_456_789):
        port = slurm.master_port(job, is_free=lambda p: True)
        assert slurm.MASTER_PORT_LOW <= port < low
    # the old rule, 10000 + id % 50000, gave 59999 for job 49999: inside Linux's 32768-60999
    assert slurm.master_port(49_999, (32768, 60999), lambda p: True) < 32768
    assert slurm.master_port(7, (32768, 60999), lambda p: True) != slurm.master_port(8, (32768, 60999),
                                                                                     lambda p: True)


def test_a_port_that_is_taken_is_skipped() -> None:
    first = slurm.master_port(4242, is_free=lambda p: True)
    with socket.socket() as taken:
        taken.bind(("", first))
        taken.listen()
        assert not slurm.port_is_free(first)
        assert slurm.master_port(4242) == first + 1


def test_the_train_script_takes_its_port_from_pipeline_slurm(tmp_path, cluster) -> None:
    script = train_script(tmp_path, cluster).read_text()
    assert 'MASTER_PORT=$("$PYTHON" -m pipeline.slurm master-port "$SLURM_JOB_ID")' in script
    out = subprocess.run([".venv/bin/python", "-m", "pipeline.slurm", "master-port", "4242"], capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[2], check=True).stdout
    assert int(out) == slurm.master_port(4242)


def test_training_warns_once_when_a_step_and_its_checkpoint_outlast_the_requeue_deadline(monkeypatch, capsys) -> None:
    from pipeline.stages import train

    cfg = load_config(None, ["slurm.signal_seconds=4"])  # the script requeues 3 s after USR1
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    budget = train._StopBudget(cfg)
    clock = iter([0.0, 2.0, 10.0, 12.5, 20.0, 22.0, 30.0, 33.0])  # step 2 s, checkpoint 2.5 s, twice
    monkeypatch.setattr(train.time, "monotonic", lambda: next(clock))
    for _ in range(2):
        with budget.timing("step"):
            pass
        with budget.timing("save"):
            pass
    out = capsys.readouterr().out
    assert out.count("warning: a step (2 s) plus a checkpoint (2 s) take longer than the 3 s") == 1
    assert "set slurm.signal_seconds=16 or more" in out
    monkeypatch.delenv("SLURM_JOB_ID")
    assert train._StopBudget(cfg).warned  # outside Slurm nothing signals before a limit
