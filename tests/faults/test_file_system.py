"""The file system: a full disk while saving (simulated), read-only folders, leftovers of killed
writers, whole-folder swaps.

The table in docs/faults.md lists each fault and what the user sees; keep the two in step."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.stages import prepare
from pipeline.state import artifacts
from pipeline.state.artifacts import atomic_path, atomic_write_text
from tests.faults.helpers import (
    EXPERIMENT,
    _write,
    assert_user_error,
    kill,
    results,
    slm,
    spawn,
    temporaries,
)


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
