"""The serve/generate decode loop on a tiny JARe model: HF-equal greedy tokens, stops, streaming, sampling."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pipeline.jare.inject import inject_jare
from pipeline.jare.routing import Routing
from pipeline.runtime.models import load_tokenizer
from pipeline.serve.decode import Row, Sampling, _final_end, decode
from tests.tiny import randomize_slots, tiny_llama


@pytest.fixture(scope="module")
def session():
    tok = load_tokenizer("bundled:smollm2")
    model = tiny_llama(vocab=len(tok))
    model.config.pad_token_id = model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    bank = inject_jare(model, ["o_proj"], rank=3, slots_per_task=4)
    for t in range(3):
        bank.add_task(f"t{t}", seed=t)
        randomize_slots(bank, t, seed=10 + t)
    return SimpleNamespace(model=model, tokenizer=tok, bank=bank, device=torch.device("cpu"))


def prompts(tok, n: int = 3) -> list[list[int]]:
    texts = ["Classify the sentiment: I love it", "Which continent is Paris on?", "hi"][:n]
    return [tok(t)["input_ids"] for t in texts]


ROUTING = Routing(torch.tensor([[0, 5], [9, 10], [2, 3]]), torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.7, 0.3]]))


def hf_greedy(session, ids: list[int], routing: Routing, new: int) -> list[int]:
    """HF generate's greedy tokens for one prompt alone (it stops after an EOS; ignore_eos rows go on)."""
    with torch.no_grad(), session.bank.routed(routing):
        out = session.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)).long(),
                                     max_new_tokens=new, do_sample=False, pad_token_id=session.tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


def test_a_mixed_batch_decodes_each_row_as_hf_generate_does_alone(session):
    ids = prompts(session.tokenizer)
    lengths = [12, 4, 9]  # rows leave the batch at different steps
    finished: list[tuple[int, int]] = []  # (row, tokens decoded by the longest row so far)
    rows = [Row(p, Sampling(n, ignore_eos=True)) for p, n in zip(ids, lengths, strict=True)]
    for i, row in enumerate(rows):
        row.on_finish = lambda r, i=i: finished.append((i, len(rows[0].tokens)))
    decode(session, rows, ROUTING)
    assert finished == [(1, 4), (2, 9), (0, 12)]  # each answer is out the step it is complete
    for i, row in enumerate(rows):
        alone = Routing(ROUTING.slot_ids[i:i + 1], ROUTING.weights[i:i + 1])
        hf = hf_greedy(session, ids[i], alone, lengths[i])
        assert row.tokens[:len(hf)] == hf
        assert len(row.tokens) == lengths[i] and row.finish_reason == "length"


def test_stop_strings_cut_the_text_and_the_stream_never_shows_them(session):
    ids = prompts(session.tokenizer)[:1]
    free = Row(ids[0], Sampling(12, ignore_eos=True))
    decode(session, [free], Routing(ROUTING.slot_ids[:1], ROUTING.weights[:1]))
    stop = free.text[6:9]
    assert len(stop) == 3 and stop not in free.text[:6]
    pieces: list[str] = []
    row = Row(ids[0], Sampling(12, stop=(stop,), ignore_eos=True), emit=pieces.append)
    decode(session, [row], Routing(ROUTING.slot_ids[:1], ROUTING.weights[:1]))
    assert row.finish_reason == "stop" and row.text == free.text[:free.text.index(stop)]
    assert "".join(pieces) == row.text


def test_streamed_text_holds_back_a_possible_stop_prefix_and_unfinished_characters():
    assert _final_end("hello wor", ("world",)) == len("hello ")
    assert _final_end("hello", ("xyz",)) == 5
    assert _final_end("caf\ufffd", ()) == 3  # the rest of a UTF-8 character is still to come


