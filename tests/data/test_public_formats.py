"""Tasks whose source.type names a public format (data_prep reads it, the pipeline checks it as
any source): label sets, the overlap policy, several references and Alpaca history carried into
the prepared data, errors naming file and record, and the config's checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import data_prep
from data_prep.__main__ import main as data_prep_main
from pipeline.config import PUBLIC_FORMATS
from pipeline.data.build import build_task
from pipeline.data.prepared import load_prepared, prepared_up_to_date
from pipeline.data.records import record_key
from pipeline.errors import ConfigError, DataError
from pipeline.experiment import Experiment, load_config
from pipeline.prompts.templates import history_turns
from pipeline.stages import prepare
from pipeline.state.layout import RunLayout

FOMC = {"instruction": "What is the stance? A. dovish, B. hawkish, C. neutral.",
        "suffix": "Directly output only A or B or C as your answer.", "labels": ["A", "B", "C"]}


def _cfg(tmp_path: Path, task: dict, *overrides: str):
    return load_config(None, [f"output_dir={tmp_path / 'run'}", f"data_root={tmp_path}",
                              f"tasks=[{json.dumps(task)}]", *overrides])


def _fomc(tmp_path: Path, n: int = 12, repeat: int = 3) -> None:
    (tmp_path / "finance").mkdir()
    rows = [{"sentence": f"Sentence {i} on rates.", "label": "ABC"[i % 3]} for i in range(n)]
    (tmp_path / "finance" / "train.json").write_text(json.dumps(rows * repeat))
    (tmp_path / "finance" / "test.json").write_text(json.dumps(rows[:2] + [{"sentence": "New.", "label": "C"}]))
    (tmp_path / "trace_instructions.json").write_text(json.dumps({"FOMC": FOMC}))


def test_the_config_lists_every_public_format_data_prep_reads() -> None:
    assert set(PUBLIC_FORMATS) == set(data_prep.FORMATS) - {"cl_benchmark"}


def test_a_trace_task_takes_its_labels_from_instructions_json_and_counts_the_repeats(tmp_path) -> None:
    _fomc(tmp_path)
    task = {"name": "finance", "metric": "exact_match",
            "source": {"type": "trace", "path": "finance", "trace_task": "FOMC"}}
    with pytest.raises(DataError, match=r"test record .*finance/test\.json record 0 is also a training record"):
        build_task(*_one(_cfg(tmp_path, task)))  # data.on_overlap=error (the default) refuses FOMC's repeats
    prepared = build_task(*_one(_cfg(tmp_path, task, "data.on_overlap=drop_test")))
    assert prepared.labels == ["A", "B", "C"] and prepared.duplicates_dropped == 24
    assert len(prepared.train) == 12 and [r["input"].split("\n")[0] for r in prepared.test] == ["New."]
    assert prepared.overlap_dropped == 2 and prepared.test[0]["input"].endswith(FOMC["suffix"])


def _one(cfg):
    return cfg.tasks[0], cfg


def test_a_label_outside_the_tasks_labels_names_the_record(tmp_path) -> None:
    _fomc(tmp_path)
    task = {"name": "finance", "labels": ["A", "B"],
            "source": {"type": "trace", "path": "finance", "trace_task": "FOMC"}}
    with pytest.raises(DataError, match=r"finance/train\.json record 2: label 'C' is not in the label set"):
        build_task(*_one(_cfg(tmp_path, task, "data.on_overlap=drop_test")))


def test_a_malformed_record_is_a_data_error_naming_file_record_field_and_task(tmp_path) -> None:
    (tmp_path / "math.jsonl").write_text('{"question": "1+1?", "answer": "2\\n#### 2"}\n{"question": "x"}\n')
    cfg = _cfg(tmp_path, {"name": "math", "metric": "final_number", "source": {"type": "gsm8k", "path": "math.jsonl"}})
    with pytest.raises(DataError, match=r"math\.jsonl:2: missing field 'answer' .*\(task 'math', source\.type gsm8k\)"):
        build_task(*_one(cfg))


def test_superni_references_reach_the_prepared_test_split(tmp_path) -> None:
    instances = [{"id": f"i{i}", "input": f"Question {i}?", "output": [f"yes {i}", f"sure {i}"]} for i in range(10)]
    (tmp_path / "task1.json").write_text(json.dumps({"Definition": ["Answer it."], "Instances": instances}))
    cfg = _cfg(tmp_path, {"name": "qa", "metric": "rouge_l", "source": {"type": "superni", "path": "task1.json"}})
    prepare.run(Experiment.of(cfg))
    test = load_prepared(cfg, RunLayout.of(cfg))["qa"]["test"]
    row = test[0]
    assert json.loads(row["references"]) == [row["output"], row["output"].replace("yes", "sure")]


def test_the_jsonl_data_prep_writes_keeps_references_and_history_as_a_file_source(tmp_path) -> None:
    rows = [{"instruction": "Go on.", "input": f"step {i}", "output": f"done {i}", "system": "Be brief.",
             "history": [[f"start {i}", "ok"]]} for i in range(10)]
    (tmp_path / "chat.json").write_text(json.dumps(rows))
    assert data_prep_main(["alpaca", str(tmp_path / "chat.json"), str(tmp_path / "out")]) == 0
    cfg = _cfg(tmp_path, {"name": "chat", "metric": "rouge_l",
                          "source": {"type": "file", "path": "out/train.jsonl", "test_split": "out/test.jsonl"}})
    prepared = build_task(*_one(cfg))
    turns = history_turns(prepared.test[0])
    assert [t["role"] for t in turns] == ["system", "user", "assistant"] and turns[0]["content"] == "Be brief."
    direct = build_task(*_one(_cfg(tmp_path, {"name": "chat", "metric": "rouge_l",
                                              "source": {"type": "alpaca", "path": "chat.json"}})))
    assert history_turns(direct.train[0])[1]["content"].startswith("start ")


def test_a_file_row_whose_output_is_not_among_its_references_is_refused(tmp_path) -> None:
    (tmp_path / "d.jsonl").write_text(json.dumps({"instruction": "I", "input": "x", "output": "a",
                                                  "references": ["b", "c"]}) + "\n")
    cfg = _cfg(tmp_path, {"name": "t", "metric": "rouge_l", "source": {"type": "file", "path": "d.jsonl"}})
    with pytest.raises(DataError, match=r"d\.jsonl:1: the output 'a' is not one of the record's references"):
        build_task(*_one(cfg))


def test_a_changed_trace_instructions_file_makes_prepare_rebuild(tmp_path) -> None:
    _fomc(tmp_path)
    cfg = _cfg(tmp_path, {"name": "finance", "source": {"type": "trace", "path": "finance", "trace_task": "FOMC"}},
               "data.on_overlap=drop_test")
    layout = RunLayout.of(cfg)
    prepare.run(Experiment.of(cfg))
    assert prepared_up_to_date(cfg, layout)
    (tmp_path / "trace_instructions.json").write_text(json.dumps({"FOMC": {**FOMC, "suffix": "Answer A, B or C."}}))
    assert not prepared_up_to_date(cfg, layout)


@pytest.mark.parametrize("source, message", [
    ({"type": "alpaca", "path": "x.json", "fields": {"input": "q"}}, "reads its own layout .* drop fields"),
    ({"type": "gsm8k", "path": "m", "trace_task": "FOMC"}, "only a trace source reads trace_task"),
    ({"type": "superni", "path": "t.json", "format": "sharegpt"}, "drop format"),
])
def test_a_public_format_source_refuses_keys_that_do_not_apply(tmp_path, source, message) -> None:
    with pytest.raises(ConfigError, match=message):
        _cfg(tmp_path, {"name": "t", "source": source})


def test_the_cross_domain_config_reads_all_five_real_domains_at_its_sizes() -> None:
    from tests.conftest import SHARED

    data = SHARED / "data" / "cross_domain"
    if not data.is_dir():
        pytest.skip(f"no real cross-domain data at {data}")
    cfg = load_config("cross_domain_cpu.yaml", [f"data_root={data}"])
    for task in cfg.tasks:
        prepared = build_task(task, cfg)
        assert (len(prepared.train), len(prepared.test)) == (400, 100), task.name
        assert not {record_key(r) for r in prepared.train} & {record_key(r) for r in prepared.test}
    assert [t.metric for t in cfg.tasks] == ["rouge_l", "letter", "letter", "final_number", "rouge_l"]
    assert [o.tasks[0] for o in cfg.orders] == ["medical", "code"]
