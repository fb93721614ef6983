"""GPU training throughput and MFU: JARe with per-sample retrieval vs a PEFT LoRA, LLaMA-2-7B shape.

    python bench/gpu_throughput.py                        # llama2_7b: the full 7B shape, bf16, batch 4 x 2048
    python bench/gpu_throughput.py llama2_7b --check-targets   # exit 1 when a target below is missed
    python bench/gpu_throughput.py llama2_7b --peak-tflops 400 # a GPU missing from PEAK_BF16_DENSE_FLOPS
    python bench/gpu_throughput.py my.yaml                # other settings (layers, checkpointing, routing)

Never run by CI, and it exits at once with a clear message where there is no CUDA GPU.

Settings: bench/experiments/gpu_throughput/<name>.yaml (`Settings` below). Model: LlamaConfig of
meta-llama/Llama-2-7b-hf (pipeline.planning.shapes, offline), random weights, bf16,
attn_implementation="sdpa", built directly on the GPU; `layers: N` keeps only N decoder layers
(for a smaller GPU). Both methods train the same frozen base shape, one after the other (a GPU is not
shared with other load, so no interleaving is needed; each method gets a freshly built base so
its peak memory is its own):

  jare   3 tasks x P=4 slots of rank r=8 on o_proj (pipeline.jare), bf16 slots. Only task 2's
         slots train. Routing is per sample: random DTKR keys for the 3 tasks in a KeyStore
         (pipeline.dtkr.store, the GPU index when faiss-gpu is there), random query embeddings,
         top-k=2 over all 12 slots (`routing: all`, the gather-from-every-task path), or over task
         2's own slots as `slm train` does (`routing: task`, the direct-index path). Routings are
         computed before the timed steps, as `slm train` computes them once before training.
  lora   PEFT LoRA of rank 8 (alpha = rank) on o_proj, adapters kept in bf16
         (autocast_adapter_dtype=False) as DeepSpeed's bf16 mode would cast them.

Each: AdamW on the trainable parameters only, `warmup` untimed steps then `steps` timed ones,
batch x seq_len random tokens with the loss on every token. Reported: tokens/s, ms per step,
peak memory (torch.cuda.max_memory_allocated, base weights included), and MFU:

  MFU = tokens/s x FLOPs per token / peak dense BF16 FLOP/s of the GPU
  FLOPs per token = 4N for a frozen base (forward 2N + backward input-gradients 2N; there are no
                    weight gradients), 6N with checkpointing (the recomputed forward adds 2N,
                    so that figure is hardware FLOPs utilisation in PaLM's terms)
  N = parameters of the base's matmuls (every nn.Linear, lm_head included; not the embedding
      lookup, not the norms). The attention score FLOPs (4 x layers x seq x hidden per token in
      the forward, ~8 % of 2N for 7B at 2048) and the adapters' own FLOPs are left out, so MFU
      is slightly conservative and identical in definition for both methods.

It also checks that the faiss-gpu index returns the same ids as the CPU index for the same
queries (or reports that faiss-gpu is missing: pip install the `gpu` extra).

Targets on an H100-class GPU (H100 / H200, full 7B shape, no checkpointing):
  JARe tokens/s >= 0.9 x LoRA tokens/s      (per-sample routing costs < 10 %)
  MFU >= 40 %                               (for both methods)
--check-targets turns a miss into exit status 1.

Prints a table and, last, one line:
  jare_tokens_per_s=... lora_tokens_per_s=... ratio=... jare_mfu=... lora_mfu=...
Writes bench/results/gpu_throughput/<name>-<gpu>.json through bench.runner (one file per
experiment and GPU model: the same experiment on an H100 and an H200 is two runs): section
`train_info` (per method: trainable parameters, tokens/s, ms per step, peak GiB, final loss, MFU;
and the faiss-gpu check); run_info adds the settings, the model, its layers and N, the peak
FLOP/s used; meta_info adds the GPU and the CUDA version.
"""

from __future__ import annotations

