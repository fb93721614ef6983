"""The `slm` command line as a new user meets it: --version, bare `slm`, typos, overrides, hints, logs."""

from __future__ import annotations

import logging

import pytest

from pipeline.cli import COMMANDS, build_parser, command_module, needs_experiment, version
from pipeline.cli import main as slm

# The positional arguments a command needs before its overrides.
REQUIRED_POSITIONALS = {"generate": ["what is a cat?"], "forget": ["--task", "sentiment"]}


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as done:
        slm(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"slm {version()}"


def test_bare_slm_prints_the_help_and_succeeds(capsys):
    assert slm([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: slm") and all(command in out for command in COMMANDS)


def test_a_mistyped_command_gets_one_did_you_mean_line(capsys):
    assert slm(["trian"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: unknown command 'trian'; did you mean `slm train`?"
    assert err[1].startswith("hint: `slm --help` lists the commands")
    assert slm(["--debug", "xyzzy"]) == 2
    assert "did you mean" not in capsys.readouterr().err  # nothing close: no guess


def test_a_mistyped_top_level_key_gets_one_short_line_with_a_suggestion(capsys):
    assert slm(["plan", "trian.lr=1"]) == 2
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.strip().startswith("trian:"))
    assert "did you mean 'train'?" in line
    assert "TrainSpec(" not in err and "ModelSpec(" not in err  # no pydantic repr of the sections
    assert len(line) < 400


def test_a_missing_experiment_file_gets_a_hint_about_the_path_not_about_a_key(tmp_path, capsys):
    assert slm(["plan", "-c", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "no such experiment file" in err
    hint = next(x for x in err.splitlines() if x.startswith("hint:"))
    assert "key" not in hint and "-c" in hint


# Commands that work on no experiment (NEEDS_EXPERIMENT = False) take no overrides.
EXPERIMENT_COMMANDS = [c for c in COMMANDS if needs_experiment(command_module(c))]


def test_only_the_configs_command_works_without_an_experiment():
    assert sorted(set(COMMANDS) - set(EXPERIMENT_COMMANDS)) == ["configs"]


@pytest.mark.parametrize("command", EXPERIMENT_COMMANDS)
def test_every_command_takes_key_value_overrides_as_arguments(command):
    args = build_parser().parse_args([command, *REQUIRED_POSITIONALS.get(command, []), "methods.slm.lr=0.5"])
    assert args.overrides == ["methods.slm.lr=0.5"]


def test_generate_applies_a_positional_override_like_every_other_command(tmp_path, capsys):
    # output_dir from the override: the error names it, so the override was applied (no model loads).
    assert slm(["generate", "what is a cat?", f"output_dir={tmp_path / 'elsewhere'}"]) == 2
    assert str(tmp_path / "elsewhere") in capsys.readouterr().err
    assert slm(["generate", "what is a cat?", "--set", f"output_dir={tmp_path / 'old'}"]) == 2  # --set still works
    assert str(tmp_path / "old") in capsys.readouterr().err


def test_deepspeeds_cpu_notice_stays_out_of_stdout_and_its_warnings_go_to_stderr(capsys):
    from pipeline.runtime.library_logs import route_library_logs

    route_library_logs(debug=False)  # before DeepSpeed's import, which logs the CPU notice the first time
    from deepspeed.utils import logger as deepspeed_logger

    deepspeed_logger.warning("Setting accelerator to CPU. If you have GPU or other accelerator, ...")
    deepspeed_logger.warning("something a user should see")
    out, err = capsys.readouterr()
    assert out == ""  # DeepSpeed's own handler writes to stdout: it never got the records
    assert err.splitlines() == ["[deepspeed] warning: something a user should see"]
    route_library_logs(debug=True)
    deepspeed_logger.warning("Setting accelerator to CPU.")
    assert capsys.readouterr().err == "[deepspeed] info: Setting accelerator to CPU.\n"
    route_library_logs(debug=False)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
