"""The method registry and the methods it adds (replay, seq_ft, o_lora), on tiny local models."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.cli import build_parser
from pipeline.cli import main as slm
from pipeline.errors import StageInputError
from pipeline.experiment import load_config
from pipeline.methods import METHOD_NAMES, REGISTRY, get_method
from pipeline.state.artifacts import read_done, sha256_file, sha256_json
from tests.tiny import tiny_overrides

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def overrides(tmp_path, tiny_model_dir) -> list[str]:
    return tiny_overrides(tmp_path / "run", tiny_model_dir)


def task_dir(tmp_path: Path, method: str, i: int) -> Path:
    return next((tmp_path / "run" / method / "tasks").glob(f"{i}-*"))


# ---- the registry ---------------------------------------------------------------------------


def test_every_registered_method_loads_under_its_name_and_the_config_and_cli_accept_it() -> None:
    assert set(METHOD_NAMES) == {"slm", "oracle_task_id", "seq_ft", "seq_lora", "replay", "o_lora", "n_lora",
                                 "gainlora", "multitask"}
    choices = build_parser()._subparsers._group_actions[0].choices["run"]._option_string_actions["--method"].choices
    assert tuple(choices) == METHOD_NAMES
    for name in METHOD_NAMES:
        method = get_method(name)
        assert method.name == name and method.role and method.trains and method.infers
        assert load_config(None, [f"method={name}"]).method == name


def test_an_unknown_method_is_a_config_error_listing_the_registered_ones() -> None:
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown method 'ewc'.*slm, oracle_task_id"):
        load_config(None, ["method=ewc"])


def _method_classes() -> set[str]:
    """Names of every class in pipeline/methods/ that is a Method (the registered ones and the
    family bases a dispatch could test for: JareMethod, LoraMethod, ...)."""
    import importlib
    import inspect

    from pipeline.methods.base import Method

    names = set()
    for path in (REPO / "pipeline" / "methods").rglob("*.py"):
        module = importlib.import_module(".".join(path.relative_to(REPO).with_suffix("").parts))
        names |= {n for n, c in inspect.getmembers(module, inspect.isclass) if issubclass(c, Method)}
    return names


def _method_name_tests(path: Path, classes: set[str] = frozenset()) -> list[str]:
    """Methods used to decide something: a name compared (`== "slm"`, `in ("slm", ...)`) or used as
    a key of a literal dict of several methods (a per-method table), or a method class tested with
    isinstance / issubclass (a dispatch on the family)."""
    def names(node: ast.AST) -> list[ast.Constant]:
        items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        return [n for n in items if isinstance(n, ast.Constant) and n.value in REGISTRY]

    def class_names(node: ast.AST) -> list[str]:
        items = node.elts if isinstance(node, ast.Tuple) else [node]
        return [n.id if isinstance(n, ast.Name) else n.attr for n in items
                if isinstance(n, (ast.Name, ast.Attribute)) and (getattr(n, "id", None) or n.attr) in classes]

    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            found = [c for operand in (node.left, *node.comparators) for c in names(operand)]
        elif isinstance(node, ast.Dict):  # a per-method table; one "slm" key is the API's field name
            found = [c for key in node.keys if key is not None for c in names(key)]
            found = found if len(found) > 1 else []
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("isinstance", "issubclass") and len(node.args) == 2):
            hits += [f"{where}:{node.lineno} {node.func.id}(..., {c})"
                     for c in class_names(node.args[1])]
            continue
        else:
            continue
        hits += [f"{where}:{c.lineno} {c.value!r}" for c in found]
    return hits


def test_no_module_outside_the_registry_tests_a_method_name_or_class() -> None:
    classes = _method_classes()
    paths = [*sorted((REPO / "pipeline").rglob("*.py")), *sorted((REPO / "bench").rglob("*.py")),
             *sorted((REPO / "scripts").rglob("*.py"))]
    hits = [hit for path in paths if not str(path.relative_to(REPO)).startswith("pipeline/methods/")
            for hit in _method_name_tests(path, classes)]
    assert not hits, f"methods told apart outside pipeline/methods/: {hits}"


def test_the_name_check_finds_a_branch_on_a_method_name_or_family(tmp_path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text('def f(cfg, m):\n'
                     '    return cfg.method in ("seq_lora", "replay") or isinstance(m, (JareMethod, int))\n')
    hits = _method_name_tests(probe, _method_classes())
    assert len(hits) == 3 and any("JareMethod" in h for h in hits)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_a_task_hash_covers_the_shared_sections_and_only_its_own_method_options(name: str) -> None:
    cfg = load_config(None, [f"method={name}"])
    method = get_method(name)
    settings = method.settings(cfg)
    assert list(settings["methods"]) == [method.section]  # oracle_task_id: slm's, the slots it shares
    assert settings["methods"][method.section] == method.options(cfg).model_dump()
    assert {"model", "adapter", "train", "seed"} <= settings.keys()
    assert ("dtkr" in settings) == method.learns_keys  # retrieval settings only where there are keys


def test_a_method_knob_changes_only_its_own_method_hash() -> None:
    base, tuned = load_config(None), load_config(None, ["methods.replay.ratio=0.05"])
    for name in METHOD_NAMES:
        same = sha256_json(get_method(name).settings(base)) == sha256_json(get_method(name).settings(tuned))
        assert same == (name != "replay"), name


# ---- replay ---------------------------------------------------------------------------------


def test_the_replay_buffer_is_a_seeded_sample_with_at_least_one_record_per_earlier_task() -> None:
    from pipeline.methods.lora.replay import replay_buffer

    cfg = load_config(None, ["method=replay", "methods.replay.ratio=0.05"])
    names = [t.name for t in cfg.tasks]
    prepared = {n: {"train": [{"task": n, "instruction": "i", "input": f"{n} {k}", "output": "o"} for k in range(60)]}
                for n in names}
    ratio = get_method("replay").options(cfg).ratio
    assert replay_buffer(cfg, prepared, 0, ratio) == []
    buffer = replay_buffer(cfg, prepared, 2, ratio)
    assert [r["task"] for r in buffer] == [names[0]] * 3 + [names[1]] * 3  # 5 % of 60 each
    assert buffer == replay_buffer(cfg, prepared, 2, ratio)  # seeded: the same on every call
    assert len(replay_buffer(cfg, prepared, 1, 0.001)) == 1  # never less than one record per task


def test_replay_writes_its_buffer_into_the_task_folder_and_refuses_a_changed_one(tmp_path, overrides):
    assert slm(["run", "--method", "replay", *overrides]) == 0
    folder = task_dir(tmp_path, "replay", 1)
    buffer = [json.loads(line) for line in (folder / "replay_buffer.jsonl").read_text().splitlines()]
    assert len(buffer) == 1 and buffer[0]["task"] == "sentiment"
    assert "replay_buffer.jsonl" in read_done(folder)["outputs"]
    assert (task_dir(tmp_path, "replay", 0) / "replay_buffer.jsonl").read_text() == ""  # nothing before task 0
    # A half-trained task whose buffer no longer matches the data: an error, not a silent replacement.
    from pipeline.data.prepared import load_prepared
    from pipeline.experiment import load_experiment

    exp = load_experiment(None, [*overrides, "method=replay"])
    (folder / "DONE").unlink()
    (folder / "replay_buffer.jsonl").write_text('{"task": "x"}\n')
    with pytest.raises(StageInputError, match="another replay buffer"):
        exp.method.training_records(exp, load_prepared(exp.cfg, exp.layout), 1)


# ---- o_lora ---------------------------------------------------------------------------------


class _FakeLora(torch.nn.Module):
    """What the O-LoRA term reads of a PEFT LoraLayer: lora_A, lora_B and scaling per adapter."""

    def __init__(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor] | None = None,
                 scaling: dict[str, float] | None = None) -> None:
        super().__init__()
        self.lora_A, self.lora_B = torch.nn.ModuleDict(), torch.nn.ModuleDict()
        for target, weights in ((self.lora_A, a), (self.lora_B, b or {})):
            for name, w in weights.items():
                lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
                lin.weight.data.copy_(w)
                target[name] = lin
        self.scaling = scaling or {}


def test_the_orthogonality_term_is_zero_for_orthogonal_a_and_positive_otherwise() -> None:
    from pipeline.methods.lora.o_lora import orthogonality

    q, _ = torch.linalg.qr(torch.randn(16, 16))
    old, new = q[:4].contiguous(), q[4:8].contiguous()  # rows of one orthonormal basis
    layer = _FakeLora({"task0": old, "task1": new})
    assert orthogonality([layer], "task1", ["task0"]).item() == pytest.approx(0.0, abs=1e-5)
    overlap = _FakeLora({"task0": old, "task1": new + 0.1 * old})
    value = orthogonality([overlap], "task1", ["task0"]).item()
    assert value == pytest.approx((0.1 * torch.eye(4)).abs().sum().item(), rel=1e-4)


def test_o_lora_keeps_earlier_loras_byte_for_byte_and_sums_all_at_inference(tmp_path, overrides):
    from pipeline.experiment import load_experiment
    from pipeline.methods.lora.peers import adapter_name, lora_layers

    assert slm(["run", "--method", "o_lora", *overrides]) == 0
    files = [task_dir(tmp_path, "o_lora", i) / "adapter.safetensors" for i in range(3)]
    first = load_file(str(files[0]))
    # Each task saved only its own LoRA, and task 1/2 learned a different one.
    assert first.keys() == load_file(str(files[1])).keys()
    assert any(not torch.equal(first[k], load_file(str(files[1]))[k]) for k in first)
    exp = load_experiment(None, [*overrides, "method=o_lora"])
    predictor = exp.method.predictor(exp, 2, torch.device("cpu"))
    layers = lora_layers(predictor.model)
    assert layers and all(set(layer.active_adapters) == {adapter_name(j) for j in range(3)} for layer in layers)
    # The model's task-0 LoRA is exactly the file written when task 0 finished.
    loaded = {n: p for n, p in predictor.model.named_parameters() if f".{adapter_name(0)}." in n}
    for key, saved in first.items():
        match = [p for n, p in loaded.items() if n.replace(f".{adapter_name(0)}", "") == key]
        assert len(match) == 1 and torch.equal(match[0], saved), key


def test_o_lora_training_leaves_earlier_adapter_files_untouched(tmp_path, overrides):
    assert slm(["prepare", "--method", "o_lora", *overrides]) == 0
    assert slm(["train", "--method", "o_lora", "--task", "0", *overrides]) == 0
    before = sha256_file(task_dir(tmp_path, "o_lora", 0) / "adapter.safetensors")
    assert slm(["train", "--method", "o_lora", "--task", "1", *overrides]) == 0
    assert sha256_file(task_dir(tmp_path, "o_lora", 0) / "adapter.safetensors") == before


# ---- seq_ft ---------------------------------------------------------------------------------


def test_mark_trainable_unfreezes_the_decoder_linears_or_the_named_ones(tiny_model_dir) -> None:
    from pipeline.methods.seq_ft import mark_trainable
    from pipeline.runtime.models import load_base_model

    model = load_base_model(tiny_model_dir, "float32", "none", torch.device("cpu"))
    params = mark_trainable(model, None)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".layers." in n and "norm" not in n for n in trainable)
    assert len(params) == len(trainable) == 7 * len(model.model.layers)  # q k v o gate up down
    mark_trainable(model, ["o_proj"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"model.layers.{i}.self_attn.o_proj.weight" for i in range(len(model.model.layers))}


def test_seq_ft_saves_each_task_model_and_continues_from_the_previous_one(tmp_path, overrides, tiny_model_dir):
    from safetensors import safe_open

    assert slm(["run", "--method", "seq_ft", "methods.seq_ft.lr=1e-3", *overrides]) == 0
    models = [task_dir(tmp_path, "seq_ft", i) / "model" for i in range(3)]
    assert all((m / "config.json").is_file() for m in models)
    key = "model.layers.0.self_attn.o_proj.weight"

    def weight(folder: Path) -> torch.Tensor:
        shard = next(folder.glob("*.safetensors"))
        with safe_open(str(shard), "pt") as f:
            return f.get_tensor(key)

    base = weight(Path(tiny_model_dir))
    w0, w1 = weight(models[0]), weight(models[1])
    assert not torch.equal(base, w0) and not torch.equal(w0, w1)
    done = read_done(task_dir(tmp_path, "seq_ft", 1))
    assert any(f.startswith("model/") and f.endswith(".safetensors") for f in done["outputs"])
    assert done["trainable_params"] > 0
