"""JARe vs LoRA speed: one training step and batched greedy generation, on the bundled SmolLM2-135M.

    python bench/jare_vs_lora.py                 # default.yaml, ~3 min on 2 idle CPU cores
    python bench/jare_vs_lora.py --quick         # 3 rounds a phase: a quick look (results: default-quick.json)
    python bench/jare_vs_lora.py my.yaml         # other settings (targets, rank, seq_len, ...): a YAML file

Settings: bench/experiments/jare_vs_lora/<name>.yaml (`Settings` below). CPU, fp32, torch threads
= the cores this process may use (--threads). The two methods live side by side in one process
(two copies of the frozen base) and are timed ALTERNATELY, round after round, so both see the
same background load; each reports the median of its rounds (wall clock; process CPU time beside
it), and the median of the per-round JARe/LoRA ratios as a cross-check. A phase stops adding
rounds after `min_rounds` once the next would pass the `budget_s` deadline (270 s).

(a) train step = forward + backward + AdamW step (+ zero_grad), batch 8 x 64 random tokens, loss
    on every token. JARe: 3 tasks x P=4 slots of rank 8 on o_proj, top-2, training task 2 with
    per-sample routing restricted to its own slots (`Routing(..., task=2)`, what `slm train` sets).
    LoRA: PEFT, same rank, same target modules, alpha = rank (`pipeline.methods.lora.model.lora_model`).
    Extra line: JARe with the same slots but no task hint (the all-tasks gather path).
(b) generate = 8 prompts (built-in sentiment / arithmetic / geography tasks, mixed), left padded,
    greedy, exactly 16 new tokens (EOS suppressed so both sides decode the same number of steps).
    JARe: DTKR keys learned per task on 48 of its queries, a KeyStore over the 3 tasks, each
    prompt routed by the store (top-2 over all 12 slots) and generated with `bank.routed`; timed
    end to end (encode + search + generate) and split. LoRA: `merge_and_unload()`, i.e. the plain
    base model. Extra lines: the same routed generation with JARe's per-routing branch cache
    switched off (`jare_cache = False` on every layer: the gather of every decode step, as before
    the cache); one prompt, JARe merged into W (`bank.merged`) vs the merged LoRA.
(c) decode step = one KV-cached greedy step of the same 8 prompts after their prefill, median over
    16 steps a call: the side branch's own cost, without generate()'s overhead or retrieval.
    JARe routed (cache on, cache off) vs the merged LoRA; `decode_step_ratio` in the results.

The last line printed is `train_step_ratio=<x> generate_ratio=<y>` (JARe / LoRA medians; the
generate ratio includes JARe's retrieval). Writes bench/results/jare_vs_lora/<name>.json through
bench.runner: sections `train_info`, `generate_info`, `decode_step_info` (every round's samples,
medians and ratios); run_info adds the settings, threads, trainable parameters, rounds run, the
retrieval's top-1 task accuracy and the load average at start.
Targets: train_step_ratio <= 1.10, generate_ratio <= 1.10 (issue 13; it was <= 1.25 before the cache).

Measured (2 shared vCPUs, torch 2.13 CPU, defaults, machine otherwise idle, ~3 min a run):
train_step_ratio 0.96-1.06, generate_ratio 1.03-1.19 over five runs, 1.14-1.19 in the last two
(paired per-round: train 0.97-1.02, generate 1.07-1.16); the one-prompt merged line 1.06-1.14.
Run-to-run spread is the machine's: the same LoRA call varies by up to 40 % between rounds. With
other jobs oversubscribing the 2 cores (load avg 4-7) the OpenMP threads wait on each other, a
step takes 10-30 s instead of ~2.4 s, the ratios are meaningless (0.7-1.7 seen) and the minimum
rounds overrun the budget; the script warns when the load is above the threads at start.

Where JARe's time goes. Training: at parity; the side branch is a few (B, L, 16)-wide bmm's
beside the 576x576 matmul it rides on, and AdamW over 4x LoRA's parameters is ~1 ms.
Generation: per layer and decode step the side branch costs ~370 us against ~150 us for o_proj
itself at 8 tokens (2 threads): cat of all tasks' slots, the per-sample gather (index_select),
two tiny bmm's, mul, add; at ~10-30 us an op that is ~6-7 % of generate, the rest of the gap
being retrieval (~2 %) and noise. The layer used to spend ~610 us there (advanced indexing
u[ids], einsum dispatch, repeat_interleave of the weights; fixed in pipeline/jare/layer.py).
The routing is fixed for a whole generate() call, so JareLinear now caches the gathered,
weight-folded U/V per Routing object in no-grad mode (pipeline/jare/layer.py `_BranchCache`;
invalidated on parameter version/storage change, task add/remove, merge): a decode step's side
branch is then two tiny bmm's and an add. The numbers above predate it (the prototype took
routed/base from 1.08-1.20 to 1.01-1.12 in one process, identical tokens); the
`jare_routed_nocache` line measures the uncached path in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/x.py` puts bench/ on sys.path

from bench import runner  # noqa: E402
from pipeline.spec import Spec  # noqa: E402

runner.preamble()
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BENCH = "jare_vs_lora"
# The code this bench measures (its results file records the fingerprint).
MEASURED = ("bench.jare_vs_lora", "pipeline.jare.layer", "pipeline.jare.inject", "pipeline.jare.routing",
            "pipeline.dtkr.keys", "pipeline.dtkr.router", "pipeline.dtkr.store", "pipeline.methods.lora.model")
TASKS = ("sentiment", "arithmetic", "geography")  # pipeline.data.synthetic generators
QUICK = {"rounds": 3, "gen_rounds": 3}  # --quick: enough rounds to see that every phase works


class Settings(Spec):
    """bench/experiments/jare_vs_lora/<name>.yaml."""

    name: str
    """The file's stem: the results are bench/results/jare_vs_lora/<name>.json."""
    model: str = "bundled:smollm2"
    encoder: str = "bundled:all-minilm-l6-v2"
    targets: list[str] = Field(default_factory=lambda: ["o_proj"], min_length=1)
    """Modules that get JARe slots and the LoRA (the same for both)."""
    rank: int = Field(8, ge=1)
    slots: int = Field(4, ge=1)
    """P, slots per task."""
    top_k: int = Field(2, ge=1)
    groups: int = Field(6, ge=1)
    """DTKR key groups (must divide the encoder's dimension)."""
    keys: Literal["learned", "random"] = "learned"
    """learned: DTKR keys trained on 48 queries of each task; random: random keys (no key training)."""
    batch: int = Field(8, ge=1)
    seq_len: int = Field(64, ge=2)
    warmup: int = Field(2, ge=0)
    """Untimed training steps of each variant first."""
    rounds: int = Field(9, ge=1)
    """Timed training rounds (one step of each variant)."""
    prompts: int = Field(8, ge=1)
    new_tokens: int = Field(16, ge=1)
    gen_warmup: int = Field(1, ge=0)
    gen_rounds: int = Field(9, ge=1)
    single_prompt: bool = True
    """Also time one prompt, JARe merged into W vs the merged LoRA."""
    min_rounds: int = Field(3, ge=1)
    """Timed rounds each phase runs whatever the budget."""
    budget_s: float = Field(270.0, gt=0)
    """Wall-clock budget of the whole run: a phase stops adding rounds (beyond min_rounds) when the
    next one would overrun; training gets ~60 % of it."""
    seed: int = 0


