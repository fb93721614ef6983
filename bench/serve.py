"""`slm serve` under load: retrieval per request vs one merged adapter, or continuous vs static batching.

    slm run                                  # once: the embedded default (SmolLM2-135M, 3 tasks)
    python bench/serve.py                    # default: 8 clients x 64 requests a round, 3 rounds, ~5 min on 2 cores
    python bench/serve.py --quick            # 4 clients x 16 requests, 1 round: does it work (default-quick.json)
    python bench/serve.py default output_dir=runs/x   # the finished run under runs/x (any experiment override)
    python bench/serve.py batching --threads 1        # continuous vs static batching at 1, 4, 16 clients (below)
    python bench/serve.py batching --quick            # 1 and 4 clients, 8 requests each: does it work

Settings: bench/experiments/serve/<name>.yaml (`Settings` below): which run both servers serve
(`config` and `overrides`; KEY=VALUE on the command line add to them, e.g. output_dir=...), what
the two servers differ in (`compare`), and the load.

`compare: retrieval_vs_merged` (default.yaml). Two servers of the same finished run start side by
side on loopback (each `slm serve` in its own process, on a free port): `retrieval` (DTKR per
request, per-sample slots on the side branch, mixed tasks batched) and `merged` (retrieval off,
`serve.merged_task` = the first task, its slots merged into W: one merged adapter, what serving a
merged LoRA costs). Each round sends the same requests to both, one server after the other, in
alternating order (A B, B A, ...) so both see the same background load. A round: `clients`
threads, each with its own official `openai` client, share `requests` chat requests round-robin
over every task's test records; greedy, `ignore_eos` so both servers decode exactly `max_tokens`
tokens per request (equal work). Reported per server: requests/s (requests / wall time of the
round), p50 / p95 latency, medians over rounds; and retrieval/merged ratios: `rps_ratio` (< 1:
retrieval serves fewer requests per second) and `p50_ratio` / `p95_ratio`. The last line printed
is `rps_ratio=<x> p50_ratio=<y>`.

`compare: continuous_vs_static` (batching.yaml): two `slm serve` processes of the same run, both
with retrieval, one with `serve.batching=continuous` (a request joins the running batch at the
next decode step) and one with `serve.batching=static` (the server before it: a batch is gathered
only when the previous one has finished). For each of `client_counts` both servers get the same
`requests` chat requests in a closed loop (each client sends its next request when its answer
arrives), in alternating order; requests cycle through `mixed_tokens` lengths (`ignore_eos`),
since a batch of unequal answers is where static batching makes the short ones' clients wait.
Reported per client count and server: requests/s, p50 and p95 latency; the ratios
continuous/static. One run, no repetition: run_info records the load average, which says how
quiet the machine was.

Writes bench/results/serve/<name>.json (`<name>-quick.json` with --quick) through bench.runner:
section `serve_info` (retrieval_vs_merged: summary, ratios and every round; continuous_vs_static:
per client count and server, the ratios and the markdown table); run_info adds the settings,
the overrides, threads, the tasks and the load average at start.

Timings on a shared machine are noise: rerun on a quiet machine for numbers worth quoting. On an
oversubscribed CPU, pass `--threads 1`: with 2 OpenMP threads per server, every small op of the
side branch waits for a descheduled thread, and routed decoding was measured 9x slower than with
1 (the merged server, with fewer ops per step, suffers much less), so the ratio then measures the
machine, not the server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/x.py` puts bench/ on sys.path

from bench import runner  # noqa: E402
from pipeline.spec import Spec  # noqa: E402

runner.preamble()
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BENCH = "serve"
# The code this bench measures (its results file records the fingerprint).
MEASURED = ("bench.serve", "pipeline.serve.app", "pipeline.serve.batcher", "pipeline.serve.decode",
            "pipeline.serve.session", "pipeline.serve.sampling", "pipeline.jare.layer", "pipeline.dtkr.router")
# --quick: the least load that still runs every code path (two client counts for batching)
QUICK = {"retrieval_vs_merged": {"clients": 4, "requests": 16, "max_tokens": 8, "rounds": 1},
         "continuous_vs_static": {"clients": 4, "requests": 8, "client_counts": [1, 4], "mixed_tokens": [4, 12]}}


class Settings(Spec):
    """bench/experiments/serve/<name>.yaml."""

    name: str
    """The file's stem: the results are bench/results/serve/<name>.json."""
    config: str | None = None
    """The experiment whose finished, indexed run both servers serve (null: the embedded default)."""
    overrides: list[str] = Field(default_factory=list)
    """Overrides of that experiment for both servers, as for `slm serve`."""
    compare: Literal["retrieval_vs_merged", "continuous_vs_static"] = "retrieval_vs_merged"
    """What the two servers differ in."""
    clients: int = Field(8, ge=1)
    """Concurrent openai clients (retrieval_vs_merged; the warm-up's default size)."""
    requests: int = Field(64, ge=1)
    """Requests per round and server (continuous_vs_static: per client count and server)."""
    max_tokens: int = Field(16, ge=1)
    """Tokens decoded per request, ignore_eos (retrieval_vs_merged)."""
    rounds: int = Field(3, ge=1)
    """Rounds, medians over them (retrieval_vs_merged)."""
    warmup: int | None = Field(None, ge=0)
    """Untimed requests per server first (null: `clients`)."""
    batch_size: int = Field(8, ge=1)
    """serve.max_batch_size of both servers."""
    wait_ms: float = Field(10.0, ge=0)
    """serve.max_wait_ms of both servers."""
    start_timeout_s: float = Field(600.0, gt=0)
    """How long a server may take to answer /health."""
    client_counts: list[int] = Field(default_factory=lambda: [1, 4, 16], min_length=1)
    """Concurrent clients, one load round each (continuous_vs_static)."""
    mixed_tokens: list[int] = Field(default_factory=lambda: [8, 32], min_length=1)
    """Tokens per request, cycled over the requests, ignore_eos (continuous_vs_static)."""


