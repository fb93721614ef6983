"""Process-group setup for one process or many (torchrun / srun), CPU (gloo) or GPU (nccl)."""

from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as dist

from pipeline import deepspeed_ops


def local_device() -> torch.device:
    """This process's device: GPU LOCAL_RANK on a GPU node (torchrun starts one process per GPU,
    LOCAL_RANK 0..G-1 on each node), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def setup() -> tuple[int, int]:
    """Initialise DeepSpeed's process group; a plain `python` run becomes a world of one.
    Returns (rank, world_size)."""
    import deepspeed

    if not dist.is_initialized():
        device = local_device()
        if device.type == "cuda":
            # Before the first collective: NCCL binds a rank's communicator to the current device,
            # and every later tensor, barrier and FAISS index (pipeline.dtkr.store.rank_gpu) follows
            # it. Without this, every rank of a node would start on GPU 0.
            torch.cuda.set_device(device)
        else:
            deepspeed_ops.build_shm_comm()  # under a lock a killed build cannot leave behind
        backend = "nccl" if device.type == "cuda" else "gloo"
        if "MASTER_ADDR" in os.environ:  # torchrun / srun set the rendezvous
            deepspeed.init_distributed(dist_backend=backend, verbose=False)
        else:
            # A world of one rendezvouses through a file, not a TCP port: nothing to collide
            # with other jobs on the same machine.
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
            store = tempfile.NamedTemporaryFile(prefix="slm-dist-", delete=False).name
            os.unlink(store)
            deepspeed.init_distributed(dist_backend=backend, verbose=False, auto_mpi_discovery=False,
                                       init_method=f"file://{store}",
                                       rank=0, world_size=1)
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def log(msg: str) -> None:
    """Print on rank 0 only (errors are raised on every rank)."""
    if is_main():
        print(msg, flush=True)


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on one (a signal may reach only some ranks)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=local_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def from_main(compute):
    """`compute()` run on rank 0 only, its (picklable) result on every rank: one decision for all,
    where ranks that each decided alone could disagree (and then hang in different collectives)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return compute()
    box = [compute() if is_main() else None]
    dist.broadcast_object_list(box, src=0)  # NCCL: through the current device, which setup() bound
    return box[0]


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def gathered(params: list[torch.nn.Parameter], state_fn):
    """Run state_fn with full tensors: under ZeRO-3 each rank holds a shard, so gather first
    (a collective: every rank calls it)."""
    import deepspeed

    if any(hasattr(p, "ds_id") for p in params):
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return state_fn()
    return state_fn()


def state_dict_on_main(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state dict in host memory on rank 0 only ({} on the other ranks): what
    saving a full fine-tuned model needs (a collective: every rank calls it).

    Under ZeRO-3 each rank holds a shard, so the parameters are gathered one module at a time
    (a decoder layer's worth on each GPU, for a moment, never the whole model), and only rank 0
    copies them to the host: copying on every rank would put W whole models in host memory
    (8 x 26 GB for LLaMA-2-13B at the end of each task). Under ZeRO-0/2 every rank holds the whole
    model on its GPU already, and again only rank 0 copies it.
    """
    import deepspeed

    main = is_main()
    state: dict[str, torch.Tensor] = {}
    names = {id(t): name for name, t in model.state_dict(keep_vars=True).items()}  # persistent tensors only
    for module in model.modules():
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        kept = [t for t in own if id(t) in names]
        if not kept:
            continue
        sharded = [t for t in kept if hasattr(t, "ds_id")]
        # modifier_rank=None: nothing is written back, so no broadcast on leaving the context
        with deepspeed.zero.GatheredParameters(sharded, modifier_rank=None, enabled=bool(sharded)):
            if main:
                for t in kept:
                    state[names[id(t)]] = t.detach().cpu().clone()
    if main:  # tied weights (one tensor under two names) are stored under each name, as state_dict does
        full = model.state_dict(keep_vars=True)
        for name, t in full.items():
            if name not in state:
                state[name] = state[names[id(t)]]
    return state
