"""The train / index / eval / run stages on a tiny local LLaMA: ordering, resume, signals, ZeRO."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.cli import main as slm
from pipeline.state.artifacts import sha256_file
from pipeline.state.preemption import EXIT_PREEMPTED, EXIT_PREVIOUS_NOT_DONE
from tests.tiny import tiny_overrides

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def overrides(tmp_path, tiny_model_dir) -> list[str]:
    return tiny_overrides(tmp_path / "run", tiny_model_dir, steps=4, save_every=2, eval_records=6, new_tokens=4)


def task_dir(tmp_path: Path, i: int, method: str = "slm") -> Path:
    return next((tmp_path / "run" / method / "tasks").glob(f"{i}-*"))


def adapter(tmp_path: Path, i: int, method: str = "slm") -> dict[str, torch.Tensor]:
    return load_file(str(task_dir(tmp_path, i, method) / "adapter.safetensors"))


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def clean_env() -> dict[str, str]:
    """The environment for a child run: no rendezvous left over from in-process stages."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    return dict(env, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def slm_process(args: list[str], **kw) -> subprocess.Popen:
    env = clean_env()
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def wait_for(predicate, timeout: float = 180, what: str = "condition") -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_training_task_1_leaves_task_0_files_untouched_and_rerun_does_nothing(tmp_path, overrides, capsys):
    assert slm(["prepare", *overrides]) == 0
    assert slm(["train", "--task", "0", *overrides]) == 0
    files = {p.name: sha256_file(p) for p in task_dir(tmp_path, 0).iterdir()}
    assert {"adapter.safetensors", "keys.safetensors", "DONE"} <= files.keys()
    assert not (task_dir(tmp_path, 0) / "train_state").exists()
    assert slm(["train", "--task", "1", *overrides]) == 0
    assert {p.name: sha256_file(p) for p in task_dir(tmp_path, 0).iterdir()} == files
    capsys.readouterr()
    assert slm(["run", *overrides]) == 0  # trains nothing: evaluates and reports
    assert slm(["run", *overrides]) == 0
    out = capsys.readouterr().out.splitlines()
    second = out[out.index(next(line for line in reversed(out) if "prepare: already done" in line)):]
    assert sum("already done" in line or "already up to date" in line for line in second) >= 5
    import json

    m = json.loads((tmp_path / "run" / "slm" / "eval" / "metrics.json").read_text())
    # every test record's score after the last task, whose mean is the task's score (a paired test needs them)
    assert set(m["final_record_scores"]) == set(m["final_scores"])
    for task, scores in m["final_record_scores"].items():
        assert scores and sum(scores) / len(scores) == pytest.approx(m["final_scores"][task])


def test_train_refuses_to_start_before_the_previous_task_is_done(overrides, capsys):
    assert slm(["prepare", *overrides]) == 0
    assert slm(["train", "--task", "1", *overrides]) == EXIT_PREVIOUS_NOT_DONE
    assert "task 0 (sentiment) has not finished" in capsys.readouterr().err


def test_index_and_eval_before_any_task_is_done_fail_with_a_clear_error(overrides, capsys):
    assert slm(["prepare", *overrides]) == 0
    assert slm(["index", *overrides]) == 2
    assert "no task is DONE" in capsys.readouterr().err
    assert slm(["eval", *overrides]) == 2
    assert "no task is DONE" in capsys.readouterr().err


def test_baselines_run_through_the_same_stages_into_their_own_folders(tmp_path, overrides):
    import json

    from pipeline.methods import METHOD_NAMES

    for method in [m for m in METHOD_NAMES if m != "slm"]:  # slm: the other tests here
        assert slm(["run", "--method", method, *overrides]) == 0
        metrics = json.loads((tmp_path / "run" / method / "eval" / "metrics.json").read_text())
        assert metrics["method"] == method and len(metrics["matrix"]) == 3
    # seq_lora continues one LoRA: task 1 starts from task 0's state, so the two differ
    assert max_diff(adapter(tmp_path, 0, "seq_lora"), adapter(tmp_path, 1, "seq_lora")) > 0
    comparison = (tmp_path / "run" / "comparison.md").read_text()
    assert all(f"`{m}`" in comparison for m in METHOD_NAMES if m != "slm")