load_settings = runner.settings_loader(BENCH, Settings)


log = runner.log


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", nargs="?", default="default",
                   help="bench/experiments/serve/<name>.yaml (or a path to such a file)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="more overrides of the served experiment, e.g. output_dir=runs/x")
    p.add_argument("--quick", action="store_true", help="the least load that runs every path; <name>-quick.json")
    p.add_argument("--threads", type=int, default=None,
                   help="serve.threads of both servers (torch threads of the decoding worker; 1 on a shared CPU)")
    p.add_argument("--results-dir", type=Path, default=runner.RESULTS)
    return p.parse_intermixed_args(argv)  # KEY=VALUE overrides may follow the flags


# ---- the servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(settings: Settings, threads: int | None, name: str, extra: list[str], logs: Path) -> Iterator[str]:
    """One `slm serve` process on a free loopback port; yields its base URL once /health answers."""
    import httpx

    port = free_port()
    longest = max(settings.max_tokens, *settings.mixed_tokens)
    sets = [f"serve.max_batch_size={settings.batch_size}", f"serve.max_wait_ms={settings.wait_ms}",
            f"serve.max_tokens_limit={max(512, longest)}", "serve.reload_poll_s=0",
            *([f"serve.threads={threads}"] if threads else []), *settings.overrides, *extra]
    cmd = [sys.executable, "-m", "pipeline.cli", "serve", "--port", str(port), "--host", "127.0.0.1",
           *(["-c", settings.config] if settings.config else []), *sets]
    out = (logs / f"{name}.log").open("w")
    proc = subprocess.Popen(cmd, cwd=runner.ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + settings.start_timeout_s
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{name} server exited with {proc.returncode}:\n"
                                 + (logs / f"{name}.log").read_text()[-3000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > end:
                raise SystemExit(f"{name} server did not answer /health within {settings.start_timeout_s:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        out.close()


# ---- the load ----------------------------------------------------------------------------------


def test_records(settings: Settings) -> tuple[list[dict], list[str]]:
    """Every task's test records, interleaved task by task, and the task names (checks the run first)."""
    from pipeline.data.prepared import load_prepared
    from pipeline.experiment import load_experiment
    from pipeline.state.validity import done_tasks

    exp = load_experiment(settings.config, settings.overrides)
    cfg, layout = exp.cfg, exp.layout
    n = done_tasks(exp)
    if n == 0 or not (layout.index / "DONE").is_file():
        raise SystemExit(f"no finished, indexed run under {layout.root}: run `slm run` first")
    prepared = load_prepared(cfg, layout)
    per_task = []
    for t in cfg.tasks[:n]:  # the server refuses a longer prompt (400) instead of cutting it
        records = [dict(r) for r in prepared[t.name]["test"]]
        per_task.append([r for r, fits in zip(records, prompt_fits(cfg, records), strict=True) if fits])
    if not all(per_task):
        raise SystemExit(f"no test record of some task fits model.max_prompt_len: {[len(r) for r in per_task]}")
    mixed = [recs[i] for i in range(max(len(r) for r in per_task)) for recs in per_task if i < len(recs)]
    return mixed, [t.name for t in cfg.tasks[:n]]


def prompt_fits(cfg, records: list[dict]) -> list[bool]:
    """Whether each record's prompt fits the server's prompt cap, counted as prepare counts it."""
    from pipeline.data.build import token_lengths
    from pipeline.prompts.truncation import TokenCaps
    from pipeline.runtime.models import load_tokenizer

    cap = TokenCaps.of(cfg.model).prompt_cap()
    lengths = token_lengths(load_tokenizer(cfg.model.name_or_path), cfg.model.prompt_format, records)
    return [prompt <= cap for prompt, _ in lengths]


def one_request(client, model: str, record: dict, max_tokens: int) -> float:
    """Seconds until the whole answer of one greedy chat request (exactly `max_tokens` tokens) arrived."""
    t0 = time.perf_counter()
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": record["instruction"]}], max_tokens=max_tokens,
        extra_body={"input": record["input"], "ignore_eos": True})
    if reply.usage.completion_tokens != max_tokens:
        raise RuntimeError(f"asked for {max_tokens} tokens, got {reply.usage.completion_tokens}")
    return time.perf_counter() - t0


def load_round(url: str, settings: Settings, records: list[dict], n_requests: int, clients: int | None = None,
               tokens: list[int] | None = None) -> dict:
    """`n_requests` requests over `clients` (default: the settings') concurrent clients in a closed
    loop, request i decoding `tokens[i % len(tokens)]` tokens (default: `max_tokens`); wall time
    and each latency."""
    import openai

    n_clients = clients or settings.clients
    tokens = tokens or [settings.max_tokens]
    pool_clients = [openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
                    for _ in range(n_clients)]
    model = pool_clients[0].models.list().data[0].id
    work = [(records[i % len(records)], tokens[i % len(tokens)]) for i in range(n_requests)]

    def client_loop(c: int) -> list[float]:
        return [one_request(pool_clients[c], model, *work[i]) for i in range(c, n_requests, n_clients)]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n_clients) as pool:
        latencies = [x for part in pool.map(client_loop, range(n_clients)) for x in part]
    wall = time.perf_counter() - t0
    total_tokens = sum(t for _, t in work)
    return {"wall_s": wall, "rps": n_requests / wall, "tokens_per_s": total_tokens / wall,
            "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95), "latencies_s": latencies}


def percentile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


def summarize(rounds: list[dict]) -> dict:
    keys = ("rps", "tokens_per_s", "p50_s", "p95_s")
    return {k: statistics.median(r[k] for r in rounds) for k in keys}


# ---- retrieval vs merged -------------------------------------------------------------------------


def retrieval_vs_merged(settings: Settings, threads: int | None, records: list[dict],
                        tasks: list[str]) -> dict[str, Any]:
    """Both servers, `rounds` rounds of the same load in alternating order -> section serve_info."""
    log(f"{len(records)} test records of {tasks}; {settings.clients} clients x {settings.requests} requests x "
        f"{settings.max_tokens} tokens, {settings.rounds} round(s)")
    variants = {"retrieval": [], "merged": [f"serve.merged_task={tasks[0]}"]}
    results: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="slm-bench-serve-") as tmp, contextlib.ExitStack() as stack:
        urls = {v: stack.enter_context(server(settings, threads, v, extra, Path(tmp))) for v, extra in variants.items()}
        log(f"servers up: {urls}")
        for url in urls.values():  # first-call costs: threads, caches, allocator
            load_round(url, settings, records, warmup_requests(settings))
        for i in range(settings.rounds):
            for v in list(variants)[:: 1 if i % 2 == 0 else -1]:
                r = load_round(urls[v], settings, records, settings.requests)
                results[v].append(r)
                log(f"  round {i + 1}/{settings.rounds} {v:<9}: {r['rps']:.2f} req/s, p50 {r['p50_s']:.3f} s, "
                    f"p95 {r['p95_s']:.3f} s")
    summary = {v: summarize(rs) for v, rs in results.items()}
    ret, mer = summary["retrieval"], summary["merged"]
    ratios = {"rps_ratio": ret["rps"] / mer["rps"], "p50_ratio": ret["p50_s"] / mer["p50_s"],
              "p95_ratio": ret["p95_s"] / mer["p95_s"]}
    print()
    print(f"{'server':<10} {'req/s':>8} {'tok/s':>8} {'p50 s':>8} {'p95 s':>8}")
    for v, st in summary.items():
        print(f"{v:<10} {st['rps']:>8.2f} {st['tokens_per_s']:>8.1f} {st['p50_s']:>8.3f} {st['p95_s']:>8.3f}")
    return {"summary": summary, **ratios, "rounds": results}


def warmup_requests(settings: Settings) -> int:
    return settings.clients if settings.warmup is None else settings.warmup


# ---- continuous vs static batching --------------------------------------------------------------


def continuous_vs_static(settings: Settings, threads: int | None, records: list[dict],
                         tasks: list[str]) -> dict[str, Any]:
    """Both servers at each client count, in alternating order -> section serve_info."""
    tokens = settings.mixed_tokens
    log(f"{len(records)} test records of {tasks}; clients {settings.client_counts}, {settings.requests} requests "
        f"each, tokens {tokens} (cycled); batches of up to {settings.batch_size}")
    variants = {"continuous": ["serve.batching=continuous"], "static": ["serve.batching=static"]}
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="slm-bench-serve-") as tmp, contextlib.ExitStack() as stack:
        urls = {v: stack.enter_context(server(settings, threads, v, extra, Path(tmp))) for v, extra in variants.items()}
        for url in urls.values():  # first-call costs
            load_round(url, settings, records, warmup_requests(settings), tokens=tokens)
        for i, clients in enumerate(settings.client_counts):
            results[str(clients)] = {}
            for v in list(variants)[:: 1 if i % 2 == 0 else -1]:  # alternate who goes first
                r = load_round(urls[v], settings, records, settings.requests, clients=clients, tokens=tokens)
                results[str(clients)][v] = r
                log(f"  {clients:>2} client(s) {v:<10}: {r['rps']:.2f} req/s, p50 {r['p50_s']:.3f} s, "
                    f"p95 {r['p95_s']:.3f} s")
    table = batching_table(results)
    print("\n" + "\n".join(table))
    return {"by_clients": results, "table": table,
            "ratios": {c: {"rps": r["continuous"]["rps"] / r["static"]["rps"],
                           "p50": r["continuous"]["p50_s"] / r["static"]["p50_s"],
                           "p95": r["continuous"]["p95_s"] / r["static"]["p95_s"]} for c, r in results.items()}}


