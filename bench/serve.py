"""`slm serve` under load: retrieval per request vs one merged adapter, or continuous vs static batching.

    slm run                                  # once: the embedded default (SmolLM2-135M, 3 tasks)
    python bench/serve.py                    # 8 clients x 64 requests a round, 3 rounds, ~5 min on 2 cores
    python bench/serve.py --quick            # 4 clients x 16 requests, 1 round: does it work
    python bench/serve.py -c my.yaml --set output_dir=runs/x --clients 16
    python bench/serve.py --batching         # continuous vs static batching at 1, 4, 16 clients (below)
    python bench/serve.py --batching --quick # 1 and 4 clients, 8 requests each: does it work

`--batching` (bench/results/serve-batching.json): two `slm serve` processes of the same run, both
with retrieval, one with `serve.batching=continuous` (a request joins the running batch at the
next decode step) and one with `serve.batching=static` (the server before it: a batch is gathered
only when the previous one has finished). For each client count (`--client-counts`, default 1, 4,
16) both servers get the same `--requests` chat requests in a closed loop (each client sends its
next request when its answer arrives), in alternating order; requests cycle through
`--mixed-tokens` lengths (default 8 and 32, `ignore_eos`), since a batch of unequal answers is
where static batching makes the short ones' clients wait. Reported per client count and server:
requests/s, p50 and p95 latency; the ratios continuous/static. One run, no repetition: the file
records the load average, which says how quiet the machine was.

Two servers of the same finished run start side by side on loopback (each `slm serve` in its own
process, on a free port): `retrieval` (DTKR per request, per-sample slots on the side branch,
mixed tasks batched) and `merged` (retrieval off, `serve.merged_task` = the first task, its slots
merged into W: one merged adapter, what serving a merged LoRA costs). Each round sends the same
requests to both, one server after the other, in alternating order (A B, B A, ...) so both see
the same background load. A round: `--clients` threads, each with its own official `openai`
client, share `--requests` chat requests round-robin over every task's test records; greedy,
`ignore_eos` so both servers decode exactly `--max-tokens` tokens per request (equal work).

Reported per server: requests/s (requests / wall time of the round), p50 / p95 latency, medians
over rounds; and retrieval/merged ratios: `rps_ratio` (< 1: retrieval serves fewer requests per
second) and `p50_ratio` / `p95_ratio`. The last line printed is `rps_ratio=<x> p50_ratio=<y>`.
Results: bench/results/serve.json (command, commit, machine, every round).

Timings on a shared machine are noise: the script records the load average at start and end;
rerun on a quiet machine for numbers worth quoting. On an oversubscribed CPU, pass `--threads 1`:
with 2 OpenMP threads per server, every small op of the side branch waits for a descheduled
thread, and routed decoding was measured 9x slower than with 1 (the merged server, with fewer
ops per step, suffers much less), so the ratio then measures the machine, not the server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--config", default=None, help="experiment YAML (default: the embedded default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for both servers (repeatable)")
    p.add_argument("--clients", type=int, default=8, help="concurrent openai clients")
    p.add_argument("--requests", type=int, default=64, help="requests per round and server")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens decoded per request (ignore_eos)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=None, help="untimed requests per server first (default: clients)")
    p.add_argument("--batch-size", type=int, default=8, help="serve.max_batch_size of both servers")
    p.add_argument("--wait-ms", type=float, default=10.0, help="serve.max_wait_ms of both servers")
    p.add_argument("--threads", type=int, default=None,
                   help="serve.threads of both servers (torch threads of the decoding worker; 1 on a shared CPU)")
    p.add_argument("--quick", action="store_true", help="4 clients x 16 requests, 8 tokens, 1 round")
    p.add_argument("--start-timeout-s", type=float, default=600.0)
    p.add_argument("--json", type=Path, default=None,
                   help="results file (default: bench/results/serve.json, with --batching serve-batching.json)")
    p.add_argument("--batching", action="store_true", help="compare continuous and static batching (see above)")
    p.add_argument("--client-counts", default="1,4,16", help="--batching: concurrent clients, comma-separated")
    p.add_argument("--mixed-tokens", default="8,32",
                   help="--batching: tokens per request, cycled over the requests (ignore_eos)")
    args = p.parse_args(argv)
    name = "serve-batching.json" if args.batching else "serve.json"
    args.json = args.json or ROOT / "bench" / "results" / name
    if args.quick:
        args.clients, args.requests, args.max_tokens, args.rounds = 4, 16, 8, 1
        if args.batching:
            args.client_counts, args.requests, args.mixed_tokens = "1,4", 8, "4,12"
    if args.warmup is None:
        args.warmup = args.clients
    return args


# ---- the servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(args, name: str, extra: list[str], logs: Path):
    """One `slm serve` process on a free loopback port; yields its base URL once /health answers."""
    import httpx

    port = free_port()
    sets = [f"serve.max_batch_size={args.batch_size}", f"serve.max_wait_ms={args.wait_ms}",
            f"serve.max_tokens_limit={max(512, args.max_tokens)}", "serve.reload_poll_s=0",
            *([f"serve.threads={args.threads}"] if args.threads else []), *args.overrides, *extra]
    cmd = [sys.executable, "-m", "pipeline.cli", "serve", "--port", str(port), "--host", "127.0.0.1",
           *(["-c", args.config] if args.config else []), *sets]
    out = (logs / f"{name}.log").open("w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + args.start_timeout_s
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{name} server exited with {proc.returncode}:\n"
                                 + (logs / f"{name}.log").read_text()[-3000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > end:
                raise SystemExit(f"{name} server did not answer /health within {args.start_timeout_s:.0f} s")
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


def test_records(args) -> tuple[list[dict], list[str]]:
    """Every task's test records, interleaved task by task, and the task names (checks the run first)."""
    from pipeline.data.prepared import load_prepared
    from pipeline.experiment import load_config
    from pipeline.state.layout import RunLayout
    from pipeline.state.validity import done_tasks

    cfg = load_config(args.config, args.overrides)
    layout = RunLayout.of(cfg)
    n = done_tasks(cfg, layout)
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