def test_generate_answers_and_shows_the_retrieved_tasks(overrides, capsys):
    assert slm(["run", *overrides]) == 0
    capsys.readouterr()
    assert slm(["generate", "Classify the sentiment of this review.", "--input", "I love it", "--max-new-tokens",
                "3", *sum((["--set", o] for o in overrides), [])]) == 0
    out = capsys.readouterr().out
    assert "retrieved slots" in out and "weight" in out and "answer:" in out


def test_zero3_saves_a_complete_adapter_equal_to_zero0(tmp_path, overrides):
    assert slm(["prepare", *overrides]) == 0
    assert slm(["train", "--task", "0", *overrides, "train.deepspeed=zero3"]) == 0
    z3 = adapter(tmp_path, 0)
    import shutil

    shutil.rmtree(tmp_path / "run" / "slm")
    assert slm(["train", "--task", "0", *overrides, "train.deepspeed=zero0"]) == 0
    z0 = adapter(tmp_path, 0)
    assert all(z3[k].shape == z0[k].shape and z3[k].numel() > 0 for k in z0)
    assert max_diff(z3, z0) <= 1e-6


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_and_ends_with_the_uninterrupted_adapter(tmp_path, overrides):
    long = [*overrides, "train.max_steps=40", "train.save_every=5"]
    assert slm(["prepare", *long]) == 0
    proc = slm_process(["train", "--task", "0", *long])
    state = tmp_path / "run" / "slm" / "tasks" / "0-sentiment" / "train_state"
    wait_for(lambda: any(state.glob("step-*/COMPLETE")) or proc.poll() is not None, what="a first checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (state.parent / "DONE").exists(), "the run finished before it could be killed"
    resumed = slm_process(["train", "--task", "0", *long])
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "resumed task 0 from step" in out
    killed_then_resumed = adapter(tmp_path, 0)
    import shutil

    shutil.rmtree(tmp_path / "run" / "slm")
    assert slm(["train", "--task", "0", *long]) == 0
    assert max_diff(killed_then_resumed, adapter(tmp_path, 0)) <= 1e-6


@pytest.mark.slow
def test_usr1_checkpoints_and_exits_75_and_a_corrupt_newest_checkpoint_falls_back(tmp_path, overrides):
    long = [*overrides, "train.max_steps=400", "train.save_every=3", "train.keep_checkpoints=2"]
    assert slm(["prepare", *long]) == 0
    proc = slm_process(["train", "--task", "0", *long])
    state = tmp_path / "run" / "slm" / "tasks" / "0-sentiment" / "train_state"
    wait_for(lambda: len(list(state.glob("step-*/COMPLETE"))) >= 2 or proc.poll() is not None,
             what="two checkpoints")
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, out
    assert f"saved; exiting {EXIT_PREEMPTED} (preemption signal: requeue to resume)" in out
    tags = sorted(state.glob("step-*"))
    assert len(tags) >= 2
    newest, previous = tags[-1], tags[-2]
    for f in newest.glob("*model_states.pt"):
        f.write_bytes(f.read_bytes()[:100])  # truncate: torch.load fails
    resumed = slm_process(["train", "--task", "0", *long])
    wanted = f"resumed task 0 from step {int(previous.name.split('-')[1])}"
    seen = []
    for line in resumed.stdout:  # once it has resumed, the rest of the 400 steps adds nothing: stop it
        seen.append(line)
        if wanted in line:
            resumed.send_signal(signal.SIGUSR1)
            break
    out = "".join(seen) + resumed.communicate(timeout=300)[0]
    assert resumed.returncode == EXIT_PREEMPTED, out
    assert f"checkpoint {newest} could not be loaded" in out and wanted in out, out


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_two_ranks_give_the_adapter_of_one_rank_at_the_same_global_batch(tmp_path, overrides, zero):
    """1 rank x grad_accum 2 vs 2 ranks x grad_accum 1: same samples per optimizer step.
    Tolerance 1e-6: only the order of the gradient reduction differs (measured ~1e-8)."""
    assert slm(["prepare", *overrides]) == 0
    assert slm(["train", "--task", "0", *overrides, "train.grad_accum=2"]) == 0
    one_rank = adapter(tmp_path, 0)
    import shutil

    shutil.rmtree(tmp_path / "run" / "slm")
    env = clean_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "pipeline.cli", "train",
           "--task", "0", *overrides, f"train.deepspeed={zero}"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert max_diff(one_rank, adapter(tmp_path, 0)) <= 1e-6
