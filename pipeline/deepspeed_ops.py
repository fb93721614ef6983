"""DeepSpeed's C++ ops, built under a lock that a killed build cannot leave behind.

DeepSpeed builds two ops this pipeline uses the first time a machine needs them:
`deepspeed_shm_comm` at every CPU `init_distributed` (a world of one too), and `cpu_adam` for
optimizer offload. torch's builder marks a build in progress by creating a file `lock` in the
op's build folder, and every later build waits until that file is gone, with no time limit and
no message. A build killed by SIGKILL (the OOM killer, a Slurm time limit, a fault test) leaves
the file behind, and from then on every run on that machine hangs at its start. CI did: it sat
for 90 minutes at its first `slm run`.

So every build of this pipeline goes through `build_op`. It holds a kernel lock (flock, which the
kernel drops when its holder dies) on `slm-build.lock` in that folder while DeepSpeed loads the
op. A `lock` file found while holding it was left by a build that died, and is removed with a
warning: every build of ours takes the flock first, and DeepSpeed keeps a loaded op for the rest of
the process, so the loads inside `init_distributed` and `DeepSpeedCPUAdam` do not build again.
Another program building in the same folder at that moment would lose its baton; a folder of the
pipeline's own ($TORCH_EXTENSIONS_DIR, which scripts/test.sh sets) rules that out.
"""

from __future__ import annotations

import fcntl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
HELD_LOCK = "slm-build.lock"
TORCH_BATON = "lock"  # torch.utils.file_baton.FileBaton's file, named by torch.utils.cpp_extension


def build_op(name: str, load: Callable[[], T]) -> T:
    """`load()` (which builds DeepSpeed's op `name` if it is not built yet) run while this process
    is the only builder of `name` here, after removing the baton of a build that died."""
    # The folder torch builds the op in: private, but the one function that gives exactly its
    # choice ($TORCH_EXTENSIONS_DIR, else a per-python, per-accelerator folder under ~/.cache).
    from torch.utils.cpp_extension import _get_build_directory

    folder = Path(_get_build_directory(name, verbose=False))
    with open(folder / HELD_LOCK, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        baton = folder / TORCH_BATON
        if baton.exists():
            print(f"warning: removing {baton}: a build of DeepSpeed's {name} op that was killed left it, and "
                  "torch would wait for it forever", file=sys.stderr, flush=True)
            baton.unlink(missing_ok=True)
        return load()


def build_shm_comm() -> None:
    """The shared-memory collectives DeepSpeed's `init_distributed` loads on a CPU, built before
    it does, where DeepSpeed would build them (its own test, deepspeed.comm.torch.build_shm_op)."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None and deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        build_op(builder.NAME, builder.load)