import argparse
import copy
import gc
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/x.py` puts bench/ on sys.path

from bench import runner  # noqa: E402
from pipeline.spec import Spec  # noqa: E402

runner.preamble()

BENCH = "gpu_throughput"
# The code this bench measures (its results file records the fingerprint).
MEASURED = ("bench.gpu_throughput", "pipeline.jare.layer", "pipeline.jare.inject", "pipeline.dtkr.keys",
            "pipeline.dtkr.router", "pipeline.dtkr.store")
MODEL_ID = "meta-llama/Llama-2-7b-hf"
# (substring of torch.cuda.get_device_name(), dense BF16 tensor-core FLOP/s from the datasheets);
# the first match wins, so the more specific names come first.
PEAK_BF16_DENSE_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM5, reported as "NVIDIA H100 80GB HBM3"
    ("H200", 989e12),  # also GH200
    ("A100", 312e12),
)
TARGET_RATIO = 0.9
TARGET_MFU = 0.40
TASKS, SLOTS, RANK, TOP_K = 3, 4, 8, 2
ENCODER_DIM, GROUPS = 384, 6  # the bundled all-MiniLM-L6-v2's shape, as the default experiment
NEEDS_CUDA = ("bench/gpu_throughput.py needs a CUDA GPU (torch.cuda.is_available() is False here). "
              "Run it on a GPU node, e.g. `srun --gpus=1 python bench/gpu_throughput.py`.")


# ---- the arithmetic (CPU-only, tested in tests/test_gpu_bench.py) ------------------------------


def flops_per_token(matmul_params: int, recompute: bool) -> float:
    """Training FLOPs per token of a frozen base: 4N, or 6N when checkpointing recomputes the forward."""
    return (6 if recompute else 4) * float(matmul_params)


def mfu(tokens_per_s: float, flops_token: float, peak_flops: float) -> float:
    return tokens_per_s * flops_token / peak_flops


def peak_flops_for(device_name: str, peak_tflops: float | None = None) -> float:
    """Dense BF16 FLOP/s of the GPU: `peak_tflops` (--peak-tflops) when given, else the table; an
    unknown GPU stops the run."""
    if peak_tflops is not None:
        return peak_tflops * 1e12
    for key, flops in PEAK_BF16_DENSE_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    known = ", ".join(k for k, _ in PEAK_BF16_DENSE_FLOPS)
    raise SystemExit(f"no peak BF16 FLOP/s known for GPU {device_name!r} (known: {known}); "
                     "pass --peak-tflops with the datasheet's dense (not sparse) BF16 TFLOP/s")


def bench_config(layers: int | None):
    """LLaMA-2-7B's LlamaConfig (offline), optionally cut to `layers` decoder layers, SDPA attention."""
    from pipeline.planning.shapes import LLAMA2_CONFIGS

    config = copy.deepcopy(LLAMA2_CONFIGS[MODEL_ID])  # never edit the shared offline config
    if layers is not None:
        config.num_hidden_layers = layers
    config.use_cache = False  # training: no KV cache
    return config


def matmul_params(config) -> int:
    """N of the FLOPs formula: weights of every nn.Linear (lm_head included), from a meta-device model."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


# ---- the GPU run ----------------------------------------------------------------------------


@dataclass
class Measurement:
    method: str
    trainable_params: int
    tokens_per_s: float
    step_ms: float
    peak_gib: float
    final_loss: float
    mfu: float = 0.0


class Settings(Spec):
    """bench/experiments/gpu_throughput/<name>.yaml."""

    name: str
    """The file's stem: the results are bench/results/gpu_throughput/<name>-<gpu>.json."""
    layers: int | None = Field(None, ge=1)
    """Decoder layers (null: all 32 of 7B)."""
    batch: int = Field(4, ge=1)
    """Sequences per step."""
    seq_len: int = Field(2048, ge=2)
    steps: int = Field(10, ge=1)
    """Timed steps per method."""
    warmup: int = Field(3, ge=0)
    """Untimed steps first (kernels, allocator)."""
    checkpointing: bool = False
    """Gradient checkpointing (FLOPs per token: 6N)."""
    routing: Literal["all", "task"] = "all"
    """JARe's top-k over all tasks' slots, or over the trained task's (what slm train does)."""
    seed: int = 0


load_settings = runner.settings_loader(BENCH, Settings)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", nargs="?", default="llama2_7b",
                   help="bench/experiments/gpu_throughput/<name>.yaml (or a path to such a file)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense BF16 TFLOP/s of a GPU not in the table")
    p.add_argument("--check-targets", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--results-dir", type=Path, default=runner.RESULTS)
    return p.parse_args(argv)


def build_base(config, seed: int, device: torch.device) -> torch.nn.Module:
    """A random frozen bf16 base, built directly on `device` (no host copy of 13 GB)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.requires_grad_(False)
    return model


def random_key_store(seed: int):
    from pipeline.dtkr.store import KeyStore

    gen = torch.Generator().manual_seed(seed)
    store = KeyStore(ENCODER_DIM, GROUPS, SLOTS, encoder="random")
    for t in range(TASKS):
        store.add_task(f"task{t}", torch.randn(SLOTS, GROUPS, ENCODER_DIM // GROUPS, generator=gen))
    return store


def jare_routings(store, n: int, batch: int, routing: str, seed: int, device: torch.device) -> list:
    """One per-sample Routing per step, on the GPU, from random query embeddings."""
    from pipeline.config import DtkrSpec
    from pipeline.dtkr.router import Router

    router = Router(store, None, DtkrSpec(groups=GROUPS, top_k=TOP_K))  # the stages' routing path
    gen = torch.Generator().manual_seed(seed + 1)
    trained = f"task{TASKS - 1}"
    out = []
    for _ in range(n):
        queries = torch.randn(batch, ENCODER_DIM, generator=gen)
        if routing == "all":
            r = router.route_embeddings(queries)
        else:  # slm train: restricted to the trained task (one task: the router sets Routing.task)
            r = router.route_embeddings(queries, tasks=[trained])
        out.append(r.to(device))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels are asynchronous: time only finished work


def time_training(method: str, model: torch.nn.Module, params: list[torch.nn.Parameter],
                  before_step: Callable[[int], None], settings: Settings, device: torch.device) -> Measurement:
    """`warmup` untimed + `steps` timed AdamW steps; throughput from wall time between syncs."""
    if settings.checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator(device=device).manual_seed(settings.seed)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (settings.batch, settings.seq_len), device=device, generator=gen)
    start = 0.0
    loss = torch.zeros(())
    for step in range(settings.warmup + settings.steps):
        if step == settings.warmup:
            _sync(device)
            start = time.perf_counter()
        before_step(step)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    elapsed = time.perf_counter() - start
    final = loss.item()  # the only host sync inside the run: after the clock stopped
    if not torch.isfinite(torch.tensor(final)):
        raise RuntimeError(f"{method}: the loss is {final}; the timing would be meaningless")
    return Measurement(method=method, trainable_params=sum(p.numel() for p in params),
                       tokens_per_s=settings.steps * settings.batch * settings.seq_len / elapsed,
                       step_ms=1000 * elapsed / settings.steps,
                       peak_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0,
                       final_loss=final)


def run_jare(config, store, settings: Settings, device: torch.device) -> Measurement:
    from pipeline.jare.inject import inject_jare

    model = build_base(config, settings.seed, device)
    bank = inject_jare(model, ["o_proj"], rank=RANK, slots_per_task=SLOTS, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(settings.seed + 2)
    for t in range(TASKS):
        bank.add_task(f"task{t}", seed=settings.seed + t)
        if t < TASKS - 1:  # earlier tasks as if trained: U != 0, so their branches do real work
            with torch.no_grad():
                for p in bank.task_parameters(t):
                    p.copy_(0.01 * torch.randn(p.shape, generator=gen))
    params = bank.train_only(TASKS - 1)
    steps = settings.warmup + settings.steps
    routings = jare_routings(store, steps, settings.batch, settings.routing, settings.seed, device)
    result = time_training("jare", model, params, lambda step: bank.set_routing(routings[step]), settings, device)
    bank.set_routing(None)
    return result


def run_lora(config, settings: Settings, device: torch.device) -> Measurement:
    from peft import LoraConfig, get_peft_model

    model = build_base(config, settings.seed, device)
    peft_config = LoraConfig(r=RANK, lora_alpha=RANK, lora_dropout=0.0, target_modules=["o_proj"])
    model = get_peft_model(model, peft_config, autocast_adapter_dtype=False)
    params = [p for p in model.parameters() if p.requires_grad]
    return time_training("lora", model, params, lambda step: None, settings, device)


def check_faiss_gpu(store, seed: int, queries: int = 512) -> str:
    """Same ids from the GPU index as from the CPU index, or why that could not be checked."""
    import numpy as np

    from pipeline.dtkr.keys import group_normalize
    from pipeline.dtkr.store import faiss_gpu_available

    if not faiss_gpu_available():
        return "missing (faiss has no GPU support here: pip install the project's `gpu` extra)"
    q = torch.randn(queries, ENCODER_DIM, generator=torch.Generator().manual_seed(seed + 3))
    gpu_sims, gpu_ids = store.search(q, TOP_K)  # KeyStore searches through its GPU copy
    q_np = np.ascontiguousarray(group_normalize(q, GROUPS).reshape(queries, ENCODER_DIM).numpy(), dtype=np.float32)
    cpu_sims, cpu_ids = store.index.search(q_np, TOP_K)  # the CPU master index
    cpu_sims = cpu_sims / GROUPS
    same = int((gpu_ids == cpu_ids).all(axis=1).sum())
    gap = float(np.abs(gpu_sims - cpu_sims).max())
    if same == queries:
        return f"same ids as the CPU index ({queries} queries, top-{TOP_K}; max similarity gap {gap:.1e})"
    return f"DIFFERENT ids in {queries - same} of {queries} queries (max similarity gap {gap:.1e})"


def _table(rows: list[Measurement]) -> str:
    head = ("method", "trainable", "tokens/s", "ms/step", "MFU", "peak GiB", "loss")
    cells = [(m.method, f"{m.trainable_params:,}", f"{m.tokens_per_s:,.0f}", f"{m.step_ms:.1f}",
              f"{100 * m.mfu:.1f}%", f"{m.peak_gib:.1f}", f"{m.final_loss:.3f}") for m in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *cells, strict=True)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in [head, *cells])


def gpu_slug(device_name: str) -> str:
    """"NVIDIA H100 80GB HBM3" -> "h100-80gb-hbm3": the GPU part of a results name."""
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower().removeprefix("nvidia ")).strip("-")


def save(settings: Settings, device_name: str, peak: float, n: int, rows: list[Measurement], faiss_status: str,
         results: Path) -> Path:
    layers = settings.layers or bench_config(None).num_hidden_layers
    run = {**runner.bench_run_info(MEASURED, settings.model_dump(mode="json")),
           "name": settings.name, "settings": settings.model_dump(mode="json"),
           "model": MODEL_ID, "layers": layers, "matmul_params": n, "peak_tflops": peak / 1e12}
    meta = {**runner.meta_info(), "gpu": device_name, "cuda": torch.version.cuda}
    train_info = {m.method: asdict(m) for m in rows} | {"faiss_gpu": faiss_status}
    return runner.write_result(BENCH, f"{settings.name}-{gpu_slug(device_name)}", {"train_info": train_info}, run,
                               meta, results=results)


def _measure(run: Callable[[], Measurement], device: torch.device, per_token: float, peak: float) -> Measurement:
    gc.collect()  # the previous method's base is garbage by now (collect any cycles) ...
    torch.cuda.empty_cache()  # ... and its cached blocks go back, so this peak is this method's own
    torch.cuda.reset_peak_memory_stats(device)
    m = run()
    m.mfu = mfu(m.tokens_per_s, per_token, peak)
    print(f"{m.method}: {m.tokens_per_s:,.0f} tokens/s", flush=True)
    return m


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = load_settings(args.experiment)
    if not torch.cuda.is_available():
        raise SystemExit(NEEDS_CUDA)  # before any model is built: fail fast
    name = torch.cuda.get_device_name()
    peak = peak_flops_for(name, args.peak_tflops)  # an unknown GPU stops here, not after the run
    config = bench_config(settings.layers)
    n = matmul_params(config)
    per_token = flops_per_token(n, settings.checkpointing)
    print(f"{name}: {MODEL_ID} shape, {config.num_hidden_layers} layers, N={n / 1e9:.2f}B matmul params, "
          f"batch {settings.batch} x {settings.seq_len}, bf16, sdpa, "
          f"checkpointing {'on' if settings.checkpointing else 'off'}, "
          f"peak {peak / 1e12:.0f} TFLOP/s, {per_token / 1e9:.1f} GFLOP/token", flush=True)
    store = random_key_store(settings.seed)
    cuda = torch.device("cuda", torch.cuda.current_device())
    jare = _measure(lambda: run_jare(config, store, settings, cuda), cuda, per_token, peak)
    lora = _measure(lambda: run_lora(config, settings, cuda), cuda, per_token, peak)
    faiss_status = check_faiss_gpu(store, settings.seed)
    ratio = jare.tokens_per_s / lora.tokens_per_s
    print(_table([jare, lora]))
    print(f"faiss-gpu: {faiss_status}")
    met = {"ratio": ratio >= TARGET_RATIO, "jare_mfu": jare.mfu >= TARGET_MFU, "lora_mfu": lora.mfu >= TARGET_MFU}
    print(f"targets: JARe/LoRA {ratio:.3f} >= {TARGET_RATIO}: {_yes(met['ratio'])}; MFU >= {TARGET_MFU:.0%}: "
          f"jare {_yes(met['jare_mfu'])}, lora {_yes(met['lora_mfu'])}")
    print(f"results: {save(settings, name, peak, n, [jare, lora], faiss_status, args.results_dir)}")
    print(f"jare_tokens_per_s={jare.tokens_per_s:.0f} lora_tokens_per_s={lora.tokens_per_s:.0f} ratio={ratio:.3f} "
          f"jare_mfu={jare.mfu:.3f} lora_mfu={lora.mfu:.3f}")
    return 1 if args.check_targets and not all(met.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
