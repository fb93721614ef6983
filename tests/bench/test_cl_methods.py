"""bench/cl_methods.py, the tiny version CI runs: two methods and two task orders on a tiny LLaMA,
results as data (one file per method in the runner's schema, and a plot), resumable only for the
same config and code, --summary."""

from __future__ import annotations

import json

import pytest
import yaml

from bench import cl_methods
from bench.runner import check_result, method_fingerprint
from pipeline.methods import get_method
from tests.tiny import save_tiny_checkpoint

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bench_yaml(tmp_path, model: str) -> str:
    path = tmp_path / "tinybench.yaml"
    path.write_text(yaml.safe_dump({"config": "default.yaml", "overrides": [
        f"output_dir={tmp_path / 'run'}", f"model.name_or_path={model}", "name=tinybench", "data.synthetic_size=40",
        "train.max_steps=2", "train.micro_batch_size=4", "train.save_every=2", "model.max_seq_len=64",
        "eval.max_records_per_task=4", "eval.max_new_tokens=2", "dtkr.key_epochs=1",
        "tasks=[{name: sentiment, source: {type: synthetic, generator: sentiment}},"
        " {name: animals, source: {type: synthetic, generator: animal_class}}]",
        "orders=[{name: fwd, tasks: [sentiment, animals]}, {name: rev, tasks: [animals, sentiment]}]"]}))
    return str(path)


