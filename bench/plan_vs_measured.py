"""Plan vs measured: peak memory of one real training step against pipeline.planning.memory's estimate.

    python bench/plan_vs_measured.py                      # random-float32: ~34M LLaMA, checkpointing off and on
    python bench/plan_vs_measured.py random-bfloat16      # the GPU path's dtype (fp32 norm copies, fp32 loss)
    python bench/plan_vs_measured.py smollm2-float32      # SmolLM2-135M's shape (GQA), random weights
    python bench/plan_vs_measured.py random-full_ft       # seq_ft's full fine-tuning

Settings: bench/experiments/plan_vs_measured/<name>.yaml (`Settings` below). method jare: a
frozen LLaMA with JARe slots on o_proj (pipeline.jare: T tasks x P slots resident, task T-1's P
slots trainable, AdamW) runs two steps on CPU; the second runs with the optimizer state
resident, as under DeepSpeed. method full_ft: seq_ft's full fine-tuning
(every decoder linear trainable, chosen by pipeline.methods.seq_ft.mark_trainable), fp32 only
(torch's AdamW keeps no fp32 master copy of bf16 weights, so bf16 would not be DeepSpeed's
18 B/param); each of the two steps accumulates two micro-batches, as train.grad_accum does, so
the second micro-batch runs with the weights' gradients and Adam's m and v all resident, which
is what the plan sums. Memory is measured in a fresh subprocess as the growth of the
process's peak RSS (`resource.getrusage(...).ru_maxrss`) over its RSS just before the model is
built: tracemalloc does not see torch's allocations, and torch keeps no CPU allocator statistics.
glibc's dynamic mmap threshold is pinned (MALLOC_MMAP_THRESHOLD_) so that freed tensors go back
to the OS instead of fragmenting the heap, which would inflate RSS above what is live.

The plan side is `pipeline.planning.memory.estimate` for the same shape, dtype and method with on_gpu=False
under ZeRO-0: weights + adapters + optimizer + activations, without the GPU-only terms (CUDA
context, ZeRO buckets, fragmentation, encoder).

Results on 2 shared cores (plan / measured; b x s = 4 x 256 unless noted), no fitted constants:
  random 34M fp32      ckpt off 0.502 / 0.506 GiB = 0.99   ckpt on 0.276 / 0.290 = 0.95
  random 34M bf16      ckpt off 0.318 / 0.323 GiB = 0.98   ckpt on 0.189 / 0.201 = 0.94
  random 34M fp32 2x512                        0.98                         0.95
  SmolLM2-135M fp32 2x256  ckpt off 1.405 / 1.437 = 0.98   ckpt on 0.935 / 0.965 = 0.97
  full_ft random 34M fp32  ckpt off 0.854 / 0.859 = 0.99   ckpt on 0.557 / 0.572 = 0.97
(full_ft without the trained linears' saved inputs in the plan: 0.764 / 0.859 = 0.89.)
With checkpointing ~12-14 MiB stay unexplained at this size (the saved tensors match the plan
exactly, per saved_tensors_hooks; the rest is RSS that is no tensor); on a 70B step it is noise.

Writes bench/results/plan_vs_measured/<name>.json through bench.runner: section `results`, one
entry per checkpointing setting (the plan's terms in GiB, the measured GiB, their ratio, seconds
per step); run_info adds the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/x.py` puts bench/ on sys.path

from bench import runner  # noqa: E402
from pipeline.spec import Spec  # noqa: E402

runner.preamble()

BENCH = "plan_vs_measured"
# The code this bench measures (its results file records the fingerprint): the plan against a real step.
MEASURED = ("bench.plan_vs_measured", "pipeline.planning.memory", "pipeline.planning.loads",
            "pipeline.planning.shapes", "pipeline.jare.layer", "pipeline.jare.inject", "pipeline.methods.seq_ft")
GIB = 2**30


class Settings(Spec):
    """bench/experiments/plan_vs_measured/<name>.yaml."""

    name: str
    """The file's stem: the results are bench/results/plan_vs_measured/<name>.json."""
    model: Literal["random", "smollm2"] = "random"
    """random: a ~34M-parameter LLaMA; smollm2: SmolLM2-135M's shape (GQA). Random weights either way."""
    method: Literal["jare", "full_ft"] = "jare"
    """full_ft: seq_ft's full fine-tuning (fp32 only, 2 micro-batches per step)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """bfloat16 checks the GPU-path terms (fp32 norm copies, fp32 loss) on CPU."""
    batch: int = Field(4, ge=1)
    seq: int = Field(256, gt=8)
    rank: int = Field(8, ge=1)
    slots: int = Field(4, ge=1)
    tasks: int = Field(3, ge=1)
    threads: int = Field(2, ge=1)
    checkpointing: list[bool] = Field(default_factory=lambda: [False, True], min_length=1)
    """The gradient-checkpointing settings measured, one step each, in this order."""

    @model_validator(mode="after")
    def _full_ft_is_fp32(self) -> Settings:
        if self.method == "full_ft" and self.dtype != "float32":
            raise ValueError("method full_ft measures fp32 only: torch's AdamW keeps no fp32 master copy of bf16 "
                             "weights, so a bf16 step would not be the 18 B/param the plan charges")
        return self


load_settings = runner.settings_loader(BENCH, Settings)


def bench_config(model: str):
    """The LlamaConfig to measure: a random ~34M-parameter one, or SmolLM2-135M's shape."""
    from transformers import LlamaConfig

    if model == "smollm2":
        from pipeline.planning.shapes import config_for

        return config_for("bundled:smollm2")
    return LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                       num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024,
                       pad_token_id=0)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _batch(vocab: int, batch: int, seq: int):
    """Random tokens, the last 8 of sample 0 padded: a padding mask as in real training batches."""
    import torch

    ids = torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, -8:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def _jare_params(model, settings: Settings, batch: int) -> list:
    """JARe slots of T tasks on o_proj, routed to the last task's, whose P slots train."""
    from pipeline.jare.inject import inject_jare
    from pipeline.jare.routing import Routing

    bank = inject_jare(model, ["o_proj"], settings.rank, settings.slots, dtype=model.dtype)
    for t in range(settings.tasks):
        bank.add_task(f"task{t}", seed=t)
    params = bank.train_only(settings.tasks - 1)
    bank.set_routing(Routing.single_task(settings.tasks - 1, settings.slots, batch))
    return params


