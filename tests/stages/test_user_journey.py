"""A new user's path, end to end on a tiny LLaMA: a ShareGPT file as a task, `slm run`, `slm export`
of that task loaded with PEFT, and `slm serve` answered through the openai client with a system
prompt, history and an API key (docs/data.md, docs/export.md, docs/serve.md)."""

from __future__ import annotations

import json

import openai
import pytest
import torch
import yaml

from pipeline.cli import main as slm
from pipeline.experiment import load_experiment
from pipeline.jare.routing import Routing
from pipeline.serve.app import create_app
from pipeline.serve.runner import serving
from pipeline.serve.session import load_session

KEY = "sk-journey"
CAPITALS = [("France", "Paris"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Japan", "Tokyo"), ("Chile", "Santiago"),
            ("Egypt", "Cairo"), ("Spain", "Madrid"), ("India", "Delhi"), ("Italy", "Rome"), ("Ghana", "Accra"),
            ("Cuba", "Havana"), ("Nepal", "Kathmandu"), ("Iran", "Tehran"), ("Mali", "Bamako"), ("Laos", "Vientiane"),
            ("Oman", "Muscat")]


@pytest.mark.slow
def test_sharegpt_task_to_run_to_peft_export_to_served_chat_with_history_and_a_key(tmp_path, tiny_model_dir):
    chat = tmp_path / "capitals.jsonl"
    chat.write_text("".join(json.dumps({"conversations": [
        {"from": "system", "value": "You answer with one word."},
        {"from": "human", "value": f"Which country is {country} in?"}, {"from": "gpt", "value": country},
        {"from": "human", "value": "Its capital?"}, {"from": "gpt", "value": capital}]}) + "\n"
        for country, capital in CAPITALS))
    experiment = tmp_path / "mine.yaml"
    experiment.write_text(yaml.safe_dump({
        "name": "mine", "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": tiny_model_dir, "max_seq_len": 128},
        "train": {"max_steps": 2, "micro_batch_size": 4, "save_every": 2},
        "methods": {"slm": {"lr": 0.05}},
        "eval": {"max_records_per_task": 4, "max_new_tokens": 3},
        "tasks": [{"name": "capitals", "source": {"type": "file", "path": "capitals.jsonl", "format": "sharegpt"},
                   "metric": "rouge_l"},
                  {"name": "sentiment", "source": {"type": "synthetic", "generator": "sentiment"}}],
        "data": {"synthetic_size": 20}}))
    assert slm(["run", "-c", str(experiment)]) == 0
    assert slm(["export", "-c", str(experiment), "--task", "capitals"]) == 0

    exp = load_experiment(experiment)
    cfg, layout = exp.cfg, exp.layout
    folder = layout.root / "export" / "0-capitals"
    from peft import PeftModel

    from pipeline.runtime.models import load_base_model

    ids = torch.randint(10, 4000, (1, 12), generator=torch.Generator().manual_seed(0))
    peft = PeftModel.from_pretrained(load_base_model(tiny_model_dir), str(folder)).eval()
    predictor = exp.method.predictor(exp, 1, torch.device("cpu"))
    with torch.no_grad(), predictor.routed(Routing.single_task(0, cfg.methods.slm.slots_per_task, 1)):
        torch.testing.assert_close(peft(input_ids=ids).logits, predictor.model(input_ids=ids).logits,
                                   atol=1e-4, rtol=1e-4)

    session = load_session(exp)
    spec = cfg.serve.model_copy(update={"api_key": KEY, "reload_poll_s": 0.0})
    with serving(create_app(session, spec)) as url:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).models.list()
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
        reply = client.chat.completions.create(model="mine", max_tokens=4, messages=[
            {"role": "system", "content": "You answer with one word."},
            {"role": "user", "content": "Which country is Peru in?"}, {"role": "assistant", "content": "Peru"},
            {"role": "user", "content": "Its capital?"}])
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert {r["task"] for r in reply.model_extra["slm"]["retrieval"]} <= {"capitals", "sentiment"}
    assert reply.usage.prompt_tokens > 20  # the system prompt and the history are in the prompt
