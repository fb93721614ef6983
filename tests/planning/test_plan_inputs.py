"""Plan and submit inputs: no plan for no hardware, "nothing fits" names the smallest change that
does, and `slurm.setup` paths are fixed at submit time."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main as slm
from pipeline.errors import ConfigError
from pipeline.experiment import load_experiment
from pipeline.planning.checks import check_fits
from pipeline.planning.memory import plan_memory, recommend
from pipeline.slurm import resolve_setup


@pytest.mark.parametrize("flag, value", [("--nodes", "0"), ("--gpus-per-node", "0"), ("--gpus-per-node", "-2"),
                                         ("--gpu-mem-gib", "-5"), ("--gpu-mem-gib", "0")])
def test_a_plan_for_no_hardware_is_an_error_naming_the_flag(flag: str, value: str, capsys) -> None:
    assert slm(["plan", "-c", "llama2_7b.yaml", flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} {float(value):g}: ") and "hint: give positive values" in err


@pytest.mark.parametrize("value", ["-1", "0", "nan", "lots"])
def test_a_gpu_memory_from_the_environment_must_be_a_positive_number(value: str, monkeypatch) -> None:
    monkeypatch.setenv("SLM_GPU_MEM_GIB", value)
    with pytest.raises(ConfigError, match="SLM_GPU_MEM_GIB"):
        exp = load_experiment("llama2_7b.yaml")
        check_fits(exp.cfg, exp.method)


def test_nothing_fits_exits_1_with_the_smallest_change_and_that_change_fits(capsys) -> None:
    assert slm(["plan", "-c", "llama2_7b.yaml", "--gpus-per-node", "1", "--gpu-mem-gib", "6"]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("nothing fits on 1 x 1 GPUs of 6 GiB"))
    assert "the smallest change that fits: train.micro_batch_size=2 train.grad_accum=16" in line
    assert "GPUs of at least 7 GiB" in line
    smaller = load_experiment("llama2_7b.yaml", ["train.micro_batch_size=2", "train.grad_accum=16"])
    assert recommend(plan_memory(smaller.cfg, smaller.method, 1, 1, 6.0)) is not None
    larger = load_experiment("llama2_7b.yaml", ["train.micro_batch_size=3"])
    assert recommend(plan_memory(larger.cfg, larger.method, 1, 1, 6.0)) is None


def test_submit_refuses_what_does_not_fit_and_names_the_change(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SLM_GPU_MEM_GIB", "6")
    args = ["submit", "-c", "llama2_7b.yaml", f"output_dir={tmp_path}", "slurm.train.gpus_per_node=1",
            "slurm.setup=[]"]
    assert slm(args) == 2
    out = capsys.readouterr().out
    assert "nothing fits on 1 x 1 GPUs of 6 GiB; the smallest change that fits: train.micro_batch_size=2" in out
    assert not any(tmp_path.iterdir())


def test_setup_source_paths_are_made_absolute_from_the_submit_folder(tmp_path: Path) -> None:
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "activate").write_text("")
    lines = ["module load cuda/12.4", "source venv/bin/activate", ". ./venv/bin/activate",
             "source $HOME/env.sh", "source /opt/site/env.sh", "export PYTHON=python"]
    assert resolve_setup(lines, tmp_path) == [
        "module load cuda/12.4", f"source {tmp_path}/venv/bin/activate", f". {tmp_path}/venv/bin/activate",
        "source $HOME/env.sh", "source /opt/site/env.sh", "export PYTHON=python"]


def test_a_relative_setup_file_that_is_not_there_is_an_error_at_submit(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert slm(["submit", "--dry-run", "-c", "llama2_7b.yaml", f"output_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert f"slurm.setup entry 0 `source .venv/bin/activate`: {tmp_path}/.venv/bin/activate does not exist" in err
    assert "hint: run `slm submit` from the folder that holds .venv/bin/activate" in err