def batching_table(results: dict[str, dict[str, dict]]) -> list[str]:
    """A markdown table: per client count, both servers' requests/s and p50/p95 latency."""
    lines = ["| clients | batching | req/s | p50 s | p95 s |", "|---|---|---|---|---|"]
    for clients, by_variant in results.items():
        for v, r in by_variant.items():
            lines.append(f"| {clients} | {v} | {r['rps']:.2f} | {r['p50_s']:.3f} | {r['p95_s']:.3f} |")
    return lines


def markdown(record: dict, source: str) -> str:
    """A results file as a markdown table: each server's requests/s and latency percentiles."""
    info, run = record["serve_info"], record["run_info"]
    if "by_clients" in info:
        lines = batching_table(info["by_clients"])
    else:
        lines = ["| server | req/s | tokens/s | p50 s | p95 s |", "|---|---|---|---|---|"]
        lines += [f"| {v} | {st['rps']:.2f} | {st['tokens_per_s']:.1f} | {st['p50_s']:.3f} | {st['p95_s']:.3f} |"
                  for v, st in info["summary"].items()]
    threads = run["threads"] if run["threads"] is not None else "torch's default"
    return ("\n".join(lines) + f"\n\n{run['records']} test records of {', '.join(run['tasks'])}; {threads} "
            f"thread(s) a server; load average at start {run['load_avg_at_start'][0]:.2f}; from {source}\n")


