"""A full disk for real: every writer stage on a small tmpfs, filled to a few KiB below what it needs.

For each stage (prepare, train with its keys, checkpoints and adapter, index, an eval row,
report), the file system is filled so that only F bytes are free, for F from 0 up in steps, until
the stage succeeds. Every failure must be exit 2 with exactly the two lines `error: no space left
on the device (or quota exceeded): <path>` and `hint: ...`, leave no temporary, keep every earlier
result byte for byte, and leave only checkpoints that verify; the sweep must hit the stage's own
artifacts (not only a lock or a config file); after the last failure the stage resumes from what
is on disk (train: from its last complete checkpoint) and ends with the result of a run that
never saw a full disk.

The tmpfs needs root (`mount -t tmpfs`); elsewhere that test skips, and the file-size-limit test
(RLIMIT_FSIZE, which any user may lower) still shows a failed write ends the same way.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.cli import main as slm
from pipeline.state.artifacts import sha256_file
from pipeline.state.checkpoints import list_tags, verify_checkpoint

REPO = Path(__file__).resolve().parents[2]
FS_SIZE = "8m"
PAGE = 4096  # tmpfs allocates whole pages
STEP = 3 * PAGE  # free bytes added per try while the failure stays the same
FULL = "error: no space left on the device (or quota exceeded): "


@pytest.fixture
def small_fs(tmp_path: Path):
    """A real 8 MiB tmpfs, unmounted afterwards; a skip where mounting is not allowed."""
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'}); "
                    "test_a_file_size_limit_ends_the_same_way covers the failed write")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(fs: Path, free: int) -> None:
    """Leave `free` bytes of the file system free (a filler file takes the rest)."""
    filler = fs / "filler"
    filler.unlink(missing_ok=True)
    st = os.statvfs(fs)
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - free))


def snapshot(root: Path, skip: Callable[[Path], bool]) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and not skip(p) and p.name != "filler" and "locks" not in p.parts}


def assert_clean_state(fs: Path) -> None:
    leftovers = [p for p in fs.rglob(".*") if p.name.endswith((".tmp", ".old"))]
    assert not leftovers, leftovers
    for state in fs.rglob("train_state"):
        for tag in list_tags(state):
            assert verify_checkpoint(tag) is None, tag  # only whole checkpoints are left


def sweep(fs: Path, args: list[str], reset: Callable[[], None], owned: Callable[[Path], bool],
          capsys) -> dict[int, str]:
    """Run `slm args` with more and more bytes free until it succeeds: STEP at a time while the
    failure stays the same, page by page across a change, so no write's window is stepped over.
    Returns free bytes -> the path that failure named."""
    named: dict[int, str | None] = {}
    before = snapshot(fs, owned)

    def attempt(free: int) -> str | None:
        if free not in named:
            named[free] = _fail_or_pass(fs, args, reset, free, capsys)
            assert snapshot(fs, owned) == before, f"{free} bytes free: an earlier result changed"
            assert_clean_state(fs)
        return named[free]

    free, current = 0, attempt(0)
    while current is not None:
        assert free < 4 << 20, f"`slm {' '.join(args)}` never succeeded in {FS_SIZE}"
        if attempt(free + STEP) == current:
            free += STEP
            continue
        for page in range(free + PAGE, free + STEP + PAGE, PAGE):
            free, current = page, attempt(page)
            if current is None:
                break
    # Room again: the stage completes from what its failures left (next stages build on it).
    reset()
    (fs / "filler").unlink()
    assert slm(args) == 0, capsys.readouterr().err[-3000:]
    return {free: path for free, path in named.items() if path is not None}


def _fail_or_pass(fs: Path, args: list[str], reset: Callable[[], None], free: int, capsys) -> str | None:
    """None when `slm args` succeeds with `free` bytes free; else the path its one error line names."""
    reset()
    fill(fs, free)
    code = slm(args)
    err = capsys.readouterr().err
    if code == 0:
        return None
    lines = user_lines(err)
    assert code == 2 and len(lines) == 2 and lines[0].startswith(FULL), err[-3000:]
    assert lines[1].startswith("hint: free space there") and "Traceback" not in err, err[-3000:]
    return lines[0][len(FULL):]


def user_lines(stderr: str) -> list[str]:
    """The `error:` / `hint:` lines (progress bars redraw with \\r, so a line may follow a bar)."""
    return [part.strip() for part in re.split(r"[\r\n]", stderr) if part.strip().startswith(("error:", "hint:"))]


def under(*paths: Path) -> Callable[[Path], bool]:
    return lambda p: any(p == q or q in p.parents for q in paths)


@pytest.mark.slow
def test_a_full_disk_at_every_write_is_one_error_line_and_the_last_state_stays_usable(
        small_fs: Path, tiny_model_dir: str, capsys) -> None:
    out = small_fs / "run"
    overrides = [f"output_dir={out}", f"model.name_or_path={tiny_model_dir}", "data.synthetic_size=40",
                 "train.max_steps=2", "train.save_every=1", "train.micro_batch_size=4", "model.max_seq_len=64",
                 "eval.max_records_per_task=4", "eval.max_new_tokens=2",
                 # four slots: keys and adapter span several pages, so the sweep meets each of them
                 "methods.slm.slots_per_task=4", "dtkr.top_k=2",
                 "tasks=[{name: sentiment, source: {type: synthetic, generator: sentiment}}]"]
    method = out / "slm"
    task = method / "tasks" / "0-sentiment"

    named = sweep(small_fs, ["prepare", *overrides], lambda: shutil.rmtree(out / "data", ignore_errors=True),
                  under(out / "data", method / "config.yaml"), capsys)
    # per-task data: the task's own folder and then the manifest that lists it are each named
    assert {str(out / "data" / "sentiment"), str(out / "data" / "manifest.json")} <= set(named.values()), named

    train = ["train", "--task", "0", *overrides]
    named = sweep(small_fs, train, lambda: shutil.rmtree(task, ignore_errors=True),
                  under(task, method / "config.yaml", out / "logs"), capsys)
    state = task / "train_state"
    assert {str(state / "keys.safetensors"), str(state / "step-000001"), str(state / "step-000002"),
            str(task / "adapter.safetensors")} <= set(named.values()), "\n".join(map(str, named.items()))
    reference = load_file(str(task / "adapter.safetensors"))

    # The disk fills up while checkpoint 2 is saved; once there is room, the rerun resumes from
    # checkpoint 1 and ends with the adapter of the run that never saw a full disk.
    shutil.rmtree(task)
    window = sorted(free for free, path in named.items() if path == str(state / "step-000002"))
    fill(small_fs, window[len(window) // 2])  # mid-window: the edges move by a page with log flushes
    capsys.readouterr()
    assert slm(train) == 2
    assert f"{FULL}{state / 'step-000002'}" in capsys.readouterr().err
    assert [t.name for t in list_tags(state)] == ["step-000001"]
    (small_fs / "filler").unlink()
    capsys.readouterr()
    assert slm(train) == 0
    assert "resumed task 0 from step 1/2" in capsys.readouterr().out
    adapter = load_file(str(task / "adapter.safetensors"))
    assert adapter.keys() == reference.keys()
    assert all(torch.equal(adapter[k], reference[k]) for k in adapter)

    index = method / "index"
    named = sweep(small_fs, ["index", *overrides], lambda: shutil.rmtree(index, ignore_errors=True),
                  under(index), capsys)
    assert str(index) in named.values()
    row = method / "eval" / "row-0.json"
    named = sweep(small_fs, ["eval", "--after", "0", *overrides], lambda: row.unlink(missing_ok=True),
                  under(row, out / "logs"), capsys)  # logs: the row also goes to report_to (TensorBoard)
    assert str(row) in named.values()
    assert slm(["eval", "--after", "-1", *overrides]) == 0

    def report_files() -> list[Path]:
        return [p for p in (method / "eval").iterdir() if not p.name.startswith("row-")] + \
            [p for p in [out / "comparison.md"] if p.exists()]

    named = sweep(small_fs, ["report", *overrides], lambda: [p.unlink() for p in report_files()],
                  lambda p: p in report_files(), capsys)
    assert named and all(Path(path).parent in (method / "eval", out) for path in named.values()), named
    assert (method / "eval" / "report.md").is_file() and (method / "eval" / "metrics.json").is_file()


@pytest.mark.slow
def test_a_file_size_limit_ends_the_same_way(tmp_path: Path, tiny_model_dir: str) -> None:
    """RLIMIT_FSIZE (any user may lower it; Python ignores SIGXFSZ, so the write fails with EFBIG):
    the first file larger than the limit is named, exit 2, no temporary left."""
    overrides = [f"output_dir={tmp_path / 'run'}", f"model.name_or_path={tiny_model_dir}", "data.synthetic_size=40",
                 "train.max_steps=2", "train.micro_batch_size=4", "model.max_seq_len=64"]
    assert slm(["prepare", *overrides]) == 0
    limit = 12 * 1024  # above the keys and the small JSON files, below a checkpoint and the adapter

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    # DeepSpeed builds its shared-memory op on first use (or when the cache was built from another
    # checkout's paths); the compiler's own writes must not meet the limit: build it first, unlimited
    subprocess.run([sys.executable, "-c", "from deepspeed.comm.torch import build_shm_op; build_shm_op()"],
                   cwd=REPO, env=env, capture_output=True, timeout=600, check=True)
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", "--task", "0", *overrides], cwd=REPO,
                          env=dict(env, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"), preexec_fn=limited,
                          capture_output=True, text=True, timeout=600, check=False)
    lines = user_lines(done.stderr)
    assert done.returncode == 2, done.stderr[-3000:]
    assert lines[0].startswith("error: file too large: a write went past the file size limit: "), lines
    assert str(tmp_path / "run" / "slm" / "tasks" / "0-sentiment") in lines[0]
    assert "ulimit -f" in lines[1] and f"{limit} bytes" in lines[1]
    assert not [p for p in (tmp_path / "run").rglob(".*") if p.name.endswith(".tmp")]