def load_round(url: str, args, records: list[dict], n_requests: int, clients: int | None = None,
               tokens: list[int] | None = None) -> dict:
    """`n_requests` requests over `clients` (default `args.clients`) concurrent clients in a closed
    loop, request i decoding `tokens[i % len(tokens)]` tokens (default `args.max_tokens`); wall
    time and each latency."""
    import openai

    n_clients = clients or args.clients
    tokens = tokens or [args.max_tokens]
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


# ---- main --------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.batching:
        return batching_main(args)
    t_start = time.perf_counter()
    load_at_start = list(os.getloadavg())
    records, tasks = test_records(args)
    log(f"{len(records)} test records of {tasks}; {args.clients} clients x {args.requests} requests x "
        f"{args.max_tokens} tokens, {args.rounds} round(s); load avg {load_at_start}")
    variants = {"retrieval": [], "merged": [f"serve.merged_task={tasks[0]}"]}
    results: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="slm-bench-serve-") as tmp, contextlib.ExitStack() as stack:
        urls = {v: stack.enter_context(server(args, v, extra, Path(tmp))) for v, extra in variants.items()}
        log(f"servers up: {urls}")
        for url in urls.values():
            load_round(url, args, records, args.warmup)  # first-call costs: threads, caches, allocator
        for i in range(args.rounds):
            for v in list(variants)[:: 1 if i % 2 == 0 else -1]:
                r = load_round(urls[v], args, records, args.requests)
                results[v].append(r)
                log(f"  round {i + 1}/{args.rounds} {v:<9}: {r['rps']:.2f} req/s, p50 {r['p50_s']:.3f} s, "
                    f"p95 {r['p95_s']:.3f} s")
    summary = {v: summarize(rs) for v, rs in results.items()}
    ret, mer = summary["retrieval"], summary["merged"]
    ratios = {"rps_ratio": ret["rps"] / mer["rps"], "p50_ratio": ret["p50_s"] / mer["p50_s"],
              "p95_ratio": ret["p95_s"] / mer["p95_s"]}
    print()
    print(f"{'server':<10} {'req/s':>8} {'tok/s':>8} {'p50 s':>8} {'p95 s':>8}")
    for v, st in summary.items():
        print(f"{v:<10} {st['rps']:>8.2f} {st['tokens_per_s']:>8.1f} {st['p50_s']:>8.3f} {st['p95_s']:>8.3f}")
    result = {
        "run_info": {"script": "bench/serve.py", "command": " ".join([sys.executable, *sys.argv]),
                     "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "tasks": tasks, "merged_task": tasks[0], "records": len(records),
                     "load_avg_at_start": load_at_start, "total_s": time.perf_counter() - t_start},
        "serve_info": {"summary": summary, **ratios, "rounds": results},
        "meta_info": meta_info(),
    }
    from pipeline.state.artifacts import atomic_write_json

    atomic_write_json(args.json, result)
    log(f"wrote {args.json}")
    print(f"rps_ratio={ratios['rps_ratio']:.3f} p50_ratio={ratios['p50_ratio']:.3f}")
    return result


