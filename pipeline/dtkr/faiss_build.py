"""Which FAISS build is installed, and whether it can do what `dtkr.faiss` asks.

faiss-cpu and faiss-gpu are separate wheels that both install the module `faiss`; with both
installed, the one installed last silently wins. The base install therefore names no FAISS
build: the `cpu` or `gpu` extra picks exactly one (pyproject.toml; scripts/setup.sh installs
the cpu one, `SLM_FAISS=gpu` the gpu one). This module reports the build without importing
anything heavy before it is asked, so `slm plan` can print it and a wrong build is an error
with a fix instead of a quiet CPU fallback.

dtkr.faiss: `auto` searches on the GPU when the build and a GPU allow it, else on the CPU;
`gpu` requires both (an error otherwise); `cpu` never uses a GPU.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from functools import lru_cache

from pipeline.errors import ConfigError

INSTALL_HINT = ("install one FAISS build: `pip install -c constraints.txt -e '.[cpu]'`, or on a CUDA machine "
                "`pip uninstall -y faiss-cpu && pip install -c constraints.txt -e '.[gpu]'` "
                "(scripts/setup.sh: SLM_FAISS=cpu|gpu)")


@dataclass(frozen=True)
class FaissBuild:
    """The `faiss` module this process imports."""

    kind: str  # "gpu", "cpu", or "missing"
    version: str
    gpus: int  # GPUs that FAISS sees (0 for a CPU build)
    wheels: tuple[str, ...]  # the installed distributions that provide the module `faiss`

    def describe(self) -> str:
        if self.kind == "missing":
            return "no FAISS installed"
        wheels = f" from {' + '.join(self.wheels)}" if self.wheels else ""
        gpus = f", {self.gpus} GPU(s) visible" if self.kind == "gpu" else ""
        return f"faiss {self.version}, {self.kind} build{wheels}{gpus}"

    def searches_on_gpu(self, choice: str) -> bool:
        """Where `dtkr.faiss=choice` searches with this build (after `require` accepted it)."""
        return choice != "cpu" and self.kind == "gpu" and self.gpus > 0


@lru_cache(maxsize=1)
def faiss_build() -> FaissBuild:
    wheels = tuple(sorted(importlib.metadata.packages_distributions().get("faiss", [])))
    try:
        import faiss
    except ImportError:
        return FaissBuild("missing", "", 0, wheels)
    gpu = hasattr(faiss, "StandardGpuResources")
    return FaissBuild("gpu" if gpu else "cpu", faiss.__version__, faiss.get_num_gpus() if gpu else 0, wheels)


def require(choice: str, need_device: bool = True) -> FaissBuild:
    """The installed build, after checking it can serve `dtkr.faiss=choice`. `need_device`: also
    require a visible GPU for `gpu` (not on a login node that only renders the jobs)."""
    build = faiss_build()
    if build.kind == "missing":
        raise ConfigError("FAISS is not installed (the base install names no build, so that a GPU build is "
                          "never replaced by a CPU one)", hint=INSTALL_HINT)
    if len(build.wheels) > 1:
        raise ConfigError(f"several FAISS wheels are installed ({', '.join(build.wheels)}) and each provides the "
                          f"module `faiss`; the one installed last won ({build.describe()})", hint=INSTALL_HINT)
    if choice == "gpu" and build.kind != "gpu":
        raise ConfigError(f"dtkr.faiss=gpu, but the installed FAISS is a CPU-only build ({build.describe()})",
                          hint=INSTALL_HINT + "; or set dtkr.faiss=auto to search on the CPU")
    if choice == "gpu" and need_device and build.gpus == 0:
        raise ConfigError(f"dtkr.faiss=gpu, but FAISS sees no GPU ({build.describe()})",
                          hint="run on a GPU node (check CUDA_VISIBLE_DEVICES and slurm.<job>.gpus_per_node), "
                               "or set dtkr.faiss=auto")
    return build