def micro_batches(settings: Settings) -> int:
    return 2 if settings.method == "full_ft" else 1


def _train_steps(config, settings: Settings, checkpointing: bool, batch: int, seq: int, steps: int) -> float:
    """Build the model, set up the method's trainable parameters and run `steps` AdamW steps of
    `micro_batches(settings)` micro-batches each; seconds per step."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.methods.seq_ft import mark_trainable

    ids, mask, labels = _batch(config.vocab_size, batch, seq)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, settings.dtype))  # random weights
    model.requires_grad_(False)
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = mark_trainable(model, None) if settings.method == "full_ft" else _jare_params(model, settings, batch)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    start = time.perf_counter()
    for _ in range(steps):
        for _ in range(micro_batches(settings)):
            out = model(input_ids=ids, attention_mask=mask, labels=labels)  # `out` keeps the logits alive
            out.loss.backward()  # adds to the previous micro-batch's gradients
            del out
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def measure(settings: Settings, checkpointing: bool) -> dict:
    """Runs in the child process: warm up, then build, inject JARe, two AdamW steps; RSS growth."""
    import torch
    from transformers import LlamaConfig

    torch.set_num_threads(settings.threads)
    torch.manual_seed(0)
    config = bench_config(settings.model)
    # A throwaway 1-layer model runs one step first: the first step imports modules lazily and
    # starts thread pools (~50 MiB of RSS that is no tensor); that must not count as activations.
    tiny = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=4, pad_token_id=0)
    _train_steps(tiny, settings, checkpointing, 2, 16, 1)
    import_peak, baseline = _peak_bytes(), _rss_bytes()
    step_s = _train_steps(config, settings, checkpointing, settings.batch, settings.seq, 2)
    return {"baseline": baseline, "peak": _peak_bytes(), "import_peak": import_peak, "step_s": step_s}


def planned(settings: Settings, checkpointing: bool) -> dict[str, float]:
    """pipeline.planning.memory's CPU-equivalent estimate for the same model and step, in GiB."""
    from pipeline.planning.loads import full_ft_load, jare_load
    from pipeline.planning.memory import Workload, estimate, shipped_mode
    from pipeline.planning.shapes import shape_from_config

    shape = shape_from_config(settings.model, bench_config(settings.model))
    work_bytes = 2 if settings.dtype == "bfloat16" else 4
    work = Workload(tasks=settings.tasks, micro_batch=settings.batch, seq_len=settings.seq, nodes=1, gpus_per_node=1,
                    gpu_mem_gib=float("inf"), compute_bytes=work_bytes, encoder_params=0, encoder_dim=0,
                    on_gpu=False)
    if settings.method == "full_ft":
        load = full_ft_load(shape, shape.decoder_linears(), settings.tasks, work_bytes, "seq_ft")
    else:  # JARe on o_proj, as the measured step trains it
        load = jare_load(shape.targets(["o_proj"]), settings.rank, settings.tasks, settings.slots, settings.slots, 0,
                         work_bytes, "slm")
    row = estimate(shape, work, shipped_mode("zero0"), 8 * work_bytes, checkpointing, load)
    return {"params": shape.total_params, "weights": row.weights_gib, "adapters": row.adapters_gib,
            "optim": row.optim_gib, "activations": row.activations_gib, "total": row.total_gib}