@pytest.mark.slow
def test_two_methods_over_two_orders_give_results_files_a_plot_and_a_summary(tmp_path, capsys) -> None:
    results = tmp_path / "results"
    bench = _bench_yaml(tmp_path, save_tiny_checkpoint(tmp_path / "tiny"))
    argv = [bench, "--methods", "slm,seq_lora", "--results-dir", str(results)]
    assert cl_methods.main(argv) == 0

    for method in ("slm", "seq_lora"):
        r = json.loads((results / "cl_methods" / f"tinybench-{method}.json").read_text())
        assert check_result(r) == []
        info = r["run_info"]
        assert info["method"] == method and list(info["orders"]) == ["fwd", "rev"]
        assert info["orders"]["rev"] == ["animals", "sentiment"]
        assert len(info["config_sha256"]) == 64
        assert info["code_fingerprint"] == method_fingerprint(get_method(method))["sha256"]
        assert all(info["per_order"][o]["code_fingerprint"] == info["code_fingerprint"] for o in ("fwd", "rev"))
        assert r["train_info"]["wall_s"] > 0 and r["train_info"]["peak_rss_mib"] > 0
        per_order = r["metrics"]["per_order"]
        assert [len(per_order[o]["matrix"]) for o in ("fwd", "rev")] == [2, 2]
        mean = sum(per_order[o]["AA"] for o in ("fwd", "rev")) / 2
        assert r["metrics"]["AA"] == pytest.approx(mean) and r["metrics"]["AA_std"] is not None
        assert (r["metrics"]["retrieval_accuracy"] is None) == (method == "seq_lora")
    table = cl_methods.comparison_markdown(cl_methods.load_results(results, "tinybench"))
    assert "| `slm` |" in table and "| `seq_lora` |" in table and "over 2 task orders" in table
    assert (results / "cl_methods" / "tinybench.png").read_bytes()[:8] == PNG_MAGIC

    # resumable: each order recorded for the same config and code is kept
    capsys.readouterr()
    assert cl_methods.main(argv) == 0
    assert capsys.readouterr().out.count("already recorded") == 4  # two methods x two orders
    assert cl_methods.main([bench, "--summary", "--results-dir", str(results)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("method=") and " AA=" in ln]
    assert [ln.split()[0] for ln in lines] == ["method=slm", "method=seq_lora"]
    assert all(ln.split()[1].startswith("AA=") and "wall_s=" in ln and ln.endswith("orders=2 current=yes")
               for ln in lines)
    assert "retrieval=na" in lines[1] and "retrieval=na" not in lines[0]

    # another learning rate: the run folder holds the old one's stages, which `slm run` does not
    # reuse; the bench says so, and --force rebuilds the order and replaces its entry
    before = json.loads((results / "cl_methods" / "tinybench-seq_lora.json").read_text())["run_info"]
    changed = [bench, "--methods", "seq_lora", "--order", "fwd", "--results-dir", str(results),
               "methods.seq_lora.lr=1e-3"]
    with pytest.raises(SystemExit, match=r"(?s)config changed \(methods\.seq_lora\.lr.*--force reruns"):
        cl_methods.main(changed)
    assert cl_methods.main([*changed, "--force"]) == 0
    after = json.loads((results / "cl_methods" / "tinybench-seq_lora.json").read_text())["run_info"]
    assert list(after["orders"]) == ["fwd"]  # one file, one config: the old config's orders are gone
    assert after["config_sha256"] != before["config_sha256"]
    assert "removing" in capsys.readouterr().out  # --force deleted the folder: the order ran from scratch
    forced = json.loads((results / "cl_methods" / "tinybench-seq_lora.json").read_text())["train_info"]
    assert forced["resumed_orders"] == []

    # a run over a finished folder (its results file lost) only resumes: the record and table say so
    (results / "cl_methods" / "tinybench-slm.json").unlink()
    assert cl_methods.main([bench, "--methods", "slm", "--order", "fwd", "--results-dir", str(results)]) == 0
    resumed = json.loads((results / "cl_methods" / "tinybench-slm.json").read_text())
    assert resumed["train_info"]["resumed_orders"] == ["fwd"]
    table = cl_methods.comparison_markdown(cl_methods.load_results(results, "tinybench"))
    assert "³ resumed finished work" in table and "`slm`" in table.split("³ resumed")[1]


def _entry(tasks: list[str], aa: float, wall: float, date: str, digest: str, code: str) -> dict:
    matrix = [[aa] * len(tasks)] * len(tasks)
    metrics = {k: None for k in cl_methods.PER_ORDER_KEYS} | {"AA": aa, "complete": True, "tasks": tasks,
                                                              "matrix": matrix}
    return {"metrics": metrics, "training": {"trainable_params": 10}, "data_sha256": {t: "0" * 64 for t in tasks},
            "wall_s": wall, "peak_rss_mib": 100, "meta_info": {"versions": {}, "machine": {"m": 1}},
            "provenance": {"command": f"run {date}", "commit": "c", "dirty": False, "date": date,
                           "config_sha256": digest, "code_fingerprint": code}}


def test_orders_recorded_one_by_one_add_up_and_are_kept_only_for_the_same_config_and_code(tmp_path) -> None:
    from pipeline.experiment import load_experiment

    exp = load_experiment("default.yaml", ["orders=[{name: fwd, tasks: [sentiment, geography, animals]},"
                                           " {name: rev, tasks: [animals, geography, sentiment]}]"])
    cfg = exp.cfg
    path = tmp_path / "cl_methods" / "x-slm.json"
    digest, code = cl_methods.config_sha256(exp), "code-1"
    assert cl_methods.recorded_orders(path, digest, code) == {}  # nothing recorded yet

    # rev ran first (on its own day), fwd later: the record lists the experiment's order
    rev = _entry(["animals", "geography", "sentiment"], 0.4, 30.0, "2026-12-01T10:00:00", digest, code)
    cl_methods.write_record(path, cl_methods.result_record(cfg, "x", "slm", {"rev": rev}))
    done = cl_methods.recorded_orders(path, digest, code)
    assert list(done) == ["rev"] and done["rev"]["metrics"]["AA"] == 0.4 and done["rev"]["wall_s"] == 30.0
    done["fwd"] = _entry(["sentiment", "geography", "animals"], 0.6, 50.0, "2026-12-02T10:00:00", digest, code)
    r = cl_methods.result_record(cfg, "x", "slm", done)
    assert list(r["run_info"]["orders"]) == ["fwd", "rev"]
    assert r["metrics"]["AA"] == pytest.approx(0.5) and r["metrics"]["AA_std"] > 0
    assert r["train_info"]["wall_s"] == 80.0 and r["train_info"]["wall_s_per_order"] == {"fwd": 50.0, "rev": 30.0}
    assert r["train_info"]["resumed_orders"] == []
    done["rev"]["resumed"] = True  # its wall time was a resume's: kept with the order
    cl_methods.write_record(path, cl_methods.result_record(cfg, "x", "slm", done))
    kept = cl_methods.recorded_orders(path, digest, code)
    assert kept["rev"]["resumed"] is True and kept["fwd"]["resumed"] is False
    assert r["run_info"]["command"] == "run 2026-12-02T10:00:00"  # the latest run; each order keeps its own
    assert r["run_info"]["per_order"]["rev"]["command"] == "run 2026-12-01T10:00:00"

    # other code, or another config (here: another seed), keeps nothing: it is other data
    assert cl_methods.recorded_orders(path, digest, "code-2") == {}
    assert cl_methods.recorded_orders(path, cl_methods.config_sha256(load_experiment("default.yaml", ["seed=7"])),
                                      code) == {}


def test_the_config_hash_covers_only_the_methods_own_options() -> None:
    from pipeline.experiment import load_experiment

    base = load_experiment("default.yaml", ["method=seq_lora"])
    other = load_experiment("default.yaml", ["method=seq_lora", "methods.replay.ratio=0.5", "methods.slm.lr=0.1"])
    own = load_experiment("default.yaml", ["method=seq_lora", "methods.seq_lora.lr=0.1"])
    assert cl_methods.config_sha256(base) == cl_methods.config_sha256(other)
    assert cl_methods.config_sha256(base) != cl_methods.config_sha256(own)


def test_the_comparison_marks_rows_over_fewer_orders_and_rows_from_other_code(tmp_path, capsys) -> None:
    from pipeline.experiment import load_experiment

    orders = ("orders=[{name: fwd, tasks: [sentiment, geography, animals]},"
              " {name: rev, tasks: [animals, geography, sentiment]}]")
    tasks = {"fwd": ["sentiment", "geography", "animals"], "rev": ["animals", "geography", "sentiment"]}
    bench = cl_methods.BenchExperiment("x", "default.yaml", [orders])
    rows = []
    for method, ran, code in (("seq_ft", ["fwd", "rev"], None), ("seq_lora", ["fwd"], None),
                              ("replay", ["fwd", "rev"], "old-code")):
        exp = load_experiment("default.yaml", [orders, f"method={method}"])
        cfg = exp.cfg
        digest, current = cl_methods.config_sha256(exp), method_fingerprint(exp.method)["sha256"]
        entries = {o: _entry(tasks[o], 0.5, 10.0, "2026-12-01T10:00:00", digest, code or current) for o in ran}
        path = tmp_path / "cl_methods" / f"x-{method}.json"
        cl_methods.write_record(path, cl_methods.result_record(cfg, "x", method, entries))
        rows.append(json.loads(path.read_text()))

    table = cl_methods.comparison_markdown(rows, bench)
    assert "| `seq_ft` |" in table and "| `seq_lora`¹ |" in table and "| `replay`² |" in table
    assert "over 2 task orders (fwd, rev)" in table and "¹ over the orders it ran only: `seq_lora` (fwd)" in table
    lines = cl_methods.summary_lines(rows, bench)
    assert [ln.split()[-2:] for ln in lines[:3]] == [["orders=2", "current=yes"], ["orders=1", "current=yes"],
                                                      ["orders=2", "current=no"]]
    assert all(ln.endswith(" not_run") for ln in lines[3:])  # the other registered methods
    # the diagonal column is the mean of R[i][i] (here: a matrix with 0.9 on its diagonal, 0.1 off it)
    diag = [[0.9 if i == j else 0.1 for j in range(3)] for i in range(3)]
    rows[0]["metrics"]["per_order"]["fwd"]["matrix"] = rows[0]["metrics"]["per_order"]["rev"]["matrix"] = diag
    seq_ft_row = cl_methods.comparison_markdown(rows, bench).splitlines()[2].split("|")
    assert [c.strip() for c in seq_ft_row[1:4]] == ["`seq_ft`", "0.500", "0.900"]
    # another config for a method (its lr) makes its row not current either
    assert cl_methods.summary_lines(rows[:1], bench.with_overrides(["methods.seq_ft.lr=0.5"]))[0].endswith(
        "current=no")


def test_every_method_is_compared_with_slm_by_a_paired_bootstrap_or_says_why_not(tmp_path) -> None:
    from pipeline.experiment import load_experiment

    orders = ("orders=[{name: fwd, tasks: [sentiment, geography, animals]},"
              " {name: rev, tasks: [animals, geography, sentiment]}]")
    tasks = {"fwd": ["sentiment", "geography", "animals"], "rev": ["animals", "geography", "sentiment"]}
    bench = cl_methods.BenchExperiment("x", "default.yaml", [orders])
    slm_scores = {t: [1.0] * 30 + [0.0] * 10 for t in tasks["fwd"]}  # 0.75 on every task
    per_method = {"slm": slm_scores, "seq_lora": {t: [1.0] * 10 + [0.0] * 30 for t in tasks["fwd"]},  # 0.25
                  "o_lora": slm_scores, "replay": None}  # replay: a file from before per-record scores
    rows = []
    for method, scores in per_method.items():
        exp = load_experiment("default.yaml", [orders, f"method={method}"])
        cfg = exp.cfg
        digest, code = cl_methods.config_sha256(exp), method_fingerprint(exp.method)["sha256"]
        entries = {o: _entry(tasks[o], 0.5, 10.0, "2026-12-01T10:00:00", digest, code) for o in tasks}
        for entry in entries.values():
            entry["metrics"]["final_record_scores"] = scores
        path = tmp_path / "cl_methods" / f"x-{method}.json"
        cl_methods.write_record(path, cl_methods.result_record(cfg, "x", method, entries))
        rows.append(json.loads(path.read_text()))

    cells = {line.split("|")[1].strip(): line.split("|")[-2].strip()
             for line in cl_methods.comparison_markdown(rows, bench).splitlines() if line.startswith("| `")}
    assert cells["`slm`"] == "(reference)" and cells["`o_lora`"] == "+0.000 [+0.000, +0.000] level"
    diff, interval, word = cells["`seq_lora`"].split(" ", 1)[0], cells["`seq_lora`"], cells["`seq_lora`"].split()[-1]
    assert diff == "+0.500" and word == "above" and interval.startswith("+0.500 [+0.")
    assert cells["`replay`"] == "n/a (no per-record scores)"
    lines = {ln.split()[0]: ln for ln in cl_methods.summary_lines(rows, bench)}
    assert "slm_minus=reference" in lines["method=slm"] and "slm_minus=na" in lines["method=replay"]
    assert "slm_minus=+0.500[+0." in lines["method=seq_lora"] and "]:above" in lines["method=seq_lora"]
    assert lines["method=multitask"] == "method=multitask not_run"  # every registered method is listed


# ---- preset rows ------------------------------------------------------------------------------------


def test_every_method_with_a_preset_gets_its_own_row_right_after_its_plain_one() -> None:
    rows = cl_methods.rows()
    for name in ("o_lora", "n_lora", "gainlora"):
        assert rows.index(f"{name}@official") == rows.index(name) + 1
    assert cl_methods.method_of("o_lora@official") == ("o_lora", "official")
    assert cl_methods.method_of("slm") == ("slm", None)


def test_a_preset_row_resets_the_methods_own_options_and_runs_into_its_own_folder() -> None:
    bench = cl_methods.BenchExperiment("x", "default.yaml", ["methods.o_lora.lr=0.02", "methods.o_lora.lambda1=2"],
                                       {"o_lora@official": ["methods.o_lora.lambda2=0.3"]})
    plain, official = bench.load("o_lora"), bench.load("o_lora@official")
    assert plain.method.options(plain.cfg).resolved("lr") == 0.02  # the bench's tuned setting
    opts = official.method.options(official.cfg)
    assert (opts.preset, opts.resolved("lr"), opts.lambda1, opts.lambda2) == ("official", 1e-3, 0.5, 0.3)
    assert official.layout.root != plain.layout.root and "preset-official" in str(official.layout.root)
    assert cl_methods.config_sha256(official) != cl_methods.config_sha256(plain)
    with pytest.raises(SystemExit, match="has no preset"):
        bench.load("slm@official")


def test_the_published_vs_tuned_table_renders_na_until_a_row_has_results(tmp_path) -> None:
    from pipeline.experiment import load_experiment
    from pipeline.methods import get_method

    table = cl_methods.published_vs_tuned_markdown(tmp_path, "x")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [r.split("|")[1].strip() for r in rows] == ["`o_lora`", "`n_lora`", "`gainlora`"]
    assert all(r.count("n/a") == 4 for r in rows)
    exp = load_experiment("default.yaml", ["method=o_lora"])
    tasks = [t.name for t in exp.cfg.tasks]
    entry = _entry(tasks, 0.5, 1.0, "2026-12-01T10:00:00", cl_methods.config_sha256(exp),
                   method_fingerprint(get_method("o_lora"))["sha256"])
    cl_methods.write_record(tmp_path / "cl_methods" / "x-o_lora@official.json",
                            cl_methods.result_record(exp.cfg, "x", "o_lora@official", {"as_listed": entry}))
    o_lora = cl_methods.published_vs_tuned_markdown(tmp_path, "x").splitlines()[2].split("|")
    assert [c.strip() for c in o_lora[2:5]] == ["`o_lora@official`", "0.500", "n/a"]
