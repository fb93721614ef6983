"""`slm serve` end to end: the official openai client against a real uvicorn on 127.0.0.1.

One tiny LLaMA run (prepare + three tasks trained for a few steps through the real stages +
index) is shared by the module; each test starts its own server on a free port over one loaded
session, so no two servers ever decode at once.
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
from pipeline.data.synthetic import get_generator
from pipeline.experiment import load_experiment
from pipeline.serve.app import create_app
from pipeline.serve.runner import serving
from pipeline.serve.session import load_session
from tests.tiny import finish_tasks, save_tiny_checkpoint, tiny_overrides

GENERATORS = {"sentiment": "sentiment", "geography": "geography", "animals": "animal_class"}  # default.yaml
NEW_TOKENS = 10


@pytest.fixture(scope="module")
def run_overrides(tmp_path_factory) -> list[str]:
    """A finished run of the embedded default's three tasks on a tiny LLaMA (~40 s on 2 cores)."""
    root = tmp_path_factory.mktemp("serve")
    model = save_tiny_checkpoint(root / "tiny")
    return finish_tasks(tiny_overrides(root / "run", model))


@pytest.fixture(scope="module")
def session(run_overrides):
    """The model of the first two tasks; task 2 (animals) is hidden until the reload test shows it."""
    exp = load_experiment(None, run_overrides)
    done = exp.layout.task_dir(2, "animals") / "DONE"
    done.rename(done.with_suffix(".hidden"))
    return load_session(exp)


def spec_of(session, **changes):
    return session.cfg.serve.model_copy(update={"reload_poll_s": 0.0, **changes})


@contextlib.contextmanager
def server(session, **changes):
    app = create_app(session, spec_of(session, **changes))
    with serving(app) as url:
        yield url, app


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def prompts(per_task: int = 2) -> list[dict]:
    """Held-out-like records of each task (another seed than prepare's), tasks interleaved."""
    recs = {t: get_generator(g).generate(per_task, seed=123) for t, g in GENERATORS.items()}
    return [recs[t][i] for i in range(per_task) for t in GENERATORS]


def ask(c: openai.OpenAI, model: str, record: dict, max_tokens: int = NEW_TOKENS, **extension):
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": record["instruction"]}],
                                     max_tokens=max_tokens, extra_body={"input": record["input"], **extension})


def slm_ext(obj) -> dict:
    return obj.model_extra["slm"]


def test_openai_client_gets_the_slm_generate_answer_and_its_retrieved_slots(session, run_overrides, capsys):
    record = prompts(1)[0]  # a sentiment record
    with server(session) as (url, _):
        c = client(url)
        models = c.models.list()
        name = models.data[0].id
        assert models.data[0].model_extra["slm"]["tasks"] == ["sentiment", "geography"]
        chat = ask(c, name, record)
        completion = c.completions.create(model=name, prompt=record["instruction"], max_tokens=NEW_TOKENS,
                                          extra_body={"input": record["input"]})
        stream = list(c.chat.completions.create(model=name, stream=True, max_tokens=NEW_TOKENS,
                                                messages=[{"role": "user", "content": record["instruction"]}],
                                                extra_body={"input": record["input"]}))
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
    answer = chat.choices[0].message.content
    assert chat.choices[0].finish_reason in ("stop", "length") and chat.usage.completion_tokens >= 1
    retrieval = slm_ext(chat)["retrieval"]
    assert len(retrieval) == session.cfg.dtkr.top_k
    assert {r["task"] for r in retrieval} <= {"sentiment", "geography"}
    assert abs(sum(r["weight"] for r in retrieval) - 1) < 1e-5
    assert completion.choices[0].text == answer and slm_ext(completion)["retrieval"] == retrieval
    streamed = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert streamed == answer
    assert stream[-1].choices[0].finish_reason == chat.choices[0].finish_reason
    assert slm_ext(stream[-1])["retrieval"] == retrieval  # the extension rides on the last chunk

    # `slm generate` (the CLI, its own process state) prints the same answer and slots
    hidden = session.layout.task_dir(2, "animals") / "DONE.hidden"
    assert hidden.is_file()  # generate must see the same two tasks
    capsys.readouterr()
    args = ["generate", record["instruction"], "--input", record["input"], "--max-new-tokens", str(NEW_TOKENS)]
    assert slm([*args, *[a for o in run_overrides for a in ("--set", o)]]) == 0
    out = capsys.readouterr().out
    assert f"answer: {answer.strip()}" in out.splitlines()
    for r in retrieval:
        assert f"slot {r['slot']}  weight {r['weight']:.3f}" in out


