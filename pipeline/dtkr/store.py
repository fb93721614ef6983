"""KeyStore: every finished task's DTKR keys in one FAISS index, plus a JSON sidecar.

Layout: one vector per slot, the concatenation of its g L2-normalised group keys, in an
`IndexIDMap2(IndexFlatIP(D))`, id = global slot index. A query is group-normalised the same
way, so  <q, k> / g  = mean over groups of the per-group cosine, exactly DTKR's similarity: one
inner-product search returns the top-k slots without a per-group merge step. (Equivalent to one
vector per (slot, group) with a per-group index, at 1/g of the searches.) The sidecar maps ids
to (task, slot) and records the encoder, dims and a content hash, checked on load.

A GPU copy of the index serves every search when `dtkr.faiss` allows it and faiss-gpu and a GPU
are present (`use_faiss`, pipeline/dtkr/faiss_build.py); the CPU index is the master (what is
saved, and what add/remove edit). The copy lives on this process's own GPU (the rank's
`torch.cuda.current_device()`, which pipeline.distributed sets to LOCAL_RANK), never all on GPU 0.
A search restricted to some tasks' slots (training, eval, generate) searches all slots and keeps
the allowed ones: GPU flat indexes ignore FAISS id selectors, and with a few slots per task the
full ranking costs what a top-k does. One code path on both devices, so the CPU tests exercise what runs on the GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.dtkr import faiss_build
from pipeline.dtkr.keys import group_normalize, weights_from_similarity
from pipeline.errors import CheckpointError
from pipeline.jare.routing import Routing
from pipeline.state import validity
from pipeline.state.artifacts import atomic_path

if TYPE_CHECKING:
    from pipeline.experiment import Experiment

# No FAISS, or two builds at once: an error that says what to install, not an ImportError.
faiss_build.require("auto", need_device=False)
import faiss  # noqa: E402

INDEX_FILE = "keys.faiss"
# faiss GPU flat search returns at most this many neighbours; a larger store searches on the CPU
GPU_MAX_K = 2048
# Scratch of each GPU's faiss.StandardGpuResources. FAISS reserves 1.5 GiB per GPU by default (18 % of
# a small card), sized for billion-vector searches; a flat search of at most GPU_MAX_K keys for a
# batch of queries needs a few MiB (queries x keys fp32 distances), and a larger request falls back
# to cudaMalloc. pipeline.planning.memory plans FAISS_GPU_GIB per rank on top of the keys.
FAISS_TEMP_MEMORY = 64 * 2**20
SIDECAR_FILE = "keys.json"


class KeyStore:
    def __init__(self, dim: int, groups: int, slots_per_task: int, encoder: str) -> None:
        if dim % groups:
            raise ValueError(f"dtkr.groups={groups} does not divide the encoder dimension {dim}")
        self.dim, self.groups, self.slots_per_task, self.encoder = dim, groups, slots_per_task, encoder
        self.tasks: list[str] = []
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._vectors: dict[str, np.ndarray] = {}  # task -> (P, D) float32, for hashing and rebuilds
        self._gpu_index = None

    # ---- editing ----------------------------------------------------------------------------
    def add_task(self, name: str, keys: torch.Tensor) -> None:
        """Append task `name`'s keys (P, g, dg); its slots get the next P global ids."""
        if name in self.tasks:
            raise ValueError(f"task {name!r} is already in the index")
        expect = (self.slots_per_task, self.groups, self.dim // self.groups)
        if tuple(keys.shape) != expect:
            raise CheckpointError(f"keys of task {name!r} have shape {tuple(keys.shape)}, the store expects {expect}")
        vecs = torch.nn.functional.normalize(keys.float(), dim=-1).reshape(self.slots_per_task, self.dim)
        self._append(name, np.ascontiguousarray(vecs.cpu().numpy(), dtype=np.float32))

    def _append(self, name: str, vecs_np: np.ndarray) -> None:
        t = len(self.tasks)
        ids = np.arange(t * self.slots_per_task, (t + 1) * self.slots_per_task, dtype=np.int64)
        self.index.add_with_ids(vecs_np, ids)
        self.tasks.append(name)
        self._vectors[name] = vecs_np
        self._gpu_index = None

    def remove_task(self, name: str) -> None:
        """Drop a task's keys; later tasks' ids move down by P so ids stay dense (the JARe bank
        renumbers its slots the same way)."""
        t = self.tasks.index(name)
        p = self.slots_per_task
        self.index.remove_ids(np.arange(t * p, len(self.tasks) * p, dtype=np.int64))
        later = self.tasks[t + 1:]
        del self.tasks[t:]
        del self._vectors[name]
        for other in later:  # re-add as stored: normalising again would change the last bits
            self._append(other, self._vectors.pop(other))
        self._gpu_index = None

    # ---- search -----------------------------------------------------------------------------
    def _searcher(self):
        if faiss_build.faiss_build().searches_on_gpu(_choice) and self.index.ntotal <= GPU_MAX_K:
            if self._gpu_index is None:
                device = rank_gpu()
                self._gpu_index = faiss.index_cpu_to_gpu(_gpu_resources(device), device, self.index)
            return self._gpu_index
        return self.index

    def search(self, queries: torch.Tensor, k: int, tasks: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """queries (B, D) raw embeddings -> (mean group cosine (B, k), global slot ids (B, k)).

        `tasks` restricts the candidates to those tasks' slots; k is at most their number.
        """
        q = group_normalize(queries.float(), self.groups).reshape(len(queries), self.dim)
        q_np = np.ascontiguousarray(q.cpu().numpy(), dtype=np.float32)
        if tasks is None:
            sims, ids = self._searcher().search(q_np, k)
        else:
            allowed = np.concatenate([self.slot_ids(t) for t in tasks]).astype(np.int64)
            sims, ids = search_allowed(self._searcher(), q_np, k, allowed)
        return sims / self.groups, ids

    def route(self, queries: torch.Tensor, k: int, weighting: str = "normalize", temperature: float = 0.1,
              tasks: list[str] | None = None, per_batch: bool = False) -> Routing:
        """Kept for callers outside the stages; `pipeline.dtkr.router.Router` is the routing path."""
        if per_batch:
            mean = group_normalize(queries.float(), self.groups).mean(0, keepdim=True)
            queries = torch.nn.functional.normalize(mean, dim=-1).reshape(1, -1).expand(len(queries), -1)
        sims, ids = self.search(queries, k, tasks)
        sims_t = torch.from_numpy(sims)
        return Routing(torch.from_numpy(ids), weights_from_similarity(sims_t, weighting, temperature))

    def slot_ids(self, task: str) -> np.ndarray:
        t = self.tasks.index(task)
        return np.arange(t * self.slots_per_task, (t + 1) * self.slots_per_task)

    def task_of(self, slot_id: int) -> str:
        return self.tasks[slot_id // self.slots_per_task]

    def all_keys(self) -> torch.Tensor:
        """(S, g, dg) normalised keys of every task, in id order (for torch brute force)."""
        vecs = np.concatenate([self._vectors[t] for t in self.tasks])
        return torch.from_numpy(vecs).reshape(-1, self.groups, self.dim // self.groups)

    # ---- persistence ------------------------------------------------------------------------
    def content_hash(self) -> str:
        h = hashlib.sha256()
        for t in self.tasks:
            h.update(t.encode())
            h.update(self._vectors[t].tobytes())
        return h.hexdigest()

    def sidecar(self) -> dict:
        return {"format": "slm-keystore-v1", "encoder": self.encoder, "dim": self.dim, "groups": self.groups,
                "slots_per_task": self.slots_per_task, "tasks": self.tasks,
                "slot_ranges": {t: [int(self.slot_ids(t)[0]), int(self.slot_ids(t)[-1]) + 1] for t in self.tasks},
                "layout": "one vector per slot: concatenated L2-normalised group keys; IP / groups = mean cosine",
                "content_sha256": self.content_hash()}

    def save(self, folder: Path) -> None:
        with atomic_path(Path(folder)) as tmp:
            tmp.mkdir()
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            (tmp / SIDECAR_FILE).write_text(json.dumps(self.sidecar(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path, encoder: str | None = None) -> KeyStore:
        folder = Path(folder)
        side_path = folder / SIDECAR_FILE
        if not side_path.is_file() or not (folder / INDEX_FILE).is_file():
            raise CheckpointError(f"no key index in {folder}: expected {INDEX_FILE} and {SIDECAR_FILE}. "
                                  "Run `slm index` first.")
        side = json.loads(side_path.read_text())
        if encoder is not None and side["encoder"] != encoder:
            raise CheckpointError(f"{side_path}: keys were made with encoder {side['encoder']!r}, this "
                                  f"experiment uses {encoder!r}; rebuild with `slm index`")
        store = cls(side["dim"], side["groups"], side["slots_per_task"], side["encoder"])
        index = faiss.read_index(str(folder / INDEX_FILE))
        flat = faiss.downcast_index(index.index)
        all_vecs = flat.reconstruct_n(0, flat.ntotal).reshape(-1, store.slots_per_task, store.dim)
        for name, vecs in zip(side["tasks"], all_vecs, strict=True):
            store._append(name, np.ascontiguousarray(vecs))
        if store.content_hash() != side["content_sha256"]:
            raise CheckpointError(f"{folder}: index content does not match its sidecar hash; rebuild with `slm index`")
        return store


def search_allowed(index, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-k among the `allowed` ids of a flat `index` (CPU or GPU): rank every stored vector,
    keep the allowed ones in rank order. (B, k) similarities and ids, as index.search returns."""
    if k > len(allowed):
        raise ValueError(f"k={k} exceeds the {len(allowed)} allowed slots")
    sims, ids = index.search(queries, index.ntotal)  # (B, S) ranked
    keep = np.isin(ids, allowed)  # every row keeps exactly len(allowed) entries
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # allowed entries first, rank preserved
    return np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)


def faiss_gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


# ---- where searches run ----------------------------------------------------------------------

_choice = "auto"  # dtkr.faiss of the stage running in this process (use_faiss)
_resources: dict[int, object] = {}  # GPU -> faiss.StandardGpuResources, one per device per process


def use_faiss(choice: str) -> faiss_build.FaissBuild:
    """Search as `dtkr.faiss=choice` says from now on in this process; refuses a build or machine
    that cannot (`gpu` without faiss-gpu or a GPU). Every stage that routes calls it first."""
    global _choice
    build = faiss_build.require(choice)
    _choice = choice
    return build


def rank_gpu() -> int:
    """This process's GPU: torch's current device, which pipeline.distributed.setup sets to LOCAL_RANK
    before any collective; without torch CUDA, LOCAL_RANK among the GPUs FAISS sees."""
    if torch.cuda.is_available():
        return torch.cuda.current_device()
    return int(os.environ.get("LOCAL_RANK", "0")) % max(1, faiss.get_num_gpus())


def _gpu_resources(device: int):
    if device not in _resources:
        resources = faiss.StandardGpuResources()
        resources.setTempMemory(FAISS_TEMP_MEMORY)  # before its first use: FAISS allocates it then
        _resources[device] = resources
    return _resources[device]


def load_store(exp: Experiment, n_tasks: int) -> KeyStore:
    """The saved index, checked (files, format, and the keys of tasks 0..n_tasks-1 as they are now)."""
    validity.require_index(exp, n_tasks)
    return KeyStore.load(exp.layout.index, encoder=exp.cfg.dtkr.encoder)
