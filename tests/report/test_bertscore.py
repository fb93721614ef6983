"""BERTScore F1 (the medical task's metric) through the bert-score package, with tiny local encoders.

Two encoder families, as bert-score tokenizes them differently: a BERT (the bundled MiniLM's
WordPiece tokenizer) and a RoBERTa (a byte-level BPE tokenizer built here, the path the default
roberta-large takes). Weights are random: only the metric's plumbing and its scale are tested.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from pipeline.config import EvalSpec
from pipeline.errors import ConfigError
from pipeline.experiment import load_config
from pipeline.metrics import bertscore_f1, score

SAME = ["the patient should rest and drink plenty of water", "take the tablets twice a day after meals"]
OTHER = ["quarterly revenue beat the analysts' forecast", "the river froze over in early december"]


def _byte_level_vocab() -> list[str]:
    # The 256 byte symbols of GPT-2 style byte-level BPE: printable bytes stand for themselves.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]


def _save_bert(folder: Path) -> None:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from pipeline.runtime.models import resolve_encoder_path

    tok = AutoTokenizer.from_pretrained(resolve_encoder_path("bundled:all-minilm-l6-v2"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    tok.save_pretrained(folder)


def _save_roberta(folder: Path) -> None:
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *_byte_level_vocab()])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per byte
    tok = RobertaTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=128)
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=136, pad_token_id=1)
    RobertaModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)


@functools.cache
def _encoder(kind: str, root: str) -> str:
    folder = Path(root) / kind
    {"bert": _save_bert, "roberta": _save_roberta}[kind](folder)
    return str(folder)


@pytest.fixture(params=["bert", "roberta"])
def settings(request, tmp_path_factory) -> EvalSpec:
    root = tmp_path_factory.getbasetemp() / "bertscore-encoders"
    return EvalSpec(bertscore_model=_encoder(request.param, str(root)), bertscore_layer=2, batch_size=4)


def test_identical_strings_score_one_and_unrelated_ones_lower(settings: EvalSpec) -> None:
    same = bertscore_f1(SAME, SAME, settings)
    other = bertscore_f1(SAME, OTHER, settings)
    assert same == pytest.approx([1.0, 1.0], abs=1e-5)
    assert all(o < 0.99 for o in other)
    # The task score is the mean F1 over all records, computed in one batched call.
    both = score("bertscore", SAME + SAME, SAME + OTHER, settings)
    assert both == pytest.approx((2.0 + sum(other)) / 4, abs=1e-5)


def test_a_layer_beyond_the_encoder_is_a_config_error(settings: EvalSpec) -> None:
    bad = settings.model_copy(update={"bertscore_layer": 5})
    with pytest.raises(ConfigError, match="eval.bertscore_layer=5: .*between 0 and 2"):
        bertscore_f1(SAME, SAME, bad)


def test_a_missing_model_is_a_config_error_not_a_download(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bad = EvalSpec(bertscore_model=str(tmp_path / "no-such-encoder"), bertscore_layer=2)
    with pytest.raises(ConfigError, match="eval.bertscore_model=.*no-such-encoder.* could not be loaded"):
        bertscore_f1(SAME, SAME, bad)


def test_the_config_defaults_to_the_references_roberta_large_layer_17(write_yaml, small_experiment) -> None:
    cfg = load_config(write_yaml(small_experiment))
    assert (cfg.eval.bertscore_model, cfg.eval.bertscore_layer) == ("roberta-large", 17)
    small_experiment["tasks"][0]["metric"] = "bertscore"
    assert load_config(write_yaml(small_experiment)).tasks[0].metric == "bertscore"
