"""Slurm job scripts: golden files, quoting, the preemption signal, and `slm submit` without Slurm.

The golden files in tests/slurm/golden/ pin every rendered script. After an intended change of the
templates, regenerate them with `SLM_UPDATE_GOLDEN=1 pytest tests/slurm/test_slurm_render.py` and
review the diff.
"""

from __future__ import annotations

import difflib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import cli, slurm
from pipeline.config import ExperimentConfig
from pipeline.errors import SlmError
from pipeline.experiment import load_config
from pipeline.state.layout import RunLayout

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("SLM_UPDATE_GOLDEN") == "1"
PYTHON = "/opt/slm/.venv/bin/python"  # a fixed interpreter path keeps the goldens machine-independent
WEIRD_DIR = "/scratch/team runs/it's \"v2\"; rm -rf x"

SHAPES: dict[str, list[str]] = {
    "1n1g": ["output_dir=/scratch/slm/runs/default", "slurm.train.gpus_per_node=1"],
    "4n8g": [
        f"output_dir={WEIRD_DIR}", "slurm.partition=gpu", "slurm.account=proj-42", "slurm.qos=high",
        "slurm.constraint=a100&ib", "slurm.signal_seconds=300",
        "slurm.extra_sbatch=['--exclusive', '#SBATCH --mail-type=FAIL']",
        "slurm.setup=['module load cuda/12.4', 'source /opt/slm/.venv/bin/activate']",
        "slurm.train.nodes=4", "slurm.train.gpus_per_node=8", "slurm.train.cpus_per_task=64",
        "slurm.train.mem=480G", "slurm.train.time=2-00:00:00", "slurm.finish.gpus_per_node=1",
    ],
}


def shape_config(shape: str) -> ExperimentConfig:
    return load_config(None, SHAPES[shape])


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.is_file(), f"{path} is missing: create it with SLM_UPDATE_GOLDEN=1 pytest {__file__}"
    expected = path.read_text()
    diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), str(path), "rendered"))
    assert text == expected, (f"the rendered script differs from {path}:\n{diff}\nIf this change is intended, "
                              f"delete/regenerate the golden file: SLM_UPDATE_GOLDEN=1 pytest {__file__}")