# ---- --batching: continuous vs static -----------------------------------------------------------


def batching_main(args) -> dict:
    """Continuous vs static batching at each client count: one run, results with provenance."""
    from bench.provenance import run_provenance
    from pipeline.state.artifacts import atomic_write_json

    t_start = time.perf_counter()
    load_at_start = list(os.getloadavg())
    records, tasks = test_records(args)
    counts = [int(c) for c in args.client_counts.split(",")]
    tokens = [int(t) for t in args.mixed_tokens.split(",")]
    log(f"{len(records)} test records of {tasks}; clients {counts}, {args.requests} requests each, tokens "
        f"{tokens} (cycled); batches of up to {args.batch_size}; load avg {load_at_start}")
    variants = {"continuous": ["serve.batching=continuous"], "static": ["serve.batching=static"]}
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="slm-bench-serve-") as tmp, contextlib.ExitStack() as stack:
        urls = {v: stack.enter_context(server(args, v, extra, Path(tmp))) for v, extra in variants.items()}
        for url in urls.values():
            load_round(url, args, records, args.warmup, tokens=tokens)  # first-call costs
        for i, clients in enumerate(counts):
            results[str(clients)] = {}
            for v in list(variants)[:: 1 if i % 2 == 0 else -1]:  # alternate who goes first
                r = load_round(urls[v], args, records, args.requests, clients=clients, tokens=tokens)
                results[str(clients)][v] = r
                log(f"  {clients:>2} client(s) {v:<10}: {r['rps']:.2f} req/s, p50 {r['p50_s']:.3f} s, "
                    f"p95 {r['p95_s']:.3f} s")
    table = batching_table(results)
    print("\n" + "\n".join(table))
    result = {"run_info": {"script": "bench/serve.py --batching", **run_provenance(),
                           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                           "tasks": tasks, "records": len(records), "load_avg_at_start": load_at_start,
                           "load_avg_at_end": list(os.getloadavg()), "total_s": time.perf_counter() - t_start},
              "serve_info": {"by_clients": results, "table": table,
                             "ratios": {c: {"rps": r["continuous"]["rps"] / r["static"]["rps"],
                                            "p50": r["continuous"]["p50_s"] / r["static"]["p50_s"],
                                            "p95": r["continuous"]["p95_s"] / r["static"]["p95_s"]}
                                        for c, r in results.items()}}}
    atomic_write_json(args.json, result)
    log(f"wrote {args.json}")
    return result


def batching_table(results: dict[str, dict[str, dict]]) -> list[str]:
    """A markdown table: per client count, both servers' requests/s and p50/p95 latency."""
    lines = ["| clients | batching | req/s | p50 s | p95 s |", "|---|---|---|---|---|"]
    for clients, by_variant in results.items():
        for v, r in by_variant.items():
            lines.append(f"| {clients} | {v} | {r['rps']:.2f} | {r['p50_s']:.3f} | {r['p95_s']:.3f} |")
    return lines


def meta_info() -> dict:
    import torch

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    return {"commit": commit, "dirty_tree": dirty, "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_avg_at_end": list(os.getloadavg()), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


if __name__ == "__main__":
    main()