def test_sampling_is_reproducible_with_a_seed_and_top_p_keeps_the_top_token(session):
    ids = prompts(session.tokenizer)[:1]
    one = Routing(ROUTING.slot_ids[:1], ROUTING.weights[:1])
    runs = []
    for _ in range(2):
        row = Row(ids[0], Sampling(8, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True))
        decode(session, [row], one)
        runs.append(row.tokens)
    assert runs[0] == runs[1]
    tiny_p = Row(ids[0], Sampling(8, temperature=1.0, top_p=1e-6, seed=3, ignore_eos=True))
    decode(session, [tiny_p], one)  # top_p ~ 0 keeps only the most likely token: greedy
    greedy = Row(ids[0], Sampling(8, ignore_eos=True))
    decode(session, [greedy], one)
    assert tiny_p.tokens == greedy.tokens


def test_a_cancelled_row_leaves_the_batch_and_the_others_finish(session):
    ids = prompts(session.tokenizer)
    steps = {"n": 0}

    def cancel_after_three() -> bool:
        steps["n"] += 1
        return steps["n"] > 3

    rows = [Row(ids[0], Sampling(10, ignore_eos=True), cancelled=cancel_after_three),
            Row(ids[1], Sampling(10, ignore_eos=True)), Row(ids[2], Sampling(10, ignore_eos=True))]
    decode(session, rows, ROUTING)
    assert rows[0].finish_reason == "cancelled" and len(rows[0].tokens) < 10
    assert [r.finish_reason for r in rows[1:]] == ["length", "length"]
    alone = Routing(ROUTING.slot_ids[1:2], ROUTING.weights[1:2])
    hf = hf_greedy(session, ids[1], alone, 10)
    assert rows[1].tokens[:len(hf)] == hf


def test_rows_that_join_a_running_batch_decode_as_each_would_alone(session):
    from pipeline.serve.decode import DecodeBatch

    ids = prompts(session.tokenizer)
    order = [2, 0, 1]  # the shortest prompt runs first: the joining rows' longer cache widens it, and back
    lengths = {2: 10, 0: 3, 1: 7}  # the longest prompt leaves first: its padding columns are dropped
    rows = {i: Row(ids[i], Sampling(lengths[i], ignore_eos=True)) for i in order}

    def routing_of(rows_: list[int]) -> Routing:
        return Routing(ROUTING.slot_ids[rows_], ROUTING.weights[rows_])

    batch = DecodeBatch(session)
    batch.admit([rows[2]], routing_of([2]))
    batch.step()
    batch.step()
    assert len(rows[2].tokens) == 3
    batch.admit([rows[0], rows[1]], routing_of([0, 1]))  # join mid-decode
    assert len(batch) == 3
    while batch.rows:
        batch.step()
    batch.close()
    for i in order:
        assert rows[i].tokens == hf_greedy(session, ids[i], routing_of([i]), lengths[i]), f"row {i}"


def test_penalties_follow_openai_and_vllm_semantics():
    from pipeline.serve.sampling import apply_penalties

    logits = torch.tensor([2.0, -1.0, 0.5, 3.0])
    openai_style = apply_penalties(logits, Sampling(1, presence_penalty=0.5, frequency_penalty=0.25), [0], [3, 3, 2])
    # only answer tokens count: token 3 twice (0.5 + 2 x 0.25), token 2 once (0.5 + 0.25), prompt token 0 not at all
    assert openai_style.tolist() == [2.0, -1.0, 0.5 - 0.75, 3.0 - 1.0]
    repeated = apply_penalties(logits, Sampling(1, repetition_penalty=2.0), [0, 1], [])
    assert repeated.tolist() == [1.0, -2.0, 0.5, 3.0]  # seen tokens: positive halved, negative doubled


def test_a_penalty_moves_a_greedy_row_off_a_token_it_already_said():
    from pipeline.serve.sampling import pick_tokens

    logits = torch.tensor([[0.0, 5.0, 4.0], [0.0, 5.0, 4.0]])
    samplings = [Sampling(1), Sampling(1, presence_penalty=2.0)]
    picked = pick_tokens(logits.clone(), samplings, [([], [1]), ([], [1])], [None, None])
    assert picked.tolist() == [1, 2]  # the same logits: only the penalised row leaves token 1
