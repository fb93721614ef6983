"""The error path itself: bugs keep their traceback, user errors are one line.

The table in docs/faults.md lists each fault and what the user sees; keep the two in step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline import cli
from pipeline.errors import ConfigError
from pipeline.stages import prepare


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
    from pipeline.dtkr.keys import group_normalize
    from pipeline.error_report import user_message

    # pytest.raises, not try/except: the test fails when nothing is raised.
    with pytest.raises(ValueError) as err:
        group_normalize(torch.zeros(2, 10), 3)
    assert user_message(err.value) == ("dtkr.groups=3 does not divide the encoder dimension 10",
                                       "add --debug (or set SLM_DEBUG=1) for the full traceback")


def test_ctrl_c_exits_130_without_a_traceback(monkeypatch, capsys) -> None:
    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "main", interrupted)
    assert cli.main(["prepare"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
