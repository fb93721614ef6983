"""Per-GPU memory plan of one training step, from the experiment config alone (no weights).

The model is built on the meta device to count its parameters exactly and to read the target
linears' in/out features (which size the JARe slots and LoRAs) and the linears full fine-tuning
trains. What the experiment's method adds (which parameters are resident, which train, which
inputs they save, what a task stores) comes from the method's own `memory_load`
(pipeline.planning.loads). Every term below is per
GPU, in bytes:

weights      the base (frozen, or trained by seq_ft: the same 16-bit weights; their gradients and
             optimizer state are in optim+grads). 16-bit: 2 B/param, replicated under ZeRO-0/2;
             under ZeRO-3 sharded over all GPUs plus a gathered working set (4 B x the largest
             module, DeepSpeed's own convention, + the prefetch bucket); with ZeRO-3 param offload
             only the working set.
             8-bit: 1 B per decoder-linear weight + one fp32 scale per row; 4-bit NF4: 0.5 B + an
             fp32 absmax per 64-block (pipeline.runtime.models sets no double quantisation). Embeddings,
             lm_head and norms stay 16-bit; one linear is dequantised to 16-bit in matmul/backward.
adapters     the method's resident adapter parameters, in the compute dtype, sharded under ZeRO-3:
             JARe: all T tasks' slots, T*P*r*(d_in+d_out) per target linear; a LoRA method: its
             LoRA, r*(d_in+d_out) per target (o_lora: T of them); seq_ft: none.
optim+grads  the trainable parameters only (JARe: task t's P slots; LoRA: one; seq_ft: the decoder
             linears): 18 B/param in bf16 mixed precision (16-bit grad, fp32 grad, fp32 master,
             Adam m and v: DeepSpeed's accounting, estimate_zero2_model_states_mem_needs), 12 B/param
             in fp32 (grad, m, v). ZeRO-1 shards the optimizer state, ZeRO-2/3 the gradients too
             (over all GPUs); with optimizer offload all of it lives on the host. Summed with the
             activations although the fp32 gradient copy (4 B/param, sharded) exists only during the
             optimizer step: exact under gradient accumulation, where the grads stay across
             micro-batches; up to 4 B/param/GPU high for full fine-tuning at grad_accum 1.
activations  tensors saved for backward at micro_batch x max_seq_len, derived for a LLaMA block
             with SDPA (flash / memory-efficient) attention. Korthikanti et al.
             (2022) give 34*s*b*h + 5*a*s^2*b bytes per GPT layer with every weight trainable; with
             flash attention the s^2 term goes, and a frozen linear saves no input (autograd saves
             it only to compute the weight's gradient), so a *trainable* linear or side branch adds
             its input. Per token and layer:
                 8h          two RMSNorms, each saves its fp32 up-cast input (4 B/elem)
               + 4*q*e       SDPA saves q, k, v, out (k, v repeated to all heads when batches
                             are padded, which makes transformers call repeat_kv for GQA)
               + 3*I*e       SwiGLU: SiLU input, SiLU output, up_proj output
               + d_in*e      each trainable linear, JARe side branch or LoRA saves its input
                             (shared q/k/v, gate/up inputs count once). seq_ft with every linear
                             trained: h (q/k/v) + q (o_proj) + h (gate/up) + I (down_proj's input,
                             the SwiGLU product, which a frozen down_proj never keeps)
             plus, for JARe, per sample and layer, the gathered slots k*r*(d_in+d_out)*e; e = 2 (bf16)
             or 4. The rank-r intermediates (V x, A x: r/d_in of an input) are left out.
             An 8-bit base adds the inputs its linears keep although their weights are frozen:
             bitsandbytes' MatMul8bitLt stores its input A for backward whenever a gradient flows
             through it (`ctx.tensors = (CAt, subA, A)`), so q/k/v's, gate/up's and down_proj's
             inputs stay too (+h + h + I per token and layer beyond what the method saves: +4.7 GiB
             for LLaMA-2-7B at 4 x 1024 tokens without checkpointing). A 4-bit base keeps only its
             packed weight (MatMul4Bit: `ctx.tensors = (None, B)`).
             For LLaMA-2-7B this is 34.1*h bytes per token and layer with JARe on o_proj
             (Korthikanti: 34*h) and 43.5*h with every linear trained (seq_ft).
             Outside the blocks: final norm 4h per token, a padding mask of b*s^2 bools, and the
             loss's logits: b*s*V*(e + 12) at the peak of backward (e-dtype logits, the fp32
             log-softmax output, its gradient and the NLL gradient; the fp32 up-cast of the forward
             is freed before). The peak is at the start of backward, all of it alive at once.
             With gradient checkpointing (one checkpoint per decoder layer) only each layer's input
             (h*e per token) stays, and one layer at a time is recomputed:
                 L*h*e*b*s + max(logit peak, e-dtype logits + one layer's full activations).
             No fitted constants: bench/plan_vs_measured.py measures a real step (fp32 and bf16,
             MHA and GQA, checkpointing off/on; JARe, and full fine-tuning in fp32) against this.
load         the peak on one GPU while the base loads. `pipeline.runtime.models.placement` streams the
             checkpoint's tensors to their GPU (ZeRO-0/2, a quantized base) or builds the model
             partitioned under zero.Init (ZeRO-3; `pipeline.runtime.models.LOADS_ZERO3_SHARDED`), so
             the steady state is the peak. A loader that moved the whole base to each GPU before
             ZeRO-3 partitions it would need the whole 16-bit base on one GPU: "no (load)".
other        DTKR encoder (fp32) and FAISS keys, ZeRO's contiguous-gradient reduce bucket
             (reduce_bucket_size elements of bf16, allocated whole however few parameters train),
             plus CUDA_CONTEXT_GIB for the CUDA context, cuBLAS workspaces and NCCL buffers, plus,
             for a method with DTKR keys searched on the GPU (dtkr.faiss auto or gpu), FAISS_GPU_GIB
             for each rank's faiss.StandardGpuResources (its scratch, which
             pipeline.dtkr.store caps at FAISS_TEMP_MEMORY, plus its cuBLAS handle and streams),
             plus FRAGMENTATION of everything else for the caching allocator.
host         host RAM of the busiest node (the one with rank 0), compared with slurm.train.mem by
             `slm plan` and `slm submit`: HOST_BASE_GIB per rank (Python, torch and CUDA host
             allocations, tokenizer, data), plus what loading holds: with `placement`'s device map
             each rank streams LOAD_WORKERS tensors at a time (transformers' loader threads) from
             the memory-mapped files, whose page cache is shared and reclaimable, so not counted;
             under ZeRO-3 transformers' rank 0 reads every checkpoint file into one host state dict
             before the shards are filled (the whole 16-bit base, once). Plus offloaded state
             (16-bit parameters, fp32 optimizer state, over the nodes), plus, for a method that
             trains the base (seq_ft), the whole model that rank 0 alone gathers to save it.
stored       disk per task (not GPU memory; pipeline.planning.loads): JARe P slots + keys, a LoRA
             method one adapter, seq_ft the whole model in the training dtype; and over T tasks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import ExperimentConfig, shipped_deepspeed
from pipeline.errors import ConfigError
from pipeline.planning.loads import MethodLoad, compute_bytes
from pipeline.planning.shapes import ModelShape, encoder_size, model_shape, saved_input_features

if TYPE_CHECKING:
    from pipeline.methods.base import Method

GIB = 2**30
CUDA_CONTEXT_GIB = 1.5  # CUDA context ~0.5, cuBLAS/cuDNN workspaces ~0.3, NCCL buffers ~0.5 (8 ranks)
FRAGMENTATION = 0.05  # share of the planned bytes lost to the caching allocator's fragmentation
# What an "80 GB" card offers, the CUDA context included (planned apart, CUDA_CONTEXT_GIB): an A100
# 80GB reports 79.25 GiB of total capacity in PyTorch's out-of-memory message, an H100 80GB HBM3
# 81559 MiB (79.6 GiB) in nvidia-smi; the smaller of the two.
DEFAULT_GPU_MEM_GIB = 79.2
GPU_MEM_ENV = "SLM_GPU_MEM_GIB"  # `slm submit` reads the GPU size from here (the plan CLI: --gpu-mem-gib)
OPTIM_BYTES_MIXED = 18  # DeepSpeed's per-trainable-param accounting with 16-bit params
OPTIM_BYTES_FP32 = 12  # fp32 params are their own master: grad + Adam m + v
HOST_BASE_GIB = 8.0  # per rank: Python, CUDA host allocations, tokenizer, data loader
LOAD_WORKERS = 4  # tensors transformers' loader materialises at once (core_model_loading.GLOBAL_WORKERS)
# Each rank's faiss.StandardGpuResources: the scratch pipeline.dtkr.store.FAISS_TEMP_MEMORY allows
# (FAISS's own default would reserve 1.5 GiB per GPU to search a few thousand keys) + cuBLAS handle
# and streams.
FAISS_GPU_GIB = 0.25
GRID_DEEPSPEED = ("zero2", "zero3", "zero3_offload")
# Full fine-tuning holds the whole model's optimizer state, which ZeRO-2 can move to the host.
GRID_DEEPSPEED_FULL_FT = ("zero2", "zero2_offload", "zero3", "zero3_offload")
UNSUPPORTED_QUANT_ZERO3 = (
    "bitsandbytes places 8/4-bit weights with device_map and stores them packed; ZeRO-3 cannot "
    "partition them (pipeline.runtime.models sets no bnb_4bit_quant_storage): pair a quantized base with zero2")


@dataclass(frozen=True)
class ZeroMode:
    """The ZeRO settings of one DeepSpeed JSON that change memory."""

    name: str  # shipped bare name (zero2) or the file's stem
    stage: int
    offload_param: bool
    offload_optimizer: bool
    reduce_bucket: int | None  # elements; None = "auto" (hidden^2, as the HF integration fills it)
    prefetch_bucket: int | None  # ZeRO-3 elements gathered ahead; None = "auto" (0.9 hidden^2)
    reduce_buffers: int  # bf16 buffers of reduce_bucket elements: 0 without contiguous_gradients

    @property
    def label(self) -> str:
        return f"{self.stage}+off" if self.offload_param or self.offload_optimizer else str(self.stage)


@dataclass(frozen=True)
class Workload:
    """Everything besides the model and the ZeRO mode that sizes one step."""

    tasks: int
    micro_batch: int
    seq_len: int
    nodes: int
    gpus_per_node: int
    gpu_mem_gib: float
    compute_bytes: int  # 2: bf16 on GPUs; 4: fp32
    encoder_params: int
    encoder_dim: int
    on_gpu: bool = True  # False: a CPU step (no CUDA context, no ZeRO buffers, no encoder)
    faiss_on_gpu: bool = True  # dtkr.faiss allows a GPU search (auto, gpu): each rank holds FAISS resources

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class PlanRow:
    zero: str  # "2", "3", "3+off"
    deepspeed: str  # the DeepSpeed JSON to name in train.deepspeed
    base_bits: int
    checkpointing: bool
    gpus: int
    gpu_mem_gib: float
    weights_gib: float
    adapters_gib: float
    optim_gib: float
    activations_gib: float  # including the logits' loss buffers
    logits_gib: float
    other_gib: float
    host_gib: float  # host RAM per node (rough: see _host_bytes)
    load_gib: float = 0.0  # peak on one GPU while the base loads, before DeepSpeed partitions it
    unsupported: str | None = None
    method: str = "slm"

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.adapters_gib + self.optim_gib + self.activations_gib + self.other_gib

    @property
    def fits_at_load(self) -> bool:
        return self.load_gib <= self.gpu_mem_gib

    @property
    def fits(self) -> bool:
        return self.unsupported is None and self.total_gib <= self.gpu_mem_gib and self.fits_at_load

    @property
    def quantization(self) -> str:
        return _quantization(self.base_bits)


# ---- reading the DeepSpeed JSON -----------------------------------------------------------------


def zero_mode(path: Path, name: str | None = None) -> ZeroMode:
    """The memory-relevant ZeRO settings of a DeepSpeed JSON (DeepSpeed's defaults where absent)."""
    if not path.is_file():
        raise ConfigError(f"train.deepspeed: DeepSpeed config {path} does not exist "
                          f"(shipped: zero0, zero2, zero2_offload, zero3, zero3_offload)")
    zero = json.loads(path.read_text()).get("zero_optimization", {})

    def elements(key: str, default: float) -> int | None:
        value = zero.get(key, default)
        return None if value == "auto" else int(float(value))

    def offloaded(key: str) -> bool:
        return (zero.get(key) or {}).get("device", "none") in ("cpu", "nvme")

    stage = int(zero.get("stage", 0))
    contiguous = stage >= 2 and zero.get("contiguous_gradients", True)
    return ZeroMode(name=name or path.stem, stage=stage, offload_param=offloaded("offload_param"),
                    offload_optimizer=offloaded("offload_optimizer"),
                    reduce_bucket=elements("reduce_bucket_size", 5e8),
                    prefetch_bucket=elements("stage3_prefetch_bucket_size", 5e7),
                    reduce_buffers=(2 if zero.get("overlap_comm", stage == 3) else 1) if contiguous else 0)


def shipped_mode(name: str) -> ZeroMode:
    return zero_mode(shipped_deepspeed(name), name)


def workload(cfg: ExperimentConfig, nodes: int, gpus_per_node: int, gpu_mem_gib: float) -> Workload:
    params, dim = encoder_size(cfg.dtkr.encoder)
    return Workload(tasks=len(cfg.tasks), micro_batch=cfg.train.micro_batch_size, seq_len=cfg.model.max_seq_len,
                    nodes=nodes, gpus_per_node=gpus_per_node, gpu_mem_gib=gpu_mem_gib,
                    compute_bytes=compute_bytes(cfg), encoder_params=params, encoder_dim=dim,
                    faiss_on_gpu=cfg.dtkr.faiss != "cpu")


def shape_of_config(cfg: ExperimentConfig) -> ModelShape:
    return model_shape(cfg.model.name_or_path)


def load_of(cfg: ExperimentConfig, method: Method, shape: ModelShape | None = None) -> MethodLoad:
    """What the experiment's method adds to the plan: its own `memory_load` (pipeline.planning.loads)."""
    return method.memory_load(cfg, shape or shape_of_config(cfg), encoder_size(cfg.dtkr.encoder)[1])


# ---- the terms --------------------------------------------------------------------------------


def _zero3_working_set(shape: ModelShape, mode: ZeroMode) -> float:
    # DeepSpeed's estimate_zero3_model_states_mem_needs charges 4 B x the largest layer (the
    # module computing and the one prefetched, both 16-bit); the prefetch bucket comes on top.
    prefetch = mode.prefetch_bucket if mode.prefetch_bucket is not None else 0.9 * shape.hidden_size**2
    return 4 * shape.largest_module_params + 2 * prefetch


def quantized_bytes(shape: ModelShape, bits: int) -> float:
    kept = (shape.total_params - shape.quantizable_params) * 2  # embeddings, lm_head, norms
    if bits == 8:
        packed = shape.quantizable_params * 1 + shape.quantizable_rows * 4  # int8 + fp32 row scale
    else:
        packed = shape.quantizable_params * (0.5 + 4 / 64)  # NF4 + fp32 absmax per 64 weights
    return kept + packed + shape.largest_linear_params * 2  # + one dequantised 16-bit weight


def _weight_bytes(shape: ModelShape, work: Workload, mode: ZeroMode, bits: int) -> float:
    if bits < 16:
        return quantized_bytes(shape, bits)
    dense = shape.total_params * bits / 8
    if mode.stage < 3:
        return dense
    working = _zero3_working_set(shape, mode)
    return working if mode.offload_param else dense / work.gpus + working


def _adapter_bytes(load: MethodLoad, work: Workload, mode: ZeroMode) -> float:
    total = load.resident_params * work.compute_bytes
    if mode.stage < 3:
        return total
    return 0.0 if mode.offload_param else total / work.gpus  # gathered with their layer when offloaded


def _optim_bytes(load: MethodLoad, work: Workload, mode: ZeroMode) -> float:
    if mode.offload_optimizer:
        return 0.0  # grads stream to the host through the reduce bucket (counted in other)
    per_param = OPTIM_BYTES_MIXED if work.compute_bytes == 2 else OPTIM_BYTES_FP32
    grad = work.compute_bytes  # the gradient in the compute dtype: replicated below ZeRO-2
    if mode.stage == 0:
        return load.trainable_params * per_param
    replicated = grad if mode.stage == 1 else 0
    return load.trainable_params * (replicated + (per_param - replicated) / work.gpus)


def quantized_saved_features(shape: ModelShape, load: MethodLoad, bits: int) -> int:
    """Features per token, summed over layers, that an 8-bit base's decoder linears keep for backward
    beyond what the method's own trainable linears save (see the module doc); 0 for other bases."""
    if bits != 8:
        return 0
    saved = list(load.saved_linears)
    return saved_input_features([*saved, *shape.decoder_linears()]) - saved_input_features(saved)


def layer_activation_bytes(shape: ModelShape, work: Workload, load: MethodLoad, bits: int = 16) -> float:
    """Bytes one decoder layer saves for backward at micro_batch x seq_len (see module doc)."""
    e = work.compute_bytes
    saved = load.saved_input_features + quantized_saved_features(shape, load, bits)
    per_token = (8 * shape.hidden_size + 4 * shape.q_size * e + 3 * shape.intermediate_size * e
                 + saved / shape.num_layers * e)
    gathered = work.micro_batch * load.gathered_params / shape.num_layers * e
    return work.micro_batch * work.seq_len * per_token + gathered


def _activation_bytes(shape: ModelShape, work: Workload, load: MethodLoad, checkpointing: bool,
                      bits: int) -> tuple[float, float]:
    """(activations including the logits, the logits' share) at the peak of one step."""
    e, tokens = work.compute_bytes, work.micro_batch * work.seq_len
    layer = layer_activation_bytes(shape, work, load, bits)
    logits_out = tokens * shape.vocab_size * e
    logits_peak = tokens * shape.vocab_size * (e + 12)
    outside = tokens * 4 * shape.hidden_size + work.micro_batch * work.seq_len**2  # final norm, mask
    if checkpointing:
        inputs = shape.num_layers * tokens * shape.hidden_size * e
        return inputs + outside + max(logits_peak, logits_out + layer), logits_peak
    return shape.num_layers * layer + outside + logits_peak, logits_peak


def _other_bytes(shape: ModelShape, work: Workload, mode: ZeroMode, load: MethodLoad) -> float:
    if not work.on_gpu:
        return 0.0
    encoder = work.encoder_params * 4
    index = work.tasks * load.index_keys_per_task * (work.encoder_dim * 4 + 8 * 16)  # keys + ids (<= 16 groups)
    bucket = mode.reduce_bucket if mode.reduce_bucket is not None else shape.hidden_size**2
    faiss = FAISS_GPU_GIB * GIB if load.index_keys_per_task and work.faiss_on_gpu else 0.0
    return encoder + index + faiss + mode.reduce_buffers * bucket * 2 + CUDA_CONTEXT_GIB * GIB


def _load_bytes(shape: ModelShape, mode: ZeroMode, bits: int) -> float:
    """Peak on one GPU while loading. Only ZeRO-3 plans for less than the whole base, and only
    zero.Init loading (the loader's LOADS_ZERO3_SHARDED) makes that true at load time too."""
    import pipeline.runtime.models

    if bits < 16 or mode.stage < 3 or getattr(pipeline.runtime.models, "LOADS_ZERO3_SHARDED", False):
        return 0.0  # the steady state (total) is the peak
    return shape.total_params * bits / 8 + CUDA_CONTEXT_GIB * GIB


def _host_bytes(shape: ModelShape, work: Workload, mode: ZeroMode, bits: int, load: MethodLoad) -> float:
    """Host RAM of the node that holds rank 0 (see the module doc's `host`)."""
    ranks = work.gpus_per_node
    if mode.stage == 3 and bits >= 16:
        loading = shape.total_params * bits / 8  # transformers' rank 0 reads the whole checkpoint
    else:
        loading = ranks * LOAD_WORKERS * largest_tensor_params(shape) * 2  # streamed; 16-bit files
    saving = shape.total_params * work.compute_bytes if load.trains_base else 0.0  # rank 0 gathers it
    offloaded = 0.0
    if mode.offload_param:
        offloaded += shape.total_params * 2 / work.nodes
    if mode.offload_optimizer:
        offloaded += load.trainable_params * 16 / work.nodes  # fp32 master, m, v, grad
    return ranks * HOST_BASE_GIB * GIB + max(loading, saving) + offloaded


def largest_tensor_params(shape: ModelShape) -> int:
    """The largest single tensor of the checkpoint (LLaMA: the embedding or the LM head)."""
    return max(shape.largest_module_params, shape.vocab_size * shape.hidden_size)


# ---- rows, recommendation, table ---------------------------------------------------------------


def estimate(shape: ModelShape, work: Workload, mode: ZeroMode, base_bits: int, checkpointing: bool,
             load: MethodLoad, unsupported: str | None = None) -> PlanRow:
    """One configuration's per-GPU plan for the method `load`. `unsupported` (the method's refusal)
    and ZeRO-3 with a quantized base give a row without numbers."""
    nan = float("nan")
    row = PlanRow(zero=mode.label, deepspeed=mode.name, base_bits=base_bits, checkpointing=checkpointing,
                  gpus=work.gpus, gpu_mem_gib=work.gpu_mem_gib, weights_gib=nan, adapters_gib=nan, optim_gib=nan,
                  activations_gib=nan, logits_gib=nan, other_gib=nan, host_gib=nan, method=load.method)
    if unsupported or (mode.stage == 3 and base_bits < 16):
        return replace(row, unsupported=unsupported or UNSUPPORTED_QUANT_ZERO3)
    acts, logits = _activation_bytes(shape, work, load, checkpointing, base_bits)
    planned = (_weight_bytes(shape, work, mode, base_bits), _adapter_bytes(load, work, mode),
               _optim_bytes(load, work, mode), acts)
    other = _other_bytes(shape, work, mode, load)
    other += FRAGMENTATION * (sum(planned) + other) if work.on_gpu else 0.0
    weights, adapters, optim, acts = (b / GIB for b in planned)
    return replace(row, weights_gib=weights, adapters_gib=adapters, optim_gib=optim, activations_gib=acts,
                   logits_gib=logits / GIB, other_gib=other / GIB,
                   host_gib=_host_bytes(shape, work, mode, base_bits, load) / GIB,
                   load_gib=_load_bytes(shape, mode, base_bits) / GIB if work.on_gpu else 0.0)


def plan_memory(cfg: ExperimentConfig, method: Method, nodes: int | None = None, gpus_per_node: int | None = None,
                gpu_mem_gib: float = DEFAULT_GPU_MEM_GIB) -> list[PlanRow]:
    """Every ZeRO mode (2, 3, 3+offload; full fine-tuning also 2+offload) x base precision (16, 8,
    4 bit) x checkpointing (off, on), for the experiment's method; rows its `check` refuses are
    marked unsupported."""
    nodes = nodes or cfg.slurm.train.nodes
    gpus_per_node = gpus_per_node or max(1, cfg.slurm.train.gpus_per_node)
    shape = shape_of_config(cfg)
    load = load_of(cfg, method, shape)
    work = workload(cfg, nodes, gpus_per_node, gpu_mem_gib)
    dense_bits = 8 * work.compute_bytes
    grid = GRID_DEEPSPEED_FULL_FT if load.trains_base else GRID_DEEPSPEED
    return [estimate(shape, work, shipped_mode(ds), bits, ckpt, load, refusal(cfg, method, ds, _quantization(bits)))
            for ds in grid for bits in (dense_bits, 8, 4) for ckpt in (False, True)]


def _quantization(bits: int) -> str:
    return {8: "8bit", 4: "4bit"}.get(bits, "none")


def recommend(rows: list[PlanRow]) -> PlanRow | None:
    """The configuration to use among those that fit; None when none does.

    The GPU count is the input, so prefer, in this order: the higher-precision base (quality),
    no offload (host transfers are slow), ZeRO-2 over ZeRO-3 (no per-step weight gathering),
    checkpointing off (no recompute, ~1/3 more compute per step).
    """
    fitting = [r for r in rows if r.fits]
    if not fitting:
        return None
    return min(fitting, key=lambda r: (-r.base_bits, "+off" in r.zero, r.zero, r.checkpointing))


def _fits_cell(row: PlanRow) -> str:
    if row.unsupported:
        return "unsupported"
    if row.total_gib <= row.gpu_mem_gib and not row.fits_at_load:
        return "no (load)"
    return "yes" if row.fits else "no"


def _cell(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN: unsupported rows have no numbers


def format_plan(rows: list[PlanRow], recommended: PlanRow | None = None, load: MethodLoad | None = None) -> str:
    """The table; with `load`, titled with the method it plans and followed by its disk per task."""
    head = ("zero", "base bits", "ckpt", "weights", load.adapter_label if load else "slots", "optim+grads",
            "activations", "other", "total GiB/GPU", "fits?", "host GiB/node")
    lines = [[r.zero, str(r.base_bits), "on" if r.checkpointing else "off", _cell(r.weights_gib),
              _cell(r.adapters_gib), _cell(r.optim_gib), _cell(r.activations_gib), _cell(r.other_gib),
              _cell(r.total_gib), _fits_cell(r), _cell(r.host_gib, 0)] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=True)]
    marks = ["* " if r is recommended else "  " for r in rows]
    out = [f"method {load.method}: {load.summary}"] if load else []
    out += ["  " + "  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    out += [m + "  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for m, line in zip(marks, lines,
                                                                                                   strict=True)]
    reasons = sorted({r.unsupported for r in rows if r.unsupported})
    out += [f"unsupported: {reason}" for reason in reasons]
    load_peak = max((r.load_gib for r in rows if not r.fits_at_load), default=0.0)
    if load_peak:
        out.append(f"no (load): pipeline.runtime.models loads the whole base onto each GPU ({load_peak:.1f} GiB "
                   f"with the CUDA context) before ZeRO-3 partitions it; that needs zero.Init loading")
    if recommended is not None:
        out.append("* recommended")
    if load:
        out.append(stored_line(load))
    return "\n".join(out)


def stored_line(load: MethodLoad) -> str:
    return (f"stored per task: {_bytes(load.stored_per_task_bytes)} ({load.stored_what}); "
            f"over the T={load.tasks} tasks: {_bytes(load.stored_total_bytes)}")


def _bytes(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def dense_reference_gib(shape: ModelShape, nodes: int, gpus_per_node: int) -> dict[str, float]:
    """DeepSpeed's own model-state estimate for *full* fine-tuning, per GPU (no activations).

    DeepSpeed's estimators (the `_all_cold` functions print what these return) assume every
    parameter trains: 18 B/param of gradients and optimizer state. JARe trains ~0.1% of them,
    so the rows above use our own accounting; this reference shows what the frozen base saves.
    """
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    _, zero2 = estimate_zero2_model_states_mem_needs(shape.total_params, gpus_per_node, nodes, cpu_offload=False)
    _, zero3, _ = estimate_zero3_model_states_mem_needs(shape.total_params, shape.largest_module_params,
                                                        gpus_per_node, nodes, cpu_offload=False,
                                                        cpu_offload_params=False)
    return {"zero2": zero2 / GIB, "zero3": zero3 / GIB}


def refusal(cfg: ExperimentConfig, method: Method, deepspeed: str, quantization: str) -> str | None:
    """The method's own `check` on the config with this row's DeepSpeed JSON and quantization:
    its ConfigError's text when it refuses the row (seq_ft: a quantized base; o_lora: ZeRO-3)."""
    variant = cfg.model_copy(update={"model": cfg.model.model_copy(update={"quantization": quantization}),
                                     "train": cfg.train.model_copy(update={"deepspeed": deepspeed})})
    try:
        method.check(variant)
    except ConfigError as e:
        return str(e)
    return None
