"""The experiment config: shipped YAMLs load, overrides apply, every mistake is named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import BUILTIN_CONFIGS
from pipeline.errors import ConfigError, DataError
from pipeline.experiment import Experiment, load_config
from pipeline.state.layout import RunLayout

SHIPPED = sorted(BUILTIN_CONFIGS.glob("*.yaml"))


def test_there_are_shipped_configs_including_the_default() -> None:
    names = {p.name for p in SHIPPED}
    assert {"default.yaml", "cl_benchmark.yaml", "paper_llama2_7b.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_documents_its_command(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.tasks
    assert cfg.deepspeed_config_path().is_file(), "the DeepSpeed JSON it names must ship too"
    header = path.read_text().split("\n### ")[0]
    assert "slm " in header, "STYLE 5: the header gives the exact command"


def test_a_shipped_config_can_be_named_by_its_file_name() -> None:
    assert load_config("cl_benchmark.yaml").name == "cl_benchmark"


def test_no_path_means_the_embedded_default() -> None:
    assert [t.name for t in load_config().tasks] == ["sentiment", "geography", "animals"]


def test_dotted_overrides_reach_nested_keys_and_list_items(write_yaml, small_experiment) -> None:
    path = write_yaml(small_experiment)
    cfg = load_config(path, ["tasks.1.max_train=5", "train.max_steps=3", "data.seed=7",
                             "tasks.0.source.generator=topic", "model.prompt_format=plain"])
    assert cfg.tasks[1].max_train == 5 and cfg.tasks[0].max_train is None
    assert cfg.train.max_steps == 3 and cfg.data.seed == 7
    assert cfg.tasks[0].source.generator == "topic"
    assert cfg.model.prompt_format == "plain"


def test_an_override_index_past_the_task_list_is_an_error(write_yaml, small_experiment) -> None:
    with pytest.raises(ConfigError, match="use an index below 2"):
        load_config(write_yaml(small_experiment), ["tasks.5.max_train=5"])


def test_an_override_without_equals_sign_is_an_error(write_yaml, small_experiment) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(write_yaml(small_experiment), ["train.max_steps"])


def test_an_unknown_key_is_an_error_listing_the_valid_keys(write_yaml, small_experiment) -> None:
    small_experiment["data"]["test_fraction"] = 0.3
    with pytest.raises(ConfigError) as err:
        load_config(write_yaml(small_experiment))
    msg = str(err.value)
    assert "data.test_fraction: unknown key" in msg
    assert "test_ratio (default 0.2)" in msg and "synthetic_size" in msg


def test_a_wrong_type_is_an_error_naming_the_field_and_value(write_yaml, small_experiment) -> None:
    small_experiment["tasks"][0]["max_train"] = "lots"
    with pytest.raises(ConfigError, match=r"tasks\.0\.max_train: .*'lots'"):
        load_config(write_yaml(small_experiment))


def test_every_problem_is_reported_at_once(write_yaml, small_experiment) -> None:
    small_experiment["data"]["seed"] = "x"
    small_experiment["methods"] = {"replay": {"ratio": 2}}  # a method's own option
    small_experiment["train"] = {"lr": -1}  # a key of an earlier version, named with its new home
    with pytest.raises(ConfigError) as err:
        load_config(write_yaml(small_experiment))
    assert "3 problem(s)" in str(err.value)
    assert "data.seed" in str(err.value) and "methods.replay.ratio" in str(err.value)
    assert "train.lr: moved to methods.<method>.lr" in str(err.value)


def test_an_unknown_method_section_lists_the_registered_ones(write_yaml, small_experiment) -> None:
    small_experiment["methods"] = {"replai": {"ratio": 0.1}}
    with pytest.raises(ConfigError, match=r"methods.replai: unknown key; did you mean 'replay'\?.*seq_lora"):
        load_config(write_yaml(small_experiment))


def test_duplicate_task_names_are_rejected(write_yaml, small_experiment) -> None:
    small_experiment["tasks"][1]["name"] = "sentiment"
    with pytest.raises(ConfigError, match=r"duplicate task names \['sentiment'\]"):
        load_config(write_yaml(small_experiment))


def test_a_synthetic_source_needs_a_generator_and_a_file_source_a_path(write_yaml, small_experiment) -> None:
    small_experiment["tasks"][0]["source"] = {"type": "synthetic"}
    small_experiment["tasks"][1]["source"] = {"type": "file"}
    with pytest.raises(ConfigError) as err:
        load_config(write_yaml(small_experiment))
    assert "needs `generator`" in str(err.value) and "a file source needs `path`" in str(err.value)


def test_fields_may_only_map_the_unified_names(write_yaml, small_experiment) -> None:
    small_experiment["tasks"][0]["source"] = {"type": "file", "path": "x.jsonl", "fields": {"answer": "a"}}
    with pytest.raises(ConfigError, match="fields maps unknown unified names"):
        load_config(write_yaml(small_experiment))


def test_relative_source_paths_resolve_from_data_root_else_the_yaml_folder(write_yaml, small_experiment,
                                                                          tmp_path: Path) -> None:
    path = write_yaml(small_experiment, "sub/experiment.yaml")
    assert load_config(path).resolve_source_path("a/b.jsonl") == tmp_path / "sub" / "a" / "b.jsonl"
    cfg = load_config(path, [f"data_root={tmp_path / 'data'}"])
    assert cfg.resolve_source_path("a/b.jsonl") == tmp_path / "data" / "a" / "b.jsonl"
    assert cfg.resolve_source_path("/abs/c.csv") == Path("/abs/c.csv")


def test_prepare_writes_the_resolved_config_only_once_its_checks_pass(write_yaml, small_experiment) -> None:
    """A failed prepare leaves nothing that looks like a run (no config.yaml, no data); a passing
    one records the config as resolved, overrides included."""
    from pipeline.stages import prepare

    good = {**small_experiment, "tasks": [dict(t) for t in small_experiment["tasks"]]}
    small_experiment["tasks"][1]["source"] = {"type": "file", "path": "missing.jsonl"}
    cfg = load_config(write_yaml(small_experiment), ["train.max_steps=9"])
    layout = RunLayout.of(cfg)
    with pytest.raises(DataError, match="missing.jsonl"):
        prepare.run(Experiment.of(cfg))
    assert not layout.config.exists() and not layout.data.exists()

    cfg = load_config(write_yaml(good), ["train.max_steps=9"])
    prepare.run(Experiment.of(cfg))
    written = yaml.safe_load(RunLayout.of(cfg).config.read_text())
    assert written["train"]["max_steps"] == 9, "overrides are part of the resolved config"


@pytest.mark.parametrize("name", [".", "..", ".hidden"])
def test_a_task_name_starting_with_a_dot_is_refused(write_yaml, small_experiment, name: str) -> None:
    small_experiment["tasks"][0]["name"] = name
    with pytest.raises(ConfigError, match=r"tasks\.0\.name: .*must not start with '\.'"):
        load_config(write_yaml(small_experiment))


@pytest.mark.parametrize(("override", "field"), [
    ('slurm.extra_sbatch=["--exclusive\\necho owned"]', "slurm.extra_sbatch"),
    ('slurm.setup=["module load x", "a\\rb"]', "slurm.setup"),
    ('slurm.partition="gpu\\necho owned"', "slurm.partition"),
    ('slurm.train.mem="8G\\techo"', "slurm.train.mem"),
    ('slurm.finish.time="1:00:00\\n"', "slurm.finish.time"),
])
def test_a_control_character_in_a_slurm_value_is_refused(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"{field}: .*control character"):
        load_config(None, [override])


def test_dtkr_groups_that_do_not_divide_the_encoder_dimension_are_refused_at_load() -> None:
    # The bundled all-MiniLM-L6-v2 is 384-d; 5 does not divide it. Found from its config.json.
    expected = r"groups=5 does not divide the dimension 384 .*config\.json.*\[1, 2, 3, 4, 6"
    with pytest.raises(ConfigError, match=expected):
        load_config(None, ["dtkr.groups=5"])
    assert load_config(None, ["dtkr.groups=8"]).dtkr.groups == 8


def test_a_local_encoder_folder_is_checked_from_its_config_json(tmp_path: Path) -> None:
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "config.json").write_text('{"hidden_size": 768}')
    with pytest.raises(ConfigError, match="dimension 768"):
        load_config(None, [f"dtkr.encoder={tmp_path / 'enc'}", "dtkr.groups=5"])
    assert load_config(None, [f"dtkr.encoder={tmp_path / 'enc'}", "dtkr.groups=6"]).dtkr.groups == 6


def test_the_light_bundled_encoder_table_matches_the_model_loader() -> None:
    from pipeline.encoder_config import BUNDLED_ENCODER_MODULES
    from pipeline.runtime.models import BUNDLED_ENCODERS

    assert BUNDLED_ENCODER_MODULES == {name: module for name, (module, _pip) in BUNDLED_ENCODERS.items()}


def test_a_non_utf8_experiment_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"{path}: not UTF-8 text"):
        load_config(path)


def test_an_override_value_that_is_not_yaml_names_the_override() -> None:
    with pytest.raises(ConfigError, match=r"override 'train.max_steps=\[1': the value is not valid YAML"):
        load_config(None, ["train.max_steps=[1"])