def test_concurrent_clients_each_get_their_own_prompts_sequential_answer(session):
    records = prompts(3)
    with server(session, max_batch_size=4, max_wait_ms=100) as (url, app):
        c = client(url)
        name = c.models.list().data[0].id
        sequential = [ask(c, name, r) for r in records]
        assert app.state.batcher.largest_batch == 1
        forced = ask(c, name, records[0], task="geography")
        with ThreadPoolExecutor(len(records)) as pool:  # every record twice, all at once
            together = list(pool.map(lambda r: ask(c, name, r), records + records))
        assert app.state.batcher.largest_batch > 1  # they were really decoded in shared batches
    want = [(s.choices[0].message.content, slm_ext(s)["retrieval"]) for s in sequential]
    got = [(t.choices[0].message.content, slm_ext(t)["retrieval"]) for t in together]
    for i, (text, retrieval) in enumerate(got):
        assert text == want[i % len(records)][0], f"request {i} got another prompt's answer"
        assert [r["slot"] for r in retrieval] == [r["slot"] for r in want[i % len(records)][1]]
    assert {r["task"] for r in slm_ext(forced)["retrieval"]} == {"geography"}
    assert slm_ext(forced)["task"] == "geography"


def test_a_newly_done_task_is_loaded_between_batches_and_a_tampered_one_is_refused(session):
    layout = session.layout
    folder = layout.task_dir(2, "animals")
    record = prompts(1)[2]  # an animals record
    adapter = folder / "adapter.safetensors"
    good = adapter.read_bytes()
    with server(session) as (url, app):
        c = client(url)
        name = c.models.list().data[0].id
        before = ask(c, name, record)
        before_long = ask(c, name, record, max_tokens=60)
        assert {r["task"] for r in slm_ext(before)["retrieval"]} <= {"sentiment", "geography"}

        adapter.write_bytes(good + b"tampered")  # DONE appears, but its adapter no longer hashes
        (folder / "DONE.hidden").rename(folder / "DONE")
        refused = httpx.post(f"{url}/admin/reload", timeout=60).json()
        assert refused["added"] == [] and "animals" in refused["rejected"]
        assert "sha256" in refused["rejected"]["animals"]
        listed = c.models.list().data[0].model_extra["slm"]
        assert listed["tasks"] == ["sentiment", "geography"] and "animals" in listed["rejected"]
        assert ask(c, name, record).choices[0].message.content == before.choices[0].message.content

        adapter.write_bytes(good)
        # a request in flight while the reload is asked for finishes on the old set
        batcher = app.state.batcher
        started = batcher.batches
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(lambda: ask(c, name, record, max_tokens=60))
            end = time.monotonic() + 30
            while batcher.batches == started:  # its batch is decoding
                assert time.monotonic() < end
                time.sleep(0.005)
            reloaded = httpx.post(f"{url}/admin/reload", timeout=60).json()
            in_flight = slow.result()
        assert reloaded["added"] == ["animals"] and reloaded["tasks"] == ["sentiment", "geography", "animals"]
        assert c.models.list().data[0].model_extra["slm"]["tasks"] == ["sentiment", "geography", "animals"]
        assert {r["task"] for r in slm_ext(in_flight)["retrieval"]} <= {"sentiment", "geography"}
        assert in_flight.choices[0].message.content == before_long.choices[0].message.content
        after = ask(c, name, record, task="animals")
        assert {r["task"] for r in slm_ext(after)["retrieval"]} == {"animals"}
        assert httpx.post(f"{url}/admin/reload", timeout=60).json()["added"] == []  # nothing new twice


def test_polling_picks_up_a_task_without_being_asked(session, tmp_path):
    """A second look at pickup: the worker polls between batches (serve.reload_poll_s)."""
    if "animals" in session.tasks:  # the reload test ran first: drop the task again to re-add it
        session.bank.remove_task("animals")
        session.router.remove_task("animals")
    folder = session.layout.task_dir(2, "animals")
    if (folder / "DONE.hidden").exists():  # run on its own: the DONE appears now
        (folder / "DONE.hidden").rename(folder / "DONE")
    with server(session, reload_poll_s=0.2) as (url, _):
        end = time.monotonic() + 30
        while "animals" not in httpx.get(f"{url}/v1/models").json()["data"][0]["slm"]["tasks"]:
            assert time.monotonic() < end, "the poll never loaded the DONE task"
            time.sleep(0.1)


def post(url: str, path: str, body, **kw) -> httpx.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{url}{path}", content=data, headers={"content-type": "application/json"}, timeout=60, **kw)