def run_child(settings: Settings, checkpointing: bool) -> dict:
    """`measure` in a fresh process, so that its peak RSS is this step's alone."""
    cmd = [sys.executable, __file__, "--child", settings.model_dump_json()]
    cmd += ["--checkpointing"] if checkpointing else []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(settings: Settings, checkpointing: bool) -> dict:
    plan = planned(settings, checkpointing)
    got = run_child(settings, checkpointing)
    measured = (got["peak"] - got["baseline"]) / GIB
    ratio = plan["total"] / measured
    note = "" if got["peak"] > got["import_peak"] else "  (peak not above the import peak: invalid)"
    print(f"{settings.method} {settings.model} {settings.dtype} ({plan['params'] / 1e6:.1f}M params) "
          f"b={settings.batch} s={settings.seq} "
          f"ckpt={'on' if checkpointing else 'off'}: plan_gib={plan['total']:.3f} measured_gib={measured:.3f} "
          f"ratio={ratio:.3f}  [weights {plan['weights']:.3f} adapters {plan['adapters']:.4f} optim "
          f"{plan['optim']:.4f} activations {plan['activations']:.3f}; {got['step_s']:.1f} s/step]{note}")
    return {"method": settings.method, "model": settings.model, "dtype": settings.dtype, "batch": settings.batch,
            "seq": settings.seq, "micro_batches_per_step": micro_batches(settings), "checkpointing": checkpointing,
            "plan_gib": plan, "measured_gib": measured, "step_s": got["step_s"], "ratio": ratio}


def markdown(record: dict, source: str) -> str:
    """A results file as a markdown table: the plan's memory beside the measured peak."""
    lines = ["| method | model | dtype | batch x seq | checkpointing | plan GiB | measured GiB | plan / measured |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['model']} | {r['dtype']} | {r['batch']} x {r['seq']} | "
              f"{'on' if r['checkpointing'] else 'off'} | {r['plan_gib']['total']:.3f} | {r['measured_gib']:.3f} | "
              f"{r['ratio']:.2f} |" for r in record["results"]]
    return "\n".join(lines) + f"\n\nfrom {source}\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", nargs="?", default="random-float32",
                   help="bench/experiments/plan_vs_measured/<name>.yaml (or a path to such a file)")
    p.add_argument("--results-dir", type=Path, default=runner.RESULTS)
    # The measuring child: the parent's settings as JSON, and which checkpointing setting to measure.
    p.add_argument("--child", metavar="SETTINGS_JSON", help=argparse.SUPPRESS)
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(Settings.model_validate_json(args.child), args.checkpointing)))
        return 0
    settings = load_settings(args.experiment)
    results = [report(settings, checkpointing) for checkpointing in settings.checkpointing]
    run = {**runner.bench_run_info(MEASURED, settings.model_dump(mode="json")),
           "name": settings.name, "settings": settings.model_dump(mode="json")}
    path = runner.write_result(BENCH, settings.name, {"results": results}, run, runner.meta_info(),
                               results=args.results_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
