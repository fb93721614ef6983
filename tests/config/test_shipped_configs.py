"""Every shipped config through every stage of its Slurm jobs, offline, as a cluster would run them.

For each file in pipeline/configs/: `slm submit` (a stub sbatch) writes one chain per task order;
for each chain, every stage its scripts run is called with `--check` against the resolved
config the jobs read (the train stage once per array task, eval once per row), and `slm plan`
plans it from the model shapes known offline (pipeline/planning/shapes.py). `--check` exits 0 or
1 for a stage that can run (done, or not yet) and 2 for one that would fail: a new config that
would fail on the cluster fails here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pipeline import cli, preflight, slurm
from pipeline.config import BUILTIN_CONFIGS
from pipeline.experiment import load_config
from pipeline.state.layout import RunLayout
from pipeline.state.orders import order_runs

SHIPPED = sorted(p.name for p in BUILTIN_CONFIGS.glob("*.yaml"))
# `slm X` (prepare, train), `stage X` (the finish job's requeue-aware runner), `-m pipeline.cli X` (torchrun)
STAGE_CALL = re.compile(r"(?:\bslm|\bstage|-m pipeline\.cli) (prepare|train|index|eval|report)\b")


@pytest.fixture
def submit_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A login node: a stub sbatch, a project folder with .venv/bin/activate to submit from."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/bash\nn=$(cat "$0.n" 2>/dev/null || echo 100); echo $((n + 1)) > '
                                    '"$0.n"; echo $((n + 1))\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("SLM_GPU_MEM_GIB", raising=False)
    project = tmp_path / "project"
    (project / ".venv" / "bin").mkdir(parents=True)
    (project / ".venv" / "bin" / "activate").write_text("# a venv's activate script\n")
    monkeypatch.chdir(project)
    return project


def local_sources(name: str, root: Path) -> Path:
    """A data_root holding a folder for every local source of config `name` (the checks look for
    the paths; the records themselves are prepare's business)."""
    cfg = load_config(name)
    for task in cfg.tasks:
        if task.source.type in preflight.LOCAL_SOURCE_TYPES and task.source.path:
            (root / task.source.path).mkdir(parents=True, exist_ok=True)
    return root


def stage_checks(script_text: str, tasks: int) -> list[list[str]]:
    """The `--check` call of every stage the script runs: train once per task, eval once per row."""
    calls = []
    for stage in dict.fromkeys(STAGE_CALL.findall(script_text)):
        if stage == "train":
            calls += [["train", "--task", str(i), "--check"] for i in range(tasks)]
        elif stage == "eval":
            calls += [["eval", "--after", str(i), "--check"] for i in range(-1, tasks)]
        else:
            calls.append([stage, "--check"])
    return calls


def submit_and_check(name: str, overrides: list[str], capsys) -> list[tuple[str, int, str]]:
    """Submit `name` as a user would, then run every rendered stage's --check and `slm plan` on
    each chain's resolved config: (command, exit code, stderr) of each call."""
    # --no-fetch: no hub here (tests/stages/test_fetch.py tests the fetch that a login node runs)
    assert cli.main(["submit", "--no-fetch", "-c", name, *overrides]) == 0, capsys.readouterr().err
    capsys.readouterr()
    results = []
    for run, run_cfg in order_runs(load_config(name, overrides)):
        layout = RunLayout.of(run_cfg)
        resolved = slurm.config_path(layout)
        cfg = load_config(resolved)
        assert cfg.orders is None and [t.name for t in cfg.tasks] == [t.name for t in run_cfg.tasks], run
        assert Path(cfg.output_dir) == layout.base and (not run or layout.base.name == run)
        scripts = "".join(slurm.script_path(layout, kind).read_text() for kind in slurm.JOB_KINDS)
        calls = stage_checks(scripts, len(cfg.tasks)) + [["plan"]]
        assert {c[0] for c in calls} == {"prepare", "train", "index", "eval", "report", "plan"}
        for call in calls:
            code = cli.main([*call, "-c", str(resolved)])
            results.append((f"{run or '-'}: slm {' '.join(call)}", code, capsys.readouterr().err))
    return results


@pytest.mark.parametrize("name", SHIPPED)
def test_every_stage_of_every_order_of_a_shipped_config_can_run_on_the_cluster(
        name: str, submit_machine: Path, tmp_path: Path, capsys) -> None:
    overrides = [f"output_dir={tmp_path / 'runs'}", f"data_root={local_sources(name, tmp_path / 'data')}"]
    results = submit_and_check(name, overrides, capsys)
    failed = [f"{call} -> exit {code}: {err.strip()}" for call, code, err in results if code not in (0, 1)]
    assert not failed, "\n".join(failed)
    plans = [code for call, code, _ in results if call.endswith("slm plan")]
    assert plans and all(code == 0 for code in plans)  # something fits the config's own GPUs


def test_the_resolved_setup_is_absolute_in_the_scripts(submit_machine: Path, tmp_path: Path, capsys) -> None:
    assert cli.main(["submit", "--no-fetch", "-c", "llama2_7b.yaml", f"output_dir={tmp_path / 'runs'}",
                     "--order", "paper"]) == 0
    script = (tmp_path / "runs" / "paper" / "slurm" / "slm" / "train.sbatch").read_text()
    assert f"\nsource {submit_machine / '.venv' / 'bin' / 'activate'}\n" in script
    assert not (tmp_path / "runs" / "reverse").exists()  # --order submits that one chain only


@pytest.mark.parametrize("breakage, stages, message", [
    ("model.name_or_path=someone/unknown-model", {"train"}, "unknown offline"),
    ("model.quantization=8bit", {"train"}, "ZeRO-3 cannot partition"),
    ("dtkr.faiss=gpu", {"train", "index", "eval"}, "CPU-only build"),  # every stage that searches keys
])
def test_a_config_that_would_fail_on_the_cluster_fails_the_stage_check(
        breakage: str, stages: set[str], message: str, submit_machine: Path, tmp_path: Path, capsys) -> None:
    # Each breakage is rendered and submitted (on a CPU node the memory plan does not stop it), then
    # caught by the check of each stage that would fail on the cluster.
    if breakage == "dtkr.faiss=gpu":
        from pipeline.dtkr.faiss_build import faiss_build

        if faiss_build().kind == "gpu":
            pytest.skip("a GPU build of FAISS is installed")
    base = ["slurm.train.gpus_per_node=0", "train.deepspeed=zero3", f"output_dir={tmp_path / 'runs'}"]
    results = submit_and_check("default.yaml", [*base, breakage], capsys)
    failed = {call.split()[2]: err for call, code, err in results if code == 2 and not call.endswith("slm plan")}
    assert set(failed) == stages, results
    assert all(message in err and err.startswith("error: ") for err in failed.values())


def test_a_cl_benchmark_config_without_its_data_root_fails_the_prepare_check(
        submit_machine: Path, tmp_path: Path, capsys) -> None:
    results = submit_and_check("cl_benchmark.yaml", [f"output_dir={tmp_path / 'runs'}"], capsys)
    (call, code, err), *_ = results
    assert call.endswith("slm prepare --check") and code == 2
    assert "data sources not found" in err and "data_root" in err