def test_bad_requests_get_4xx_with_a_message_and_the_server_keeps_serving(session):
    long_text = "word " * 200
    with server(session, max_body_bytes=4096) as (url, _):
        name = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        ok = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        cases = {
            "missing messages": ({"model": name}, 400, "messages"),
            "messages not a list": ({**ok, "messages": "hi"}, 400, "messages"),
            "content not a string": ({**ok, "messages": [{"role": "user", "content": 5}]}, 400, "content"),
            "max_tokens a string": ({**ok, "max_tokens": "5"}, 400, "max_tokens"),
            "max_tokens too large": ({**ok, "max_tokens": 100000}, 400, "max_tokens"),
            "temperature out of range": ({**ok, "temperature": 5}, 400, "temperature"),
            "no user message": ({**ok, "messages": [{"role": "system", "content": "x"}]}, 400, "user"),
            "prompt too long": ({**ok, "messages": [{"role": "user", "content": long_text}]}, 400, "tokens"),
            "unknown task": ({**ok, "task": "cooking"}, 400, "cooking"),
            "unknown model": ({**ok, "model": "gpt-9"}, 404, "gpt-9"),
            "n > 1": ({**ok, "n": 2}, 400, "n"),
            "tools": ({**ok, "tools": [{"type": "function"}]}, 400, "tools"),
            "not an object": ([1, 2], 400, "object"),
            "non-JSON": (b"{not json", 400, "JSON"),
            "oversized body": ({**ok, "pad": "x" * 5000}, 413, "limit"),
        }
        for what, (body, status, needle) in cases.items():
            r = post(url, "/v1/chat/completions", body)
            assert r.status_code == status, f"{what}: {r.status_code} {r.text}"
            assert needle in r.json()["error"]["message"], f"{what}: {r.json()}"
        r = post(url, "/v1/completions", {"model": name, "prompt": ["a", "b"]})
        assert r.status_code == 400 and "one prompt" in r.json()["error"]["message"]
        with pytest.raises(openai.BadRequestError, match="cooking"):
            ask(client(url), name, prompts(1)[0], task="cooking")
        assert post(url, "/v1/chat/completions", ok).status_code == 200  # still serving
        exact = post(url, "/v1/chat/completions", {**ok, "max_tokens": 4, "ignore_eos": True}).json()
        assert exact["usage"]["completion_tokens"] == 4 and exact["choices"][0]["finish_reason"] == "length"


def test_a_request_past_its_timeout_is_cancelled_and_frees_its_batch_slot(session):
    # Every forward sleeps 30 ms, so 500 tokens take >= 15 s, far past the 6 s timeout; the long
    # wait for company puts the long and the short request in one batch however slow the machine,
    # and one worker thread keeps a loaded machine from stretching the short one's 3 steps.
    threads = torch.get_num_threads()
    slow_steps = session.model.register_forward_pre_hook(lambda *a: time.sleep(0.03))
    try:
        with server(session, request_timeout_s=6.0, max_tokens_limit=500, max_batch_size=2,
                    max_wait_ms=1500, threads=1) as (url, app):
            c = client(url)
            name = c.models.list().data[0].id
            record = prompts(1)[0]
            with ThreadPoolExecutor(2) as pool:
                long = pool.submit(lambda: c.chat.completions.create(
                    model=name, messages=[{"role": "user", "content": record["instruction"]}], max_tokens=500))
                short = pool.submit(lambda: ask(c, name, record, max_tokens=3))
                with pytest.raises(openai.APIStatusError) as err:
                    long.result()
                assert short.result().usage.completion_tokens <= 3  # its batch-mate finished normally
            assert err.value.status_code == 408 and "request_timeout_s" in str(err.value)
            t0 = time.monotonic()
            ask(c, name, record, max_tokens=3)  # the worker is free again at once, not 500 steps later
            assert time.monotonic() - t0 < 10
            streamed = c.chat.completions.create(model=name, stream=True, max_tokens=500,
                                                 messages=[{"role": "user", "content": record["instruction"]}])
            with pytest.raises(openai.APIError, match="request_timeout_s"):
                list(streamed)
    finally:
        slow_steps.remove()
        torch.set_num_threads(threads)


def test_serve_refuses_a_run_without_an_index_or_without_a_finished_task(tmp_path, run_overrides):
    from pipeline.errors import StageInputError

    exp = load_experiment(None, [*run_overrides, f"output_dir={tmp_path / 'empty'}"])
    with pytest.raises(StageInputError, match="slm serve"):
        load_session(exp)
    lora = load_experiment(None, [*run_overrides, f"output_dir={tmp_path / 'empty'}", "method=seq_lora"])
    with pytest.raises(StageInputError, match="no finished task"):
        load_session(lora)


