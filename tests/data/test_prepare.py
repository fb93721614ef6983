"""`slm prepare`: every source type becomes fixed, disjoint, checked splits on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest

from pipeline.data.build import build_task
from pipeline.data.prepared import load_prepared
from pipeline.data.records import normalise_text, record_key
from pipeline.data.synthetic import SYNTHETIC, describe_generators
from pipeline.errors import DataError, StageInputError
from pipeline.experiment import Experiment, load_config
from pipeline.prompts.templates import build_prompt, build_response, query_text
from pipeline.stages import prepare
from pipeline.state.artifacts import read_done
from pipeline.state.layout import RunLayout


def _config(write_yaml, raw: dict[str, Any], overrides: list[str] | None = None):
    cfg = load_config(write_yaml(raw), overrides)
    return cfg, RunLayout.of(cfg)


def _task(raw: dict[str, Any], name: str, source: dict[str, Any], **extra: Any) -> dict[str, Any]:
    raw["tasks"] = [{"name": name, "source": source, **extra}]
    return raw


def _keys(records) -> set[str]:
    return {record_key(r) for r in records}


# ---- the default experiment and the stage's behaviour ---------------------------------------------


def test_the_default_experiment_prepares_disjoint_splits_with_a_manifest(tmp_path: Path) -> None:
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    layout = RunLayout.of(cfg)
    manifest = prepare.run(Experiment.of(cfg))
    assert list(manifest["tasks"]) == ["sentiment", "geography", "animals"]
    for name, entry in manifest["tasks"].items():
        dd = datasets.load_from_disk(str(layout.task_data(name)))
        assert set(dd) == {"train", "test"} and dd["train"].column_names == ["task", "instruction", "input", "output"]
        assert (len(dd["train"]), len(dd["test"])) == (entry["train"], entry["test"]) == (320, 80)
        assert not _keys(dd["train"]) & _keys(dd["test"])
        tokens = entry["tokens"]
        assert 0 < tokens["min"] <= tokens["mean"] <= tokens["p95"] <= tokens["max"] <= cfg.model.max_seq_len
        assert entry["truncated"] == 0
    assert read_done(layout.data)["stage"] == "prepare"
    assert layout.config.is_file()


def test_prepare_is_deterministic_across_runs(write_yaml, small_experiment, tmp_path: Path) -> None:
    runs = []
    for out in ("a", "b"):
        cfg, layout = _config(write_yaml, small_experiment, [f"output_dir={tmp_path / out}"])
        runs.append({n: t["sha256"] for n, t in prepare.run(Experiment.of(cfg))["tasks"].items()})
    assert runs[0] == runs[1]
    cfg, layout = _config(write_yaml, small_experiment, [f"output_dir={tmp_path / 'c'}", "data.seed=1"])
    assert {n: t["sha256"] for n, t in prepare.run(Experiment.of(cfg))["tasks"].items()} != runs[0]


def test_a_second_prepare_is_a_no_op_and_force_rebuilds(write_yaml, small_experiment, capsys) -> None:
    cfg, layout = _config(write_yaml, small_experiment)
    first = prepare.run(Experiment.of(cfg))
    done_mtime = (layout.data / "DONE").stat().st_mtime_ns
    assert prepare.run(Experiment.of(cfg)) == first
    assert "prepare: already done" in capsys.readouterr().out
    assert (layout.data / "DONE").stat().st_mtime_ns == done_mtime
    prepare.run(Experiment.of(cfg), force=True)
    assert (layout.data / "DONE").stat().st_mtime_ns != done_mtime
    assert "already done" not in capsys.readouterr().out
    for arrow in (layout.task_data("arithmetic") / "test").glob("*.arrow"):
        arrow.write_bytes(b"damaged")
    assert prepare.run(Experiment.of(cfg)) == first, "damaged data is rebuilt, identically"
    assert "rebuilding" in capsys.readouterr().out


def test_a_changed_task_rebuilds_and_old_data_is_refused_by_later_stages(write_yaml, small_experiment) -> None:
    cfg, layout = _config(write_yaml, small_experiment)
    prepare.run(Experiment.of(cfg))
    loaded = load_prepared(cfg, layout)
    assert list(loaded) == ["sentiment", "arithmetic"] and len(loaded["arithmetic"]["test"]) == 10
    changed, _ = _config(write_yaml, small_experiment, ["tasks.1.max_train=5"])
    assert len(load_prepared(changed, layout)["sentiment"]["train"]) == 30  # the other task is as it was
    stale = r"'arithmetic' was prepared from other inputs .its task spec changed.*slm prepare"
    with pytest.raises(StageInputError, match=stale):
        load_prepared(changed, layout)["arithmetic"]
    assert prepare.run(Experiment.of(changed))["tasks"]["arithmetic"]["train"] == 5
    assert len(load_prepared(changed, layout)["arithmetic"]["train"]) == 5


def test_a_new_max_seq_len_keeps_the_data_valid_for_later_stages(write_yaml, small_experiment) -> None:
    cfg, layout = _config(write_yaml, small_experiment)
    prepare.run(Experiment.of(cfg))
    longer, _ = _config(write_yaml, small_experiment, ["model.max_seq_len=128"])
    loaded = load_prepared(longer, layout)
    assert set(loaded) == {"sentiment", "arithmetic"} and all(len(loaded[t]["test"]) == 10 for t in loaded)


def test_load_prepared_before_prepare_names_the_command_to_run(write_yaml, small_experiment) -> None:
    cfg, layout = _config(write_yaml, small_experiment)
    with pytest.raises(StageInputError, match="'sentiment' is not prepared.*slm prepare"):
        load_prepared(cfg, layout)["sentiment"]


def test_list_synthetic_prints_the_generators_and_writes_nothing(write_yaml, small_experiment, capsys) -> None:
    cfg, layout = _config(write_yaml, small_experiment)
    assert prepare.main(Experiment.of(cfg), prepare.Args(list_synthetic=True)) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SYNTHETIC)
    assert not Path(cfg.output_dir).exists()


# ---- synthetic tasks ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_a_synthetic_task_is_deterministic_unique_and_short(name: str) -> None:
    task = SYNTHETIC[name]
    records = task.generate(300, seed=3)
    assert records == task.generate(300, seed=3)
    assert records != task.generate(300, seed=4)
    assert len({normalise_text(r["input"]) for r in records}) == 300
    for r in records:
        assert r["instruction"] == task.instruction
        assert 1 <= len(r["output"].split()) <= 3
        assert len((r["instruction"] + " " + r["input"] + " " + r["output"]).split()) < 40
        if task.labels:
            assert r["output"] in task.labels
    if task.labels:  # balanced, so no label dominates what a 40-step adapter sees
        counts = [sum(r["output"] == label for r in records) for label in task.labels]
        assert max(counts) - min(counts) <= 1


def test_synthetic_tasks_come_from_different_domains() -> None:
    assert len(SYNTHETIC) >= 5
    assert len({t.instruction for t in SYNTHETIC.values()}) == len(SYNTHETIC)
    assert "sentiment" in describe_generators() and "up to" in describe_generators()


def test_synthetic_answers_follow_their_rule() -> None:
    for r in SYNTHETIC["arithmetic"].generate(50, seed=0):
        a, op, b = r["input"].split()
        assert int(r["output"]) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    for r in SYNTHETIC["sentiment"].generate(50, seed=0):
        assert ("positive" if any(w in r["input"] for w in ("great", "excellent", "wonderful", "fantastic",
                "lovely", "amazing", "superb", "perfect", "delightful", "outstanding", "brilliant",
                "impressive")) else "negative") == r["output"]


# ---- prompt texts ---------------------------------------------------------------------------------


class _Tok:
    eos_token = "</s>"
    chat_template = "x"

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize
        return f"<user>{messages[0]['content']}<assistant>"


def test_prompt_texts_end_where_the_answer_starts() -> None:
    tok = _Tok()
    assert query_text("Classify.", "great food") == "Classify. ### great food"
    assert build_prompt(tok, "plain", "Do it.", "x") == "### Instruction:\nDo it.\n\n### Input:\nx\n\n### Response:\n"
    assert build_prompt(tok, "llama2_chat", "Do it.", "x") == "[INST] <<SYS>>\nDo it.\n<</SYS>>\n\nx [/INST]"
    assert build_prompt(tok, "llama2_chat", "Do it.", "") == "[INST] Do it. [/INST]"
    assert build_prompt(tok, "chat_template", "Do it.", "x") == "<user>Do it.\n\nx<assistant>"
    assert build_response(tok, "positive") == "positive</s>"


def test_the_real_chat_template_puts_instruction_and_input_in_the_user_turn() -> None:
    tok = prepare._tokenizer("bundled:smollm2")
    prompt = build_prompt(tok, "chat_template", "Is it good?", "Lovely soup.")
    assert "Is it good?\n\nLovely soup." in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert build_response(tok, "positive") == "positive<|im_end|>"


# ---- source types ---------------------------------------------------------------------------------


def _write_cl_task(root: Path, name: str, train: list, test: list, labels: list[str]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "train.json").write_text(json.dumps(train))
    (folder / "test.json").write_text(json.dumps(test))
    (folder / "labels.json").write_text(json.dumps(labels))
    return folder


def _news(n: int, offset: int = 0) -> list[dict[str, str]]:
    return [{"sentence": f"Title: story {i}\nText: body {i}\n", "label": ["World", "Sports"][i % 2]}
            for i in range(offset, offset + n)]


def test_a_cl_benchmark_folder_uses_its_test_split_labels_and_instruction(write_yaml, small_experiment,
                                                                         tmp_path: Path) -> None:
    root = tmp_path / "clb"
    _write_cl_task(root, "agnews", _news(12), _news(6, offset=100), ["World", "Sports"])
    (root / "instruction_config.json").write_text(json.dumps({"TC": [{"instruction": "Topic? Pick one.\n"}]}))
    cfg, layout = _config(write_yaml, _task(small_experiment, "news", {"type": "cl_benchmark", "path": "agnews"}),
                          [f"data_root={root}"])
    task = build_task(cfg.tasks[0], cfg)
    assert task.own_test_split and (len(task.train), len(task.test)) == (12, 6)
    assert task.labels == ["World", "Sports"]
    assert task.train[0]["instruction"] == "Topic? Pick one.\nOption: World, Sports"
    assert {r["input"] for r in task.test} == {f"Title: story {i}\nText: body {i}" for i in range(100, 106)}
    manifest = prepare.run(Experiment.of(cfg))
    assert manifest["tasks"]["news"]["labels"] == ["World", "Sports"]


def test_the_real_cl_benchmark_tasks_all_prepare(cl_benchmark_dir: Path, tmp_path: Path) -> None:
    caps = [f"tasks.{i}.max_train=40" for i in range(5)] + [f"tasks.{i}.max_test=20" for i in range(5)]
    cfg = load_config("cl_benchmark.yaml", [f"data_root={cl_benchmark_dir}", f"output_dir={tmp_path}", *caps])
    manifest = prepare.run(Experiment.of(cfg))
    assert list(manifest["tasks"]) == ["agnews", "amazon", "MNLI", "QQP", "BoolQA"]
    for entry in manifest["tasks"].values():
        assert (entry["train"], entry["test"]) == (40, 20) and entry["own_test_split"] and entry["labels"]
    assert manifest["tasks"]["MNLI"]["label_dropped"] > 0, "MNLI's '-' pairs are dropped, not errors"
    loaded = load_prepared(cfg, RunLayout.of(cfg))
    assert loaded["BoolQA"]["train"][0]["instruction"].endswith("Option: True, False")


def test_a_hub_source_can_be_a_local_save_to_disk_folder(write_yaml, small_experiment, tmp_path: Path) -> None:
    feats = datasets.Features({"q": datasets.Value("string"), "label": datasets.ClassLabel(names=["no", "yes"])})
    rows = {"train": [{"q": f"is {i} even?", "label": int(i % 2 == 0)} for i in range(20)],
            "validation": [{"q": f"is {i} even?", "label": int(i % 2 == 0)} for i in range(20, 26)]}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v, features=feats) for k, v in rows.items()}).save_to_disk(
        str(tmp_path / "saved"))
    source = {"type": "hub", "path": str(tmp_path / "saved"), "test_split": "validation",
              "fields": {"input": "q", "output": "label"}}
    cfg, _ = _config(write_yaml, _task(small_experiment, "even", source, instruction="Even?"))
    task = build_task(cfg.tasks[0], cfg)
    assert (len(task.train), len(task.test)) == (20, 6)
    assert task.labels == ["no", "yes"], "ClassLabel names become the label set"
    assert {r["output"] for r in task.train} == {"no", "yes"}


def test_a_hub_source_can_be_a_folder_of_json_files(write_yaml, small_experiment, tmp_path: Path) -> None:
    (tmp_path / "hubdir").mkdir()
    (tmp_path / "hubdir" / "train.jsonl").write_text(
        "".join(json.dumps({"instruction": "Echo.", "input": f"w{i}", "output": f"w{i}"}) + "\n" for i in range(10)))
    cfg, _ = _config(write_yaml, _task(small_experiment, "echo", {"type": "hub", "path": str(tmp_path / "hubdir")}))
    task = build_task(cfg.tasks[0], cfg)
    assert len(task.train) + len(task.test) == 10 and not task.own_test_split


def _write_table(path: Path, rows: list[dict[str, str]]) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        import csv

        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_a_file_source_in_any_format_maps_its_fields(suffix: str, write_yaml, small_experiment,
                                                     tmp_path: Path) -> None:
    rows = [{"question": f"capital of land {i}?", "answer": f"city {i}", "extra": "x"} for i in range(20)]
    _write_table(tmp_path / f"qa{suffix}", rows)
    source = {"type": "file", "path": f"qa{suffix}", "fields": {"input": "question", "output": "answer"}}
    cfg, _ = _config(write_yaml, _task(small_experiment, "qa", source, instruction="Answer."))
    task = build_task(cfg.tasks[0], cfg)
    assert (len(task.train), len(task.test)) == (15, 5)
    got = {(r["instruction"], r["input"], r["output"]) for r in task.train + task.test}
    assert got == {("Answer.", r["question"], r["answer"]) for r in rows}


def test_a_field_mapped_to_nothing_means_the_source_lacks_that_column(write_yaml, small_experiment,
                                                                     tmp_path: Path) -> None:
    _write_table(tmp_path / "qa.jsonl", [{"prompt": f"say {i}", "reply": str(i)} for i in range(4)])
    source = {"type": "file", "path": "qa.jsonl", "fields": {"instruction": "prompt", "input": "", "output": "reply"}}
    cfg, _ = _config(write_yaml, _task(small_experiment, "say", source))
    task = build_task(cfg.tasks[0], cfg)
    assert {(r["instruction"], r["input"]) for r in task.train + task.test} == {(f"say {i}", "") for i in range(4)}


def test_a_file_source_can_bring_its_own_test_file(write_yaml, small_experiment, tmp_path: Path) -> None:
    _write_table(tmp_path / "tr.jsonl", [{"instruction": "I", "input": f"a{i}", "output": "o"} for i in range(8)])
    _write_table(tmp_path / "te.jsonl", [{"instruction": "I", "input": f"b{i}", "output": "o"} for i in range(3)])
    source = {"type": "file", "path": "tr.jsonl", "test_split": "te.jsonl"}
    cfg, _ = _config(write_yaml, _task(small_experiment, "t", source))
    task = build_task(cfg.tasks[0], cfg)
    assert (len(task.train), len(task.test)) == (8, 3) and task.own_test_split


def test_converters_turn_packed_rows_into_records(write_yaml, small_experiment, tmp_path: Path) -> None:
    text = "### Instruction: Rate the mood. ### Human: Stocks {i} soared. ### Assistant: positive</s>"
    _write_table(tmp_path / "fin.jsonl", [{"text": text.format(i=i)} for i in range(6)])
    _write_table(tmp_path / "mc.jsonl", [{"question": f"q{i}?", "choices": ["a", "b", "c"], "answer": i % 3}
                                         for i in range(6)])
    small_experiment["tasks"] = [
        {"name": "fin", "source": {"type": "file", "path": "fin.jsonl", "converter": "human_assistant"}},
        {"name": "mc", "source": {"type": "file", "path": "mc.jsonl", "converter": "multiple_choice"},
         "labels": ["A", "B", "C"]}]
    cfg, _ = _config(write_yaml, small_experiment)
    fin = build_task(cfg.tasks[0], cfg)
    r = (fin.train + fin.test)[0]
    assert r["instruction"] == "Rate the mood." and r["output"] == "positive" and r["input"].startswith("Stocks")
    mc = build_task(cfg.tasks[1], cfg)
    by_input = {r["input"]: r["output"] for r in mc.train + mc.test}
    assert by_input["q1?\nA. a\nB. b\nC. c"] == "B"


def test_duplicates_are_dropped_before_a_random_split(write_yaml, small_experiment, tmp_path: Path) -> None:
    rows = [{"instruction": "I", "input": f"x{i % 10}", "output": "o"} for i in range(30)]
    rows.append({"instruction": "I", "input": "  X1 ", "output": "o"})  # same after normalisation
    _write_table(tmp_path / "dup.jsonl", rows)
    cfg, _ = _config(write_yaml, _task(small_experiment, "d", {"type": "file", "path": "dup.jsonl"}))
    task = build_task(cfg.tasks[0], cfg)
    assert task.duplicates_dropped == 21 and len(task.train) + len(task.test) == 10
    assert not _keys(task.train) & _keys(task.test)


def _overlapping_source(tmp_path: Path) -> dict[str, Any]:
    """Train a0..a7; test b0, then "  A3 " (a3 after normalisation, another label), then b1..b3."""
    _write_table(tmp_path / "tr.jsonl", [{"instruction": "I", "input": f"a{i}", "output": "o"} for i in range(8)])
    test = [{"instruction": "I", "input": "b0", "output": "o"}, {"instruction": "I", "input": "  A3 ", "output": "x"}]
    _write_table(tmp_path / "te.jsonl", test + [{"instruction": "I", "input": f"b{i}", "output": "o"}
                                                for i in range(1, 4)])
    return {"type": "file", "path": "tr.jsonl", "test_split": "te.jsonl"}


def test_a_test_record_repeating_a_training_input_is_refused_naming_the_option(write_yaml, small_experiment,
                                                                               tmp_path: Path) -> None:
    cfg, _ = _config(write_yaml, _task(small_experiment, "t", _overlapping_source(tmp_path)))
    with pytest.raises(DataError, match=r"te\.jsonl.* is also a training record .*data\.on_overlap=drop_test"):
        build_task(cfg.tasks[0], cfg)


def test_drop_test_skips_repeats_and_fills_max_test_with_the_next_records(write_yaml, small_experiment,
                                                                          tmp_path: Path) -> None:
    # 5 test records, one a repeat: max_test=4 needs every other one, wherever the shuffle puts it
    raw = _task(small_experiment, "t", _overlapping_source(tmp_path), max_test=4)
    cfg, _ = _config(write_yaml, raw, ["data.on_overlap=drop_test"])
    task = build_task(cfg.tasks[0], cfg)
    assert task.overlap_dropped == 1 and len(task.train) == 8
    assert sorted(r["input"] for r in task.test) == ["b0", "b1", "b2", "b3"]
    # without an overlap the option changes nothing: the same records as on_overlap=error
    clean = _task(small_experiment, "t", {"type": "file", "path": "tr.jsonl"}, max_test=1)
    built = [build_task(c.tasks[0], c) for c in (_config(write_yaml, clean)[0],
                                                 _config(write_yaml, clean, ["data.on_overlap=drop_test"])[0])]
    assert (built[0].train, built[0].test) == (built[1].train, built[1].test) and built[1].overlap_dropped == 0


def test_the_real_multirc_prepares_with_drop_test(cl_benchmark_dir: Path) -> None:
    from pipeline.config import SourceSpec, TaskSpec

    cfg = load_config("cl_benchmark.yaml", [f"data_root={cl_benchmark_dir}", "data.on_overlap=drop_test"])
    task = build_task(TaskSpec(name="MultiRC", source=SourceSpec(type="cl_benchmark", path="MultiRC")), cfg)
    assert task.overlap_dropped == 1 and not _keys(task.train) & _keys(task.test)
    with pytest.raises(DataError, match="on_overlap"):
        build_task(task.spec, load_config("cl_benchmark.yaml", [f"data_root={cl_benchmark_dir}"]))


def test_the_manifest_counts_the_dropped_test_records(write_yaml, small_experiment, tmp_path: Path) -> None:
    cfg, layout = _config(write_yaml, _task(small_experiment, "t", _overlapping_source(tmp_path)),
                          ["data.on_overlap=drop_test"])
    manifest = prepare.run(Experiment.of(cfg))
    assert manifest["data"]["on_overlap"] == "drop_test"
    assert manifest["tasks"]["t"]["overlap_dropped"] == 1 and manifest["tasks"]["t"]["test"] == 4
