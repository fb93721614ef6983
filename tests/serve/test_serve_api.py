"""`slm serve` behaves like the OpenAI API as vLLM implements it: the official openai client against
a real uvicorn on 127.0.0.1, over a tiny LLaMA trained for two tasks per method through the stages.

Chat renders every message (system, history) with the chat template; an API key is enforced; a
field the server cannot honour is a 400 naming it; stream_options.include_usage adds the usage
chunk; a request joins a running batch at the next step (continuous batching); every method serves.
"""

from __future__ import annotations

import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch

from pipeline.cli import main as slm
from pipeline.experiment import load_experiment
from pipeline.serve.app import create_app
from pipeline.serve.decode import Row, Sampling, decode
from pipeline.serve.runner import serving
from pipeline.serve.session import load_session

KEY = "sk-test-123"
SYSTEM = "You answer in one word."
HISTORY = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where is Paris?"},
           {"role": "assistant", "content": "Europe."}, {"role": "user", "content": "And Lima?"}]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir) -> list[str]:
    """Two tasks of the embedded default on a tiny LLaMA, for slm (indexed), seq_lora and seq_ft."""
    root = tmp_path_factory.mktemp("serve-api")
    overrides = [f"output_dir={root / 'run'}", f"model.name_or_path={tiny_model_dir}", "data.synthetic_size=40",
                 "train.max_steps=2", "train.micro_batch_size=4", "train.save_every=2", "model.max_seq_len=96"]
    assert slm(["prepare", *overrides]) == 0
    for method in ("slm", "seq_lora", "seq_ft"):
        for t in range(2):
            assert slm(["train", "--task", str(t), "--method", method, *overrides]) == 0
    assert slm(["index", *overrides]) == 0
    return overrides


@pytest.fixture(scope="module")
def session(trained):
    return load_session(load_experiment(None, trained))


@contextlib.contextmanager
def server(session, **changes):
    spec = session.cfg.serve.model_copy(update={"reload_poll_s": 0.0, **changes})
    app = create_app(session, spec)
    with serving(app) as url:
        yield url, app


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def post(url: str, body: dict, key: str | None = None) -> httpx.Response:
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    return httpx.post(f"{url}/v1/chat/completions", content=json.dumps(body).encode(), headers=headers, timeout=60)


def test_chat_renders_the_system_prompt_and_the_history_with_the_chat_template(session):
    tok = session.tokenizer
    want_ids = tok(tok.apply_chat_template(HISTORY, add_generation_prompt=True, tokenize=False),
                   add_special_tokens=False)["input_ids"]
    record = {"instruction": "And Lima?", "input": "", "history": HISTORY[:-1]}
    row = Row(session.encode(record), Sampling(8, ignore_eos=True))
    decode(session, [row], session.route([record], [None]).routing)  # before the server owns the model
    with server(session) as (url, _):
        c = client(url)
        name = c.models.list().data[0].id
        chat = c.chat.completions.create(model=name, messages=HISTORY, max_tokens=8, extra_body={"ignore_eos": True})
        last_only = c.chat.completions.create(model=name, messages=HISTORY[-1:], max_tokens=8)
    assert chat.usage.prompt_tokens == len(want_ids) > last_only.usage.prompt_tokens
    assert chat.choices[0].message.content == row.text  # the same tokens as the template's prompt alone
    retrieval = chat.model_extra["slm"]["retrieval"]
    assert retrieval and abs(sum(r["weight"] for r in retrieval) - 1) < 1e-5  # slm retrieves per request


def test_an_api_key_is_required_when_set_and_health_stays_open(session):
    with server(session, api_key=KEY) as (url, _):
        with pytest.raises(openai.AuthenticationError) as err:
            client(url, "wrong").models.list()
        assert err.value.status_code == 401
        assert post(url, {"model": "x", "messages": [{"role": "user", "content": "hi"}]}).status_code == 401
        assert httpx.post(f"{url}/admin/reload", timeout=30).status_code == 401
        assert httpx.get(f"{url}/health").status_code == 200
        good = client(url, KEY)
        name = good.models.list().data[0].id
        assert good.chat.completions.create(model=name, messages=HISTORY, max_tokens=2).choices[0].finish_reason


def test_the_api_key_comes_from_the_flag_then_the_environment_then_the_config(session, monkeypatch):
    from pipeline.serve.command import Args, serve_spec

    spec = session.cfg.serve.model_copy(update={"api_key": "from-yaml"})
    monkeypatch.delenv("SLM_API_KEY", raising=False)
    assert serve_spec(spec, Args()).api_key == "from-yaml"
    monkeypatch.setenv("SLM_API_KEY", "from-env")
    assert serve_spec(spec, Args()).api_key == "from-env"
    assert serve_spec(spec, Args(api_key="from-flag")).api_key == "from-flag"