# ---- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    """Run the experiment; its results record (as written)."""
    args = parse_args(argv)
    settings = load_settings(args.experiment)
    name = settings.name
    if args.quick:
        settings, name = settings.model_copy(update=QUICK[settings.compare]), f"{settings.name}-quick"
    settings = settings.model_copy(update={"overrides": [*settings.overrides, *args.overrides]})
    t_start = time.perf_counter()
    load_at_start = list(os.getloadavg())
    log(f"load avg {load_at_start}")
    records, tasks = test_records(settings)
    measure = retrieval_vs_merged if settings.compare == "retrieval_vs_merged" else continuous_vs_static
    serve_info = measure(settings, args.threads, records, tasks)
    run = {**runner.bench_run_info(MEASURED, settings.model_dump(mode="json")),
           "name": name, "settings": settings.model_dump(mode="json"), "threads": args.threads,
           "tasks": tasks, "records": len(records), "load_avg_at_start": load_at_start,
           "total_s": time.perf_counter() - t_start}
    if settings.compare == "retrieval_vs_merged":
        run["merged_task"] = tasks[0]
    meta = runner.meta_info()  # its machine's load average is the one at the end
    path = runner.write_result(BENCH, name, {"serve_info": serve_info}, run, meta, results=args.results_dir)
    log(f"wrote {path}")
    if settings.compare == "retrieval_vs_merged":
        print(f"rps_ratio={serve_info['rps_ratio']:.3f} p50_ratio={serve_info['p50_ratio']:.3f}")
    return {"run_info": run, "meta_info": meta, "serve_info": serve_info}


if __name__ == "__main__":
    main()