@pytest.mark.parametrize("kind", slurm.JOB_KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_rendered_scripts_match_the_golden_files(shape: str, kind: str) -> None:
    cfg = shape_config(shape)
    assert_golden(f"{shape}-{kind}.sbatch", slurm.render_sbatch(cfg, RunLayout.of(cfg), kind, PYTHON))


def sbatch_options(script: str) -> dict[str, str]:
    """The #SBATCH options as sbatch reads them (values unquoted the way a shell would)."""
    opts = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = shlex.split(line[len("#SBATCH --"):])[0].partition("=")
            opts[key] = value
    return opts


def test_sbatch_flags_are_sorted_and_site_options_appear_only_when_set() -> None:
    small, big = (shape_config(s) for s in SHAPES)
    text = slurm.render_sbatch(small, RunLayout.of(small), "train", PYTHON)
    ours = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert ours == sorted(ours)
    opts = sbatch_options(text)
    assert not {"partition", "account", "qos", "constraint"} & set(opts)
    assert opts["array"] == "0-2%1" and opts["gpus-per-node"] == "1" and "requeue" in opts
    big_opts = sbatch_options(slurm.render_sbatch(big, RunLayout.of(big), "train", PYTHON))
    assert big_opts["partition"] == "gpu" and big_opts["constraint"] == "a100&ib" and big_opts["nodes"] == "4"
    assert "exclusive" in big_opts and big_opts["mail-type"] == "FAIL"
    assert "gpus-per-node" not in sbatch_options(slurm.render_sbatch(small, RunLayout.of(small), "prepare", PYTHON))


def test_weird_output_dir_survives_sbatch_and_bash_quoting(tmp_path: Path) -> None:
    cfg = shape_config("4n8g")
    layout = RunLayout.of(cfg)
    text = slurm.render_sbatch(cfg, layout, "train", PYTHON)
    opts = sbatch_options(text)
    assert opts["output"] == f"{WEIRD_DIR}/logs/%x-%A_%a.out"
    script = tmp_path / "train.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # Evaluate the path assignments exactly as the job would, and print them back.
    lines = [line for line in text.splitlines() if line.startswith(("CONFIG=", "DONE_MARKERS="))]
    probe = "\n".join([*lines, 'printf "%s\\n" "$CONFIG" "${DONE_MARKERS[@]}"'])
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout
    markers = [str(layout.task_dir(i, t.name) / "DONE") for i, t in enumerate(cfg.tasks)]
    assert out.splitlines() == [str(slurm.config_path(layout)), *markers]


def test_a_percent_sign_in_output_dir_is_escaped_for_slurm_log_patterns() -> None:
    cfg = load_config(None, ["output_dir=/scratch/100%/run"])
    assert sbatch_options(slurm.render_sbatch(cfg, RunLayout.of(cfg), "prepare", PYTHON))["output"] == \
        "/scratch/100%%/run/logs/%x-%j.out"


def test_the_preemption_signal_comes_from_one_constant(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = shape_config("1n1g")
    usr1 = slurm.render_sbatch(cfg, RunLayout.of(cfg), "train", PYTHON)
    assert "--signal=B:USR1@120" in usr1 and "trap on_preempt USR1" in usr1
    monkeypatch.setattr(slurm, "PREEMPT_SIGNAL_NAME", "USR2")
    usr2 = slurm.render_sbatch(cfg, RunLayout.of(cfg), "train", PYTHON)
    assert "USR1" not in usr2
    for needle in ("--signal=B:USR2@120", "trap on_preempt USR2", 'kill -USR2 "$STEP_PID"', "SIGUSR2,SIGTERM"):
        assert needle in usr2


def test_a_newline_in_output_dir_is_refused_before_it_reaches_an_sbatch_line(capsys) -> None:
    # output_dir is no Slurm value, but it lands in #SBATCH --output=...: a newline there would end
    # the comment line and the batch shell would run the rest.
    assert cli.main(["submit", "--dry-run", 'output_dir="/tmp/a\\nrm -rf ~"']) == 2
    captured = capsys.readouterr()
    assert "control character" in captured.err and "output_dir" in captured.err
    assert "#SBATCH" not in captured.out


def test_sbatch_commands_chain_each_job_after_the_one_before() -> None:
    layout = RunLayout.of(shape_config("1n1g"))
    lines = slurm.sbatch_commands(layout)
    assert lines == [
        "PREPARE_JOB=$(sbatch --parsable /scratch/slm/runs/default/slurm/slm/prepare.sbatch)",
        "TRAIN_JOB=$(sbatch --parsable --dependency=afterok:$PREPARE_JOB "
        "/scratch/slm/runs/default/slurm/slm/train.sbatch)",
        "FINISH_JOB=$(sbatch --parsable --dependency=afterok:$TRAIN_JOB "
        "/scratch/slm/runs/default/slurm/slm/finish.sbatch)",
    ]
    assert slurm.sbatch_argv(Path("/x/a b.sbatch"), "12") == \
        ["sbatch", "--parsable", "--dependency=afterok:12", "/x/a b.sbatch"]


def test_the_resolved_config_carries_overrides_and_absolute_paths(write_yaml, tmp_path: Path) -> None:
    src = write_yaml({"output_dir": str(tmp_path / "out"), "train": {"deepspeed": "ds/z2.json"},
                      "tasks": [{"name": "a", "source": {"type": "file", "path": "data/a.jsonl"}}]})
    cfg = load_config(src, ["train.max_steps=7"])
    layout = RunLayout.of(cfg)
    copy = tmp_path / "copy" / "config.yaml"
    copy.parent.mkdir()
    copy.write_text(slurm.resolved_config_yaml(cfg, layout))
    again = load_config(copy)  # loaded from another folder: paths must not move
    assert again.train.max_steps == 7
    assert again.resolve_source_path(again.tasks[0].source.path) == tmp_path / "data" / "a.jsonl"
    assert again.deepspeed_config_path() == tmp_path / "ds" / "z2.json"
    assert again.model_dump(exclude={"config_dir", "tasks", "train"}) == \
        cfg.model_dump(exclude={"config_dir", "tasks", "train"})


# ---- slm submit without a cluster ------------------------------------------------------------------


@pytest.fixture
def fixed_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", PYTHON)


def fake_plan(monkeypatch: pytest.MonkeyPatch, fits: bool) -> None:
    import pipeline.planning.checks

    monkeypatch.setattr(pipeline.planning.checks, "check_fits", lambda cfg, method: (fits, "PLAN TABLE"))


@pytest.mark.parametrize("shape", SHAPES)
def test_dry_run_prints_exactly_the_golden_scripts(shape: str, fixed_python, monkeypatch, capsys) -> None:
    fake_plan(monkeypatch, fits=True)
    assert cli.main(["submit", "--dry-run", *SHAPES[shape]]) == 0
    out = capsys.readouterr().out
    layout = RunLayout.of(shape_config(shape))
    expected = ["PLAN TABLE"]
    for kind in slurm.JOB_KINDS:
        expected += [f"# ==== {slurm.script_path(layout, kind)} ====", (GOLDEN / f"{shape}-{kind}.sbatch").read_text()]
    expected += ["# ==== submit (each job waits for the one before) ====", *slurm.sbatch_commands(layout)]
    position = 0
    for chunk in expected:  # every piece, in order, verbatim
        found = out.find(chunk, position)
        assert found >= 0, f"missing from the dry run output:\n{chunk}"
        position = found + len(chunk)
    assert not (layout.base / "slurm").exists()


def test_a_plan_that_does_not_fit_is_refused_unless_ignore_plan(tmp_path, monkeypatch, capsys) -> None:
    fake_plan(monkeypatch, fits=False)
    args = ["submit", f"output_dir={tmp_path}", "slurm.train.gpus_per_node=8"]
    assert cli.main(args) == 2
    assert "--ignore-plan" in capsys.readouterr().err
    from pipeline.stages import submit

    def stop() -> None:
        raise SlmError("stopped before sbatch")

    monkeypatch.setattr(submit, "require_sbatch", stop)
    assert cli.main([*args, "--ignore-plan"]) == 2
    captured = capsys.readouterr()
    assert "PLAN TABLE" in captured.out and "stopped before sbatch" in captured.err


def test_without_sbatch_submit_says_how_to_get_a_slurm(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert cli.main(["submit", f"output_dir={tmp_path}"]) == 2
    assert "scripts/local_slurm.sh start" in capsys.readouterr().err


def write_stub(folder: Path, name: str, body: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text("#!/bin/bash\n" + body)
    (folder / name).chmod(0o755)


def test_submit_writes_scripts_and_chains_the_jobs(tmp_path, monkeypatch, capsys) -> None:
    bin_dir = tmp_path / "bin"
    write_stub(bin_dir, "sbatch", 'echo "$*" >> "$STUB_LOG"; n=$(wc -l < "$STUB_LOG"); echo "$((100 + n));local"\n')
    write_stub(bin_dir, "squeue", "exit 0\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("STUB_LOG", str(tmp_path / "sbatch.log"))
    out_dir = tmp_path / "out dir"
    assert cli.main(["submit", f"output_dir={out_dir}", "train.max_steps=3"]) == 0
    layout = RunLayout.of(load_config(None, [f"output_dir={out_dir}"]))
    calls = (tmp_path / "sbatch.log").read_text().splitlines()
    assert calls == [f"--parsable {slurm.script_path(layout, 'prepare')}",
                     f"--parsable --dependency=afterok:101 {slurm.script_path(layout, 'train')}",
                     f"--parsable --dependency=afterok:102 {slurm.script_path(layout, 'finish')}"]
    record = json.loads((slurm.script_dir(layout) / "jobs.json").read_text())
    assert {k: v["id"] for k, v in record["jobs"].items()} == {"prepare": "101", "train": "102", "finish": "103"}
    assert load_config(slurm.config_path(layout)).train.max_steps == 3
    assert layout.logs.is_dir()
    assert "slm status -c" in capsys.readouterr().out
    # A second submission while the first is still queued is refused.
    write_stub(bin_dir, "squeue", 'echo "102|1|RUNNING|None"\n')
    assert cli.main(["submit", f"output_dir={out_dir}"]) == 2
    assert "still queued" in capsys.readouterr().err


def test_a_failed_sbatch_cancels_the_jobs_already_submitted(tmp_path, monkeypatch, capsys) -> None:
    bin_dir = tmp_path / "bin"
    write_stub(bin_dir, "sbatch", '[[ $* == *train.sbatch ]] && { echo "bad partition" >&2; exit 1; }; echo 7\n')
    write_stub(bin_dir, "scancel", 'echo "$*" > "$STUB_LOG"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("STUB_LOG", str(tmp_path / "scancel.log"))
    assert cli.main(["submit", f"output_dir={tmp_path}"]) == 2
    assert "bad partition" in capsys.readouterr().err
    assert (tmp_path / "scancel.log").read_text().split() == ["7"]


# ---- the train script's preemption trap, in bash, with stub Slurm commands ----------------------------

FAKE_TRAINER = """\
if [[ " $* " == *" prepare "* ]]; then echo "$*" >> "$FAKE_DIR/prepare.log"; exit 0; fi
if [[ " $* " == *" --check "* ]]; then echo "$*" >> "$FAKE_DIR/check.log"; exit "${FAKE_CHECK_RC:-0}"; fi
if [[ " $* " == *" master-port "* ]]; then echo 29400; exit 0; fi
echo "$*" > "$FAKE_DIR/args"
case $FAKE_MODE in
  preempt)
    trap 'echo "got USR1" >> "$FAKE_DIR/trainer.log"; exit 75' USR1
    trap 'echo "got TERM" >> "$FAKE_DIR/trainer.log"; exit 143' TERM
    touch "$FAKE_DIR/started"
    while :; do sleep 0.05; done ;;
  slow_checkpoint)  # still saving after USR1 when SIGTERM comes
    trap 'echo "got USR1" >> "$FAKE_DIR/trainer.log"' USR1
    trap 'echo "got TERM" >> "$FAKE_DIR/trainer.log"; exit 143' TERM
    touch "$FAKE_DIR/started"
    while :; do sleep 0.05; done ;;
  done) mkdir -p "$DONE_DIR" && touch "$DONE_DIR/DONE" ;;
  fail) exit 7 ;;
esac
"""


@pytest.fixture
def fake_cluster(tmp_path: Path) -> dict[str, str]:
    return fake_cluster_env(tmp_path)


def fake_cluster_env(tmp_path: Path) -> dict[str, str]:
    """Stubs for srun (runs its command), scontrol and squeue (log their arguments), and a fake
    trainer as the interpreter; the environment of array task 1 of job 100."""
    bin_dir = tmp_path / "bin"
    write_stub(bin_dir, "srun", 'while [[ $1 == --* ]]; do shift; done; exec "$@"\n')
    write_stub(bin_dir, "scontrol", 'echo "$*" >> "$FAKE_DIR/scontrol.log"\n'
                                    '[[ $1 == show ]] && echo node1\nexit 0\n')
    write_stub(bin_dir, "squeue", 'echo "$*" >> "$FAKE_DIR/squeue.log"; echo -n "$FAKE_SQUEUE"\n')
    write_stub(bin_dir, "python", FAKE_TRAINER)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DIR": str(tmp_path),
            "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "102",
            "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "node1",
            "SLURM_CPUS_PER_TASK": "2", "SLURM_RESTART_COUNT": "0", "FAKE_SQUEUE": "", "FAKE_MODE": "done"}


def train_script(tmp_path: Path, env: dict[str, str], previous_done: bool = True,
                 overrides: tuple[str, ...] = ()) -> Path:
    """The rendered train script for an output_dir with a space in it; task 0 DONE if asked."""
    cfg = load_config(None, [f"output_dir={tmp_path / 'out dir'}", *overrides])
    layout = RunLayout.of(cfg)
    if previous_done:
        layout.task_dir(0, cfg.tasks[0].name).mkdir(parents=True)
        (layout.task_dir(0, cfg.tasks[0].name) / "DONE").write_text("{}")
    env["DONE_DIR"] = str(layout.task_dir(1, cfg.tasks[1].name))
    script = tmp_path / "train.sbatch"
    script.write_text(slurm.render_sbatch(cfg, layout, "train", str(tmp_path / "bin" / "python")))
    return script


def read(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    return path.read_text() if path.exists() else ""


def wait_for(path: Path, seconds: float = 10) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_usr1_to_the_batch_shell_reaches_training_and_requeues_the_task(tmp_path, fake_cluster) -> None:
    import signal

    fake_cluster["FAKE_MODE"] = "preempt"
    script = train_script(tmp_path, fake_cluster)
    proc = subprocess.Popen(["bash", str(script)], env=fake_cluster, stdout=subprocess.PIPE, text=True)
    wait_for(tmp_path / "started")
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert read(tmp_path, "trainer.log") == "got USR1\n"
    scontrol = read(tmp_path, "scontrol.log").splitlines()
    # The later tasks are held first, so the %1 throttle cannot start task 2 while task 1 waits.
    assert scontrol[-2:] == ["hold 100_[2-2]", "requeue 100_1"]
    args = read(tmp_path, "args")
    assert "--node_rank=0 --nnodes=1 --nproc_per_node=1" in args and "--signals_to_handle=SIGUSR1," in args
    assert args.endswith(f"train -c {tmp_path}/out dir/slurm/slm/config.yaml --task 1\n")


def test_sigterm_to_the_batch_shell_checkpoints_and_stops_without_requeue(tmp_path, fake_cluster) -> None:
    import signal

    from pipeline.state.preemption import EXIT_TERMINATED

    fake_cluster["FAKE_MODE"] = "preempt"
    proc = subprocess.Popen(["bash", str(train_script(tmp_path, fake_cluster))], env=fake_cluster,
                            stdout=subprocess.PIPE, text=True)
    wait_for(tmp_path / "started")
    proc.send_signal(signal.SIGTERM)  # what scancel sends
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == EXIT_TERMINATED, out
    assert read(tmp_path, "trainer.log") == "got TERM\n"
    assert "requeue" not in read(tmp_path, "scontrol.log") and "hold" not in read(tmp_path, "scontrol.log")
    assert "not requeued" in out


def test_sigterm_after_usr1_wins_and_the_task_is_not_requeued(tmp_path, fake_cluster) -> None:
    import signal

    from pipeline.state.preemption import EXIT_TERMINATED

    fake_cluster["FAKE_MODE"] = "slow_checkpoint"
    proc = subprocess.Popen(["bash", str(train_script(tmp_path, fake_cluster))], env=fake_cluster,
                            stdout=subprocess.PIPE, text=True)
    wait_for(tmp_path / "started")
    proc.send_signal(signal.SIGUSR1)
    wait_for_text(tmp_path / "trainer.log", "got USR1")
    proc.send_signal(signal.SIGTERM)  # the user cancels while the preemption checkpoint is saved
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == EXIT_TERMINATED, out
    assert read(tmp_path, "trainer.log") == "got USR1\ngot TERM\n"
    assert "requeue" not in read(tmp_path, "scontrol.log")


def wait_for_text(path: Path, text: str, seconds: float = 10) -> None:
    import time

    deadline = time.monotonic() + seconds
    while text not in read(path.parent, path.name):
        assert time.monotonic() < deadline, f"{text!r} did not appear in {path}"
        time.sleep(0.05)


def test_a_task_that_finishes_exits_0_without_requeue(tmp_path, fake_cluster) -> None:
    proc = subprocess.run(["bash", str(train_script(tmp_path, fake_cluster))], env=fake_cluster,
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "requeue" not in read(tmp_path, "scontrol.log")
    assert "task 1 DONE" in proc.stdout


def test_a_failing_task_exits_non_zero_without_requeue(tmp_path, fake_cluster) -> None:
    fake_cluster["FAKE_MODE"] = "fail"
    proc = subprocess.run(["bash", str(train_script(tmp_path, fake_cluster))], env=fake_cluster,
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 7
    assert "requeue" not in read(tmp_path, "scontrol.log")


def test_a_task_whose_previous_task_is_not_done_fails_fast(tmp_path, fake_cluster) -> None:
    from pipeline.state.preemption import EXIT_PREVIOUS_NOT_DONE

    proc = subprocess.run(["bash", str(train_script(tmp_path, fake_cluster, previous_done=False))],
                          env=fake_cluster, capture_output=True, text=True, timeout=20)
    assert proc.returncode == EXIT_PREVIOUS_NOT_DONE
    assert "task 0 is not DONE" in proc.stdout
    assert not (tmp_path / "args").exists()  # training never started


def test_a_task_whose_previous_task_was_requeued_waits_on_hold_behind_it(tmp_path, fake_cluster) -> None:
    fake_cluster["FAKE_SQUEUE"] = "PENDING\n"
    proc = subprocess.run(["bash", str(train_script(tmp_path, fake_cluster, previous_done=False))],
                          env=fake_cluster, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0
    assert read(tmp_path, "scontrol.log").splitlines() == ["hold 100_[2-2]", "requeuehold 100_1"]
    assert not (tmp_path / "args").exists()


def test_a_restarted_task_releases_the_later_tasks(tmp_path, fake_cluster) -> None:
    fake_cluster["SLURM_RESTART_COUNT"] = "1"
    subprocess.run(["bash", str(train_script(tmp_path, fake_cluster))], env=fake_cluster,
                   capture_output=True, text=True, timeout=20, check=True)
    assert read(tmp_path, "scontrol.log").splitlines()[0] == "release 100_[2-2]"


@pytest.mark.parametrize(("check_rc", "code", "trains"), [(0, 0, False), (2, 2, False), (1, 0, True)],
                         ids=["valid-done-skips", "stale-done-fails", "unfinished-trains"])
def test_a_task_with_a_done_marker_is_skipped_only_if_slm_train_check_accepts_it(
        tmp_path, fake_cluster, check_rc: int, code: int, trains: bool) -> None:
    script = train_script(tmp_path, fake_cluster)
    Path(fake_cluster["DONE_DIR"]).mkdir(parents=True)
    (Path(fake_cluster["DONE_DIR"]) / "DONE").write_text("{}")
    fake_cluster["FAKE_CHECK_RC"] = str(check_rc)
    proc = subprocess.run(["bash", str(script)], env=fake_cluster, capture_output=True, text=True, timeout=20)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert read(tmp_path, "check.log").endswith(f"train --task 1 --check -c {tmp_path}/out dir/slurm/slm/config.yaml\n")
    # before the check: prepare what is missing (the task of a sequence that grew has no prepare job)
    assert read(tmp_path, "prepare.log") == f"-m pipeline.cli prepare -c {tmp_path}/out dir/slurm/slm/config.yaml\n"
    assert (tmp_path / "args").exists() == trains
    if check_rc == 2:
        assert "does not match the current inputs" in proc.stdout and "requeue" not in read(tmp_path, "scontrol.log")