def test_fields_the_server_cannot_honour_are_a_400_naming_them(session):
    with server(session) as (url, _):
        name = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        ok = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        refused = {
            "an unknown field": ({**ok, "mirostat": 1}, "mirostat"),
            "logprobs asked for": ({**ok, "logprobs": True}, "logprobs"),
            "a json response format": ({**ok, "response_format": {"type": "json_object"}}, "response_format"),
            "a message field": ({**ok, "messages": [{"role": "user", "content": "hi", "name": "bob"}]},
                                "messages[0].name"),
            "a tool message": ({**ok, "messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
            "an assistant message last": ({**ok, "messages": [*HISTORY[:3]]}, "messages"),
            "two user messages in a row": ({**ok, "messages": [HISTORY[1], HISTORY[1]]}, "messages[1]"),
            "stream_options without stream": ({**ok, "stream_options": {"include_usage": True}}, "stream_options"),
            "an unknown stream option": ({**ok, "stream": True, "stream_options": {"continuous": True}},
                                         "stream_options.continuous"),
            "top_k below -1": ({**ok, "top_k": -2}, "top_k"),
        }
        for what, (body, field) in refused.items():
            r = post(url, body)
            assert r.status_code == 400, f"{what}: {r.status_code} {r.text}"
            error = r.json()["error"]
            assert error["param"] == field and field in error["message"], f"{what}: {error}"
        asks_nothing = {**ok, "logprobs": False, "tools": [], "response_format": {"type": "text"}, "user": "u1"}
        assert post(url, asks_nothing).status_code == 200


def test_sampling_fields_are_honoured(session):
    with server(session) as (url, _):
        c = client(url)
        name = c.models.list().data[0].id

        def ask(**kw) -> str:
            reply = c.chat.completions.create(model=name, messages=HISTORY[-1:], max_tokens=6,
                                              extra_body={"ignore_eos": True, **kw.pop("extra", {})}, **kw)
            return reply.choices[0].message.content

        greedy = ask()
        assert ask(temperature=1.0, extra={"top_k": 1}) == greedy  # top_k 1 keeps only the argmax
        assert ask(temperature=1.0, seed=5) == ask(temperature=1.0, seed=5)
        for field in ({"presence_penalty": 1.5}, {"frequency_penalty": 1.0}, {"extra": {"repetition_penalty": 1.3}},
                      {"extra": {"min_p": 0.1}}, {"stop": ["zzz"]}, {"n": 1}):
            assert isinstance(ask(**dict(field)), str)


def test_stream_options_include_usage_adds_a_usage_chunk(session):
    with server(session) as (url, _):
        c = client(url)
        name = c.models.list().data[0].id
        chunks = list(c.chat.completions.create(model=name, messages=HISTORY, max_tokens=4, stream=True,
                                                stream_options={"include_usage": True},
                                                extra_body={"ignore_eos": True}))
        plain = list(c.chat.completions.create(model=name, messages=HISTORY, max_tokens=4, stream=True))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].usage.prompt_tokens > 0
    assert all(ch.usage is None for ch in chunks[:-1]) and all(ch.usage is None for ch in plain)


@pytest.mark.parametrize("batching", ["continuous", "static"])
def test_a_request_joins_the_running_batch_at_the_next_step_only_when_continuous(session, batching):
    slow = session.model.register_forward_pre_hook(lambda *a: time.sleep(0.02))  # >= 1.2 s for the long one
    finished: list[str] = []
    try:
        with server(session, batching=batching, max_batch_size=4, max_wait_ms=0) as (url, app):
            c = client(url)
            name = c.models.list().data[0].id

            def ask(label: str, tokens: int) -> str:
                reply = c.chat.completions.create(model=name, messages=HISTORY[-1:], max_tokens=tokens,
                                                  extra_body={"ignore_eos": True})
                finished.append(label)
                return reply.choices[0].message.content

            batcher = app.state.batcher
            with ThreadPoolExecutor(2) as pool:
                long = pool.submit(ask, "long", 60)
                while batcher.batches == 0:  # the long request is decoding
                    time.sleep(0.005)
                short = pool.submit(ask, "short", 3)
                short.result(), long.result()
    finally:
        slow.remove()
    if batching == "continuous":
        assert finished == ["short", "long"] and batcher.largest_batch == 2
    else:
        assert finished == ["long", "short"] and batcher.largest_batch == 1


@pytest.mark.parametrize("method", ["seq_lora", "seq_ft"])
def test_every_method_serves_through_its_predictor(trained, method):
    one = load_session(load_experiment(None, [*trained, f"method={method}"]))
    assert one.tasks == ["sentiment", "geography"] and not one.retrieves
    record = {"instruction": "And Lima?", "input": "", "history": HISTORY[:-1]}
    ids = one.encode(record)
    with torch.no_grad():  # HF greedy generate on the method's own model: what the server must answer
        out = one.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)).long(),
                                 max_new_tokens=6, do_sample=False, pad_token_id=one.tokenizer.pad_token_id)
    want = one.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    with server(one) as (url, _):
        c = client(url)
        name = c.models.list().data[0].id
        chat = c.chat.completions.create(model=name, messages=HISTORY, max_tokens=6)
        forced = post(url, {"model": name, "messages": HISTORY, "task": "sentiment"})
    assert chat.choices[0].message.content == want
    assert chat.model_extra["slm"] == {"method": method}  # no retrieval to report
    assert forced.status_code == 400 and forced.json()["error"]["param"] == "task"