load_settings = runner.settings_loader(BENCH, Settings)


log = runner.log


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", nargs="?", default="default",
                   help="bench/experiments/jare_vs_lora/<name>.yaml (or a path to such a file)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK}; results go to <name>-quick.json")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch threads (default: the cores this process may use)")
    p.add_argument("--results-dir", type=Path, default=runner.RESULTS)
    return p.parse_args(argv)


# ---- setup -----------------------------------------------------------------------------------


def build_jare(settings: Settings, tasks: list[str]):
    import torch

    from pipeline.jare.inject import inject_jare
    from pipeline.runtime.models import load_base_model

    model = load_base_model(settings.model, "float32", device=torch.device("cpu"))
    bank = inject_jare(model, settings.targets, settings.rank, settings.slots, torch.float32)
    for i, name in enumerate(tasks):
        bank.add_task(name, seed=settings.seed + i)
        gen = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():  # U starts at zero; give every slot a real (small) increment
            for u in bank.task_parameters(i)[0::2]:
                u.copy_(torch.randn(u.shape, generator=gen) * 0.01)
    train_task = len(tasks) - 1
    params = bank.train_only(train_task)
    return model, bank, params, train_task


def build_lora(settings: Settings):
    import torch
    from peft import LoraConfig, get_peft_model

    from pipeline.runtime.models import load_base_model

    model = load_base_model(settings.model, "float32", device=torch.device("cpu"))
    cfg = LoraConfig(r=settings.rank, lora_alpha=settings.rank, lora_dropout=0.0, target_modules=list(settings.targets))
    torch.manual_seed(settings.seed)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():  # B starts at zero; make the merge below a real one
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    return peft_model, [p for p in peft_model.parameters() if p.requires_grad]


