"""Configs to start from: `slm configs` lists the shipped experiments, `slm configs copy` writes one
to edit, and an experiment may inherit one with `base:` and write only what differs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main as slm
from pipeline.config import BUILTIN_CONFIGS, shipped_configs
from pipeline.data.prepared import task_prepare_inputs
from pipeline.errors import ConfigError
from pipeline.experiment import load_config, read_raw

REPO = Path(__file__).resolve().parents[2]
SYNTHETIC_TASK = {"name": "a", "source": {"type": "synthetic", "generator": "sentiment"}}


def write(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def test_slm_configs_lists_every_shipped_experiment_on_one_line_each(capsys) -> None:
    assert slm(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = shipped_configs()
    listed = [line for line in lines if line.split(" ", 1)[0] in names]
    assert [line.split(" ", 1)[0] for line in listed] == names
    default = next(line for line in listed if line.startswith("default.yaml"))
    assert "smollm2, 3 tasks" in default and "The embedded default experiment" in default
    assert "Llama-2-7b-chat-hf, 3 tasks, 2 orders" in next(x for x in listed if x.startswith("llama2_7b.yaml"))


def test_slm_configs_needs_no_experiment_and_imports_no_torch() -> None:
    code = "import sys; from pipeline.cli import main; main(['configs']); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_copy_writes_the_shipped_file_and_never_overwrites_without_force(tmp_path, capsys) -> None:
    dest = tmp_path / "mine.yaml"
    assert slm(["configs", "copy", "llama2_7b.yaml", str(dest)]) == 0
    assert dest.read_text() == (BUILTIN_CONFIGS / "llama2_7b.yaml").read_text()  # comments included
    assert f"slm run -c {dest}" in capsys.readouterr().out
    dest.write_text("name: edited\n")
    assert slm(["configs", "copy", "llama2_7b.yaml", str(dest)]) == 2
    assert "exists; not overwritten" in capsys.readouterr().err and dest.read_text() == "name: edited\n"
    assert slm(["configs", "copy", "llama2_7b", str(dest), "--force"]) == 0  # the .yaml may be left out
    assert dest.read_text() == (BUILTIN_CONFIGS / "llama2_7b.yaml").read_text()
    assert slm(["configs", "copy", "default.yaml", str(tmp_path)]) == 0  # a folder: DEST/NAME
    assert (tmp_path / "default.yaml").is_file()


def test_copy_of_an_unknown_name_lists_the_shipped_ones(tmp_path, capsys) -> None:
    assert slm(["configs", "copy", "llama3.yaml", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert "'llama3.yaml' is not a shipped config" in err and "llama2_7b.yaml" in err
    assert not (tmp_path / "x.yaml").exists()


def test_an_inheriting_copy_resolves_to_its_base_but_for_name_and_output_dir(tmp_path) -> None:
    dest = tmp_path / "mine.yaml"
    assert slm(["configs", "copy", "cl_benchmark_cpu.yaml", str(dest), "--inherit"]) == 0
    assert yaml.safe_load(dest.read_text())["base"] == "cl_benchmark_cpu.yaml"
    mine, shipped = load_config(dest), load_config("cl_benchmark_cpu.yaml")
    assert mine.name == "my_cl_benchmark_cpu" and mine.output_dir == f"{shipped.output_dir}_mine"
    differs = {k for k in type(shipped).model_fields if getattr(mine, k) != getattr(shipped, k)}
    assert differs == {"name", "output_dir", "config_dir"}


def test_base_mappings_merge_key_by_key_and_lists_replace(tmp_path) -> None:
    base = write(tmp_path / "common.yaml", {
        "name": "common", "tasks": [SYNTHETIC_TASK, {**SYNTHETIC_TASK, "name": "b"}],
        "train": {"epochs": 3, "micro_batch_size": 2}, "adapter": {"target_modules": ["o_proj", "q_proj"]},
        "orders": [{"name": "ab", "tasks": ["a", "b"]}, {"name": "ba", "tasks": ["b", "a"]}]})
    child = write(tmp_path / "child.yaml", {"base": base.name, "train": {"epochs": 1},
                                           "adapter": {"target_modules": ["v_proj"]}})
    cfg = load_config(child)
    assert cfg.name == "common" and [t.name for t in cfg.tasks] == ["a", "b"]
    assert (cfg.train.epochs, cfg.train.micro_batch_size) == (1, 2)  # merged: the base's micro batch stays
    assert cfg.adapter.target_modules == ["v_proj"]  # a list is replaced, not appended to
    assert [o.name for o in cfg.orders] == ["ab", "ba"]
    assert cfg.config_dir == str(tmp_path)  # relative paths: from the experiment named with -c
    # tasks replace too; the inherited orders then name tasks that are gone: the error says what to do
    write(child, {"base": base.name, "tasks": [{**SYNTHETIC_TASK, "name": "c"}]})
    with pytest.raises(ConfigError) as err:
        load_config(child)
    assert "drop `orders:`" in str(err.value) and "`orders: null`" in str(err.value)
    write(child, {"base": base.name, "tasks": [{**SYNTHETIC_TASK, "name": "c"}], "orders": None})
    assert [t.name for t in load_config(child).tasks] == ["c"] and load_config(child).orders is None


def test_overrides_apply_after_the_base_is_merged(tmp_path) -> None:
    base = write(tmp_path / "common.yaml", {"tasks": [SYNTHETIC_TASK], "train": {"epochs": 3}})
    child = write(tmp_path / "child.yaml", {"base": "common.yaml", "train": {"epochs": 2}})
    assert load_config(child, ["train.epochs=5"]).train.epochs == 5
    assert load_config(child).train.epochs == 2 and load_config(base).train.epochs == 3


def test_a_bare_base_name_is_a_shipped_config_and_chains_resolve(tmp_path) -> None:
    middle = write(tmp_path / "middle.yaml", {"base": "default.yaml", "train": {"max_steps": 7}})
    sub = tmp_path / "sub"
    sub.mkdir()
    leaf = write(sub / "leaf.yaml", {"base": "../middle.yaml", "eval": {"batch_size": 3}})
    cfg, default = load_config(leaf), load_config()
    assert (cfg.train.max_steps, cfg.eval.batch_size) == (7, 3)
    assert [t.name for t in cfg.tasks] == [t.name for t in default.tasks]
    assert load_config(middle).eval.batch_size == default.eval.batch_size


def test_the_resolved_config_is_what_the_stages_hash_and_record(tmp_path) -> None:
    child = write(tmp_path / "child.yaml", {"base": "default.yaml", "train": {"max_steps": 7}})
    flat = yaml.safe_load((BUILTIN_CONFIGS / "default.yaml").read_text())
    flat["train"]["max_steps"] = 7
    flat_path = write(tmp_path / "flat.yaml", flat)
    inherited, written_out = load_config(child), load_config(flat_path)
    assert [task_prepare_inputs(t, inherited) for t in inherited.tasks] == \
        [task_prepare_inputs(t, written_out) for t in written_out.tasks]
    recorded = yaml.safe_load(inherited.to_yaml())  # what <output_dir>/<method>/config.yaml holds
    assert "base" not in recorded and recorded["train"]["max_steps"] == 7 and len(recorded["tasks"]) == 3


def test_a_base_cycle_and_a_missing_base_are_errors_naming_the_files(tmp_path) -> None:
    write(tmp_path / "a.yaml", {"base": "b.yaml", "tasks": [SYNTHETIC_TASK]})
    write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="makes a cycle") as err:
        read_raw(tmp_path / "a.yaml", [])
    assert "a.yaml -> " in str(err.value) and "b.yaml" in str(err.value)
    write(tmp_path / "c.yaml", {"base": "nowhere.yaml"})
    with pytest.raises(ConfigError, match="neither a file beside it") as err:
        read_raw(tmp_path / "c.yaml", [])
    assert "default.yaml" in str(err.value)  # the shipped configs it could have named
    write(tmp_path / "d.yaml", {"base": ["default.yaml"]})
    with pytest.raises(ConfigError, match="base must be the file name"):
        read_raw(tmp_path / "d.yaml", [])
