"""Data files: missing label sets, torn DONE markers.

The table in docs/faults.md lists each fault and what the user sees; keep the two in step."""

from __future__ import annotations

from pathlib import Path

from pipeline import cli
from tests.faults.helpers import (
    EXPERIMENT,
    _cl_folder,
    assert_user_error,
    results,
    slm,
    temporaries,
)


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
