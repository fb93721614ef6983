"""`slm fetch`: the hub models the jobs load, into the cache they read; offline jobs check it first.

No network here, so the hub is a Hugging Face cache filled beforehand (a real tiny model under
models--org--tiny-llama/snapshots/<commit>/) and, online, an HF_ENDPOINT where nothing listens:
the real `huggingface_hub.snapshot_download` runs, fails to reach the hub, and answers from the
cache, exactly as on a login node whose cache was filled elsewhere. Each call is a fresh process:
huggingface_hub reads HF_HUB_OFFLINE and HF_ENDPOINT when it is imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.experiment import load_experiment
from pipeline.runtime import hub

REPO = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path: Path, tiny_model_dir: str) -> Path:
    """A Hugging Face cache holding `org/tiny-llama` (the tiny model's files) at COMMIT."""
    repo = tmp_path / "hf-cache" / "models--org--tiny-llama"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return tmp_path / "hf-cache"


def slm_child(args: list[str], cache: Path, offline: bool, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1" if offline else "0",
               HF_DATASETS_OFFLINE="1" if offline else "0", HF_ENDPOINT="http://127.0.0.1:9",  # nothing listens
               HF_HUB_ETAG_TIMEOUT="2", HF_HUB_DOWNLOAD_TIMEOUT="2", TOKENIZERS_PARALLELISM="false")
    base = ["model.max_seq_len=96", "data.synthetic_size=40", f"output_dir={tmp_path / 'out'}",
            "tasks=[{name: sentiment, source: {type: synthetic, generator: sentiment}}]"]
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args, *base], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_fetch_confirms_a_cached_model_when_the_hub_is_unreachable_and_names_a_missing_one(hub_cache, tmp_path) -> None:
    done = slm_child(["fetch", "model.name_or_path=org/tiny-llama"], hub_cache, offline=False, tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    snapshot = hub_cache / "models--org--tiny-llama" / "snapshots" / COMMIT
    assert f"fetch: model.name_or_path=org/tiny-llama -> {snapshot}" in done.stdout
    assert f"fetch: into {hub_cache} (downloading what is missing" in done.stdout
    missing = slm_child(["fetch", "model.name_or_path=org/absent"], hub_cache, offline=False, tmp_path=tmp_path)
    assert missing.returncode == 2
    assert f"error: model.name_or_path: org/absent is not in the Hugging Face cache {hub_cache} and the hub " \
           "cannot be reached" in missing.stderr and "slm fetch" in missing.stderr


@pytest.mark.slow
def test_an_offline_job_checks_the_cache_before_any_work(hub_cache, tmp_path) -> None:
    check = slm_child(["fetch", "--check", "model.name_or_path=org/tiny-llama"], hub_cache, True, tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    # the offline prepare of a cached hub model works: its tokenizer comes from the cache
    prepared = slm_child(["prepare", "model.name_or_path=org/tiny-llama"], hub_cache, True, tmp_path)
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    refused = slm_child(["prepare", "model.name_or_path=org/absent", f"output_dir={tmp_path / 'other'}"],
                        hub_cache, True, tmp_path)
    assert refused.returncode == 2
    assert f"model.name_or_path: org/absent is not in the Hugging Face cache {hub_cache}" in refused.stderr
    assert "HF_HUB_OFFLINE=1" in refused.stderr and "slm fetch" in refused.stderr
    assert not (tmp_path / "other").exists()  # nothing was started


def test_the_models_fetched_are_the_hub_ids_the_stages_load(tmp_path) -> None:
    local = tmp_path / "local-model"
    local.mkdir()
    scored = "tasks=[{name: a, source: {type: synthetic, generator: sentiment}, metric: bertscore}]"
    exp = load_experiment(None, ["model.name_or_path=meta-llama/Llama-2-7b-hf", "dtkr.encoder=org/encoder",
                                 "eval.bertscore_model=roberta-large", scored])
    assert [(m.setting, m.repo) for m in hub.hub_models(exp.cfg, uses_encoder=True)] == [
        ("model.name_or_path", "meta-llama/Llama-2-7b-hf"), ("dtkr.encoder", "org/encoder"),
        ("eval.bertscore_model", "roberta-large")]
    # bundled names and local folders are not fetched; an encoder only for methods with keys
    plain = load_experiment(None, [f"model.name_or_path={local}"])
    assert hub.hub_models(plain.cfg, uses_encoder=True) == []
    assert hub.hub_models(exp.cfg, uses_encoder=False)[1].setting == "eval.bertscore_model"


def test_hub_datasets_are_loaded_with_the_call_prepare_makes(monkeypatch, capsys) -> None:
    from pipeline.data import readers
    from pipeline.data.readers import RawRows
    from pipeline.stages import fetch

    calls = []
    monkeypatch.setattr(readers, "read_dataset", lambda path, local, config, split: calls.append(
        (path, local, config, split)) or RawRows(f"dataset {path} split {split!r}", [{}] * 3, []))
    exp = load_experiment(None, ["tasks=[{name: mmlu, source: {type: hub, path: org/mmlu, config: x, split: train, "
                                 "test_split: test}}]"])
    fetch.fetch_dataset(exp.cfg.tasks[0])
    assert calls == [("org/mmlu", None, "x", "train"), ("org/mmlu", None, "x", "test")]
    assert "fetch: task mmlu: dataset org/mmlu split 'train': 3 rows cached" in capsys.readouterr().out