def train_routing(settings: Settings, train_task: int, hint: bool):
    """Per-sample top-k of the training task's own slots, random but fixed (what slm train sets)."""
    import torch

    from pipeline.jare.routing import Routing

    gen = torch.Generator().manual_seed(settings.seed + 1)
    local = torch.stack([torch.randperm(settings.slots, generator=gen)[:settings.top_k] for _ in range(settings.batch)])
    w = torch.rand(settings.batch, settings.top_k, generator=gen) + 0.1
    return Routing(local + train_task * settings.slots, w / w.sum(-1, keepdim=True), train_task if hint else None)


def build_store(settings: Settings, tasks: list[str]):
    """Encoder + KeyStore over every task, keys learned on each task's queries (or random)."""
    import torch

    from pipeline.data.synthetic import get_generator
    from pipeline.dtkr.encoder import SentenceEncoder
    from pipeline.dtkr.keys import train_keys
    from pipeline.dtkr.store import KeyStore
    from pipeline.prompts.batching import queries

    encoder = SentenceEncoder(settings.encoder)
    store = KeyStore(encoder.dim, settings.groups, settings.slots, settings.encoder)
    records = {}
    for i, name in enumerate(tasks):
        recs = get_generator(name).generate(48 + settings.prompts, seed=settings.seed)
        records[name] = recs[48:]  # held out: the prompts generated from
        if settings.keys == "learned":
            emb = encoder.encode(queries(recs[:48]))
            keys, _ = train_keys(emb, settings.slots, settings.groups, lr=1e-3, weight_decay=0.01, grad_clip=0.1,
                                 epochs=3, batch_size=16, mask_ratio=0.25, seed=settings.seed + i, progress=False)
        else:
            gen = torch.Generator().manual_seed(settings.seed + i)
            keys = torch.randn(settings.slots, settings.groups, encoder.dim // settings.groups, generator=gen)
        store.add_task(name, keys)
    # the prompts: round-robin over the tasks, so one batch mixes them (per-sample routing matters)
    prompts = [records[tasks[j % len(tasks)]][j // len(tasks)] for j in range(settings.prompts)]
    return encoder, store, prompts


# ---- timed units -----------------------------------------------------------------------------


def alternate(variants: dict, warmup: int, rounds: int, min_rounds: int, deadline: float) -> dict:
    """Warm up every variant, then rounds of one call of each, the order reversed every other
    round (A B C, C B A, ...) so no variant always runs first. Wall time (what the ratios use)
    and process CPU time (both threads; less sensitive to other processes taking the cores, more
    to spin-waiting) per call. Stops early, after min_rounds, at the deadline."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(rounds):
        round_start = time.perf_counter()
        for name in list(variants)[::1 if i % 2 == 0 else -1]:
            w0, c0 = time.perf_counter(), time.process_time()
            variants[name]()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
        log(f"  round {i + 1}/{rounds}: " + "  ".join(f"{k} {v[-1]:.3f}s" for k, v in wall.items()))
        took = time.perf_counter() - round_start
        if i + 1 < rounds and i + 1 >= min_rounds and time.perf_counter() + took > deadline:
            log(f"  stopping after {i + 1} rounds: the next would pass the budget_s deadline ({load_str()})")
            break
    return {k: {"median_s": median(wall[k]), "cpu_median_s": median(cpu[k]), "samples_s": wall[k],
                "cpu_samples_s": cpu[k]} for k in variants}


def train_step(model, optimizer, batch) -> None:
    out = model(**batch)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def alternate_values(variants: dict, rounds: int) -> dict:
    """Like `alternate`, for functions that time themselves: the median of what each returns."""
    for fn in variants.values():
        fn()  # warm-up
    got: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(rounds):
        for name in list(variants)[::1 if i % 2 == 0 else -1]:
            got[name].append(variants[name]())
        log(f"  round {i + 1}/{rounds}: " + "  ".join(f"{k} {v[-1] * 1000:.1f}ms" for k, v in got.items()))
    return {k: {"median_s": median(v), "samples_s": v} for k, v in got.items()}


def decode_step_s(model, bank, routing, enc: dict, steps: int, cache: bool = True) -> float:
    """Median wall time of one greedy decode step (B prompts, KV cache, after their prefill)."""
    import torch
    from transformers import DynamicCache

    layers = bank.layers.values() if bank is not None else []
    for layer in layers:
        layer.jare_cache = cache
    routed = bank.routed(routing) if bank is not None else contextlib.nullcontext()
    times = []
    try:
        with torch.no_grad(), routed:
            kv = DynamicCache(config=model.config)
            out = model(**enc, cache=kv, use_cache=True, logits_to_keep=1)
            mask = enc["attention_mask"]
            for _ in range(steps):
                nxt = out.logits[:, -1].argmax(-1)[:, None]
                mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
                t0 = time.perf_counter()
                out = model(input_ids=nxt, attention_mask=mask, cache=kv, use_cache=True)
                times.append(time.perf_counter() - t0)
    finally:
        for layer in layers:
            layer.jare_cache = True
    return median(times)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired(a: dict, b: dict) -> float:
    """Median of the per-round ratios a/b: each pair ran back to back under the same load."""
    return median([x / y for x, y in zip(a["samples_s"], b["samples_s"], strict=True)])


def load_str() -> str:
    return "load avg " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def table_rows(train: dict, generate: dict, steps: dict) -> list[tuple[str, str, dict, dict]]:
    """(section, variant, its timings, the LoRA timings it is compared with), for the printed table
    and for `markdown` (which reads them back from a results file)."""
    rows = [
        ("train step", "JARe, task-restricted (task hint)", train["jare_task"], train["lora"]),
        ("train step", "JARe, all-tasks gather (no hint)", train["jare_all"], train["lora"]),
        ("train step", "LoRA (PEFT)", train["lora"], train["lora"]),
        ("generate", "JARe routed per sample, end to end", generate["jare_routed"], generate["lora_merged"]),
        ("generate", "  of which DTKR retrieval", generate["retrieve"], generate["lora_merged"]),
        ("generate", "  of which routed generate()", generate["generate_routed"], generate["lora_merged"]),
        ("generate", "JARe routed, branch cache off", generate["jare_routed_nocache"], generate["lora_merged"]),
        ("generate", "LoRA merged (= base model)", generate["lora_merged"], generate["lora_merged"]),
        ("decode step", "JARe routed, one KV-cached step", steps["jare_step"], steps["lora_step"]),
        ("decode step", "JARe routed, branch cache off", steps["jare_step_nocache"], steps["lora_step"]),
        ("decode step", "LoRA merged", steps["lora_step"], steps["lora_step"]),
    ]
    if "lora_merged_1" in generate:
        one_ref = generate["lora_merged_1"]
        rows += [("generate 1", "JARe retrieve + merge W (bank.merged)", generate["jare_merged_1"], one_ref),
                 ("generate 1", "LoRA merged", one_ref, one_ref)]
    return rows


def markdown(record: dict, source: str) -> str:
    """A results file as a markdown table: each variant's median wall time and its ratio to LoRA."""
    rows = table_rows(record["train_info"]["train_step"], record["generate_info"]["generate"],
                      record["decode_step_info"]["decode_step"])
    lines = ["| what | variant | median s | / LoRA |", "|---|---|---|---|"]
    lines += [f"| {section} | {name.strip()} | {st['median_s']:.3f} | {st['median_s'] / ref['median_s']:.2f} |"
              for section, name, st, ref in rows]
    run = record["run_info"]
    return ("\n".join(lines) + f"\n\n{run['threads']} threads, {run['rounds']['train']} train / "
            f"{run['rounds']['generate']} generate rounds alternating; load average at start "
            f"{run['load_avg_at_start'][0]:.2f}; from {source}\n")


def main(argv: list[str] | None = None) -> dict:
    """Run the experiment; its results record (as written)."""
    args = parse_args(argv)
    settings = load_settings(args.experiment)
    result_name = settings.name
    if args.quick:  # a look at whether it works: fewer rounds, and its own results file
        settings, result_name = settings.model_copy(update=QUICK), f"{settings.name}-quick"
    threads = args.threads
    t_start = time.perf_counter()
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(settings.seed)
    from pipeline.prompts.batching import encode_prompts_left_padded, queries
    from pipeline.runtime.models import load_tokenizer

    tasks = list(TASKS)
    load_at_start = list(os.getloadavg())
    if load_at_start[0] > threads:
        log(f"WARNING: {load_str()} is above {threads} threads: other processes are using the cores, "
            "wall times will be inflated and noisy (compare the cpu column and the paired ratios)")
    log(f"threads={torch.get_num_threads()} cpus={os.cpu_count()} {load_str()}; loading 2 x {settings.model}")
    jare, bank, jare_params, train_task = build_jare(settings, tasks)
    lora, lora_params = build_lora(settings)
    tok = load_tokenizer(settings.model)
    n_jare = sum(p.numel() for p in jare_params)
    n_lora = sum(p.numel() for p in lora_params)
    log(f"JARe: {len(bank.layers)} layers, {len(tasks)} tasks x {settings.slots} slots, rank {settings.rank}, "
        f"{n_jare} trainable (task {train_task}); LoRA: rank {settings.rank}, {n_lora} trainable")

    # ---- (a) training step -------------------------------------------------------------------
    gen = torch.Generator().manual_seed(settings.seed)
    ids = torch.randint(0, jare.config.vocab_size, (settings.batch, settings.seq_len), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    jare.train()
    lora.train()
    opt_j = torch.optim.AdamW(jare_params, lr=1e-4)
    opt_l = torch.optim.AdamW(lora_params, lr=1e-4)
    r_task, r_all = train_routing(settings, train_task, True), train_routing(settings, train_task, False)

    def jare_task():
        with bank.routed(r_task):
            train_step(jare, opt_j, batch)

    def jare_all():
        with bank.routed(r_all):
            train_step(jare, opt_j, batch)

    def lora_step():
        train_step(lora, opt_l, batch)

    variants = {"jare_task": jare_task, "lora": lora_step, "jare_all": jare_all}
    log(f"train: {settings.warmup} warm-up + {settings.rounds} timed rounds of {list(variants)}, "
        f"batch {settings.batch} x {settings.seq_len} tokens")
    train_deadline = t_start + 0.6 * settings.budget_s
    train = alternate(variants, settings.warmup, settings.rounds, settings.min_rounds, train_deadline)
    train_ratio = train["jare_task"]["median_s"] / train["lora"]["median_s"]

    # ---- (b) generation ----------------------------------------------------------------------
    log(f"generate: encoder + KeyStore ({settings.keys} keys), merging LoRA ({load_str()})")
    jare.eval()
    bank.train_only(None)
    lora_merged = lora.merge_and_unload().eval()
    encoder, store, prompts = build_store(settings, tasks)
    from pipeline.config import DtkrSpec
    from pipeline.dtkr.router import Router

    # what slm generate routes with
    router = Router(store, encoder, DtkrSpec(groups=settings.groups, top_k=settings.top_k))
    fmt = "chat_template"
    enc = encode_prompts_left_padded(tok, fmt, prompts, 512)
    texts = queries(prompts)
    gen_kw = {"max_new_tokens": settings.new_tokens, "min_new_tokens": settings.new_tokens, "do_sample": False,
              "pad_token_id": tok.pad_token_id}
    pieces: dict[str, list[float]] = {"retrieve": [], "generate_routed": []}
    routed_slots: list = []

    @torch.no_grad()
    def jare_gen():
        t0 = time.perf_counter()
        routing = router.route_embeddings(encoder.encode(texts))  # per sample, over all tasks' slots
        t1 = time.perf_counter()
        with bank.routed(routing):
            out = jare.generate(**enc, **gen_kw)
        t2 = time.perf_counter()
        pieces["retrieve"].append(t1 - t0)
        pieces["generate_routed"].append(t2 - t1)
        routed_slots[:] = routing.slot_ids.tolist()
        assert out.shape[1] == enc["input_ids"].shape[1] + settings.new_tokens

    @torch.no_grad()
    def jare_gen_nocache():
        routing = router.route_embeddings(encoder.encode(texts))
        for layer in bank.layers.values():
            layer.jare_cache = False
        try:
            with bank.routed(routing):
                jare.generate(**enc, **gen_kw)
        finally:
            for layer in bank.layers.values():
                layer.jare_cache = True

    @torch.no_grad()
    def lora_gen():
        out = lora_merged.generate(**enc, **gen_kw)
        assert out.shape[1] == enc["input_ids"].shape[1] + settings.new_tokens

    one = {k: v[:1] for k, v in enc.items()}
    one_text = texts[:1]

    @torch.no_grad()
    def jare_single_merged():
        routing = router.route_embeddings(encoder.encode(one_text))
        with bank.merged(routing.slot_ids[0], routing.weights[0]):
            jare.generate(**one, **gen_kw)

    @torch.no_grad()
    def lora_single():
        lora_merged.generate(**one, **gen_kw)

    gvariants = {"jare_routed": jare_gen, "lora_merged": lora_gen, "jare_routed_nocache": jare_gen_nocache}
    if settings.single_prompt:
        gvariants |= {"jare_merged_1": jare_single_merged, "lora_merged_1": lora_single}
    log(f"generate: {settings.gen_warmup} warm-up + {settings.gen_rounds} timed rounds of {list(gvariants)}, "
        f"{settings.prompts} prompts (left padded to {enc['input_ids'].shape[1]} tokens), "
        f"{settings.new_tokens} new tokens")
    generate = alternate(gvariants, settings.gen_warmup, settings.gen_rounds, settings.min_rounds,
                         t_start + settings.budget_s)
    skip = len(pieces["retrieve"]) - len(generate["jare_routed"]["samples_s"])  # the warm-up calls
    generate |= {k: {"median_s": median(v[skip:]), "samples_s": v[skip:]} for k, v in pieces.items()}
    lora_g = generate["lora_merged"]["median_s"]
    gen_ratio = generate["jare_routed"]["median_s"] / lora_g
    truth = [j % len(tasks) for j in range(settings.prompts)]  # the round-robin above

    # ---- (c) one decode step: the side branch's own cost, without generate() or retrieval ----------
    step_routing = store.route(encoder.encode(texts), settings.top_k)
    svariants = {"jare_step": lambda: decode_step_s(jare, bank, step_routing, enc, settings.new_tokens),
                 "lora_step": lambda: decode_step_s(lora_merged, None, None, enc, settings.new_tokens),
                 "jare_step_nocache": lambda: decode_step_s(jare, bank, step_routing, enc, settings.new_tokens, False)}
    log(f"decode step: median of {settings.new_tokens} KV-cached steps per call, {list(svariants)}")
    steps = alternate_values(svariants, settings.gen_rounds)
    step_ratio = steps["jare_step"]["median_s"] / steps["lora_step"]["median_s"]
    top1_ok = sum(s[0] // settings.slots == t for s, t in zip(routed_slots, truth, strict=True)) / len(truth)

    # ---- report ------------------------------------------------------------------------------
    rows = table_rows(train, generate, steps)
    print()
    print(f"{'':<11} {'variant':<38} {'wall s':>8} {'/ LoRA':>7} {'cpu s':>8} {'/ LoRA':>7}")
    for section, name, st, ref in rows:
        cpu = (f"{st['cpu_median_s']:>8.3f} {st['cpu_median_s'] / ref['cpu_median_s']:>7.3f}"
               if "cpu_median_s" in st else "")
        print(f"{section:<11} {name:<38} {st['median_s']:>8.3f} {st['median_s'] / ref['median_s']:>7.3f} {cpu}")
    n_train, n_gen = len(train["lora"]["samples_s"]), len(generate["lora_merged"]["samples_s"])
    print(f"(medians of {n_train} train / {n_gen} generate rounds, alternating; train b={settings.batch} x "
          f"{settings.seq_len} tokens; generate {settings.prompts} prompts x {settings.new_tokens} new tokens, "
          f"retrieval top-1 task accuracy {top1_ok:.2f}; {torch.get_num_threads()} threads, {load_str()}; "
          f"total {time.perf_counter() - t_start:.0f} s)")
    train_paired = paired(train["jare_task"], train["lora"])
    gen_paired = paired(generate["jare_routed"], generate["lora_merged"])
    print(f"(median of per-round JARe/LoRA ratios: train {train_paired:.3f}, generate {gen_paired:.3f})")

    run = {**runner.bench_run_info(MEASURED, settings.model_dump(mode="json")),
           "name": result_name, "settings": settings.model_dump(mode="json"), "threads": threads,
           "jare_trainable_params": n_jare, "lora_trainable_params": n_lora,
           "prompt_tokens_padded": int(enc["input_ids"].shape[1]), "tasks": tasks,
           "retrieval_top1_task_accuracy": top1_ok, "rounds": {"train": n_train, "generate": n_gen},
           "load_avg_at_start": load_at_start, "total_s": time.perf_counter() - t_start}
    sections = {
        "train_info": {"train_step": train, "train_step_ratio": train_ratio,
                       "train_step_ratio_all_tasks": train["jare_all"]["median_s"] / train["lora"]["median_s"],
                       "train_step_cpu_ratio": train["jare_task"]["cpu_median_s"] / train["lora"]["cpu_median_s"],
                       "train_step_paired_ratio": train_paired},
        "generate_info": {"generate": generate, "generate_ratio": gen_ratio,
                          "generate_ratio_without_retrieval": generate["generate_routed"]["median_s"] / lora_g,
                          "generate_ratio_cache_off": generate["jare_routed_nocache"]["median_s"] / lora_g,
                          "generate_cpu_ratio": generate["jare_routed"]["cpu_median_s"]
                          / generate["lora_merged"]["cpu_median_s"],
                          "generate_paired_ratio": gen_paired},
        "decode_step_info": {"decode_step": steps, "decode_step_ratio": step_ratio,
                             "decode_step_ratio_cache_off": steps["jare_step_nocache"]["median_s"]
                             / steps["lora_step"]["median_s"]},
    }
    if settings.single_prompt:
        sections["generate_info"]["single_prompt_merged_ratio"] = (
            generate["jare_merged_1"]["median_s"] / generate["lora_merged_1"]["median_s"])
    meta = {**runner.meta_info(), "mkldnn": torch.backends.mkldnn.is_available()}
    path = runner.write_result(BENCH, result_name, sections, run, meta, results=args.results_dir)
    log(f"wrote {path}")
    print(f"train_step_ratio={train_ratio:.3f} generate_ratio={gen_ratio:.3f}")
    return {"run_info": run, "meta_info": meta, **sections}


if __name__ == "__main__":
    main()
