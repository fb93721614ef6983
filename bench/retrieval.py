"""DTKR task retrieval vs nearest-centroid and 1-NN baselines, on real CL_Benchmark task sequences.

    python bench/retrieval.py                          # cl_benchmark: MiniLM, five sequences, seeds 42 + 43
    python bench/retrieval.py cl_benchmark-mpnet       # the same with the 768-d all-mpnet-base-v2
    python bench/retrieval.py ablation                 # the key-learning lever grid
    python bench/retrieval.py cl_benchmark dtkr.key_init=orthogonal   # a look with any experiment override

Settings: bench/experiments/retrieval/<name>.yaml (`Settings` below; a path to such a file works
too); KEY=VALUE on the command line are more overrides of the experiment it names. For every
task of a sequence: its records are built as `slm prepare` builds them
(pipeline.data.build.build_task on the experiment's TaskSpec, same caps, the source's own test
split), its query texts are `pipeline.prompts.batching.queries` (instruction + " ### " + input), and
its keys are learned by `pipeline.dtkr.keys.learn_task_keys` with the experiment's DtkrSpec,
P = methods.slm.slots_per_task, seed = experiment seed + task position, the earlier tasks' keys as
`previous_keys` (what `slm train` does). The store is built as `slm index` builds it
(KeyStore.add_task in task order) and every test query is routed by `Router` over all tasks.

Per task, on the same embeddings of its test queries:
  dtkr      top-1 task-retrieval accuracy: the task of the query's top-1 slot
  centroid  nearest centroid of each task's training queries (same grouped cosine as DTKR)
  knn       1-nearest neighbour over the first `knn_per_task` training queries of each task
  sample    the reference code's "sample accuracy": every group votes with its top-k slots
            (top_k = dtkr.top_k), the task with most of the g x k votes wins
  margin    dtkr - centroid (>= 0 is the bar: learned keys must not lose to a centroid)

Query embeddings are cached under $SLM_CACHE/retrieval-embeddings/ keyed by encoder + max
length + the texts' hash, so reruns and the ablation spend their time on keys only. Writes
bench/results/retrieval/<name>.json through bench.runner: sections `sequences` (per sequence:
rows per task, means, min margin), `retrieval_min_margin`, `same_family_min_mean` and, with more
`seeds`, `seeds`; an experiment with an `ablation` grid writes section `settings` (one entry per
grid setting) instead. The table is printed; the last line of a main run is
`retrieval_min_margin=<x> same_family_min_mean=<y>`: x = the smallest margin over every task of
every sequence, y = the smallest mean DTKR accuracy over the same-family sequences.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import Field

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/x.py` puts bench/ on sys.path

from bench import runner  # noqa: E402
from pipeline.spec import Spec  # noqa: E402

runner.preamble()
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

BENCH = "retrieval"
# The code this bench measures (its results file records the fingerprint).
MEASURED = ("bench.retrieval", "pipeline.dtkr.keys", "pipeline.dtkr.router", "pipeline.dtkr.store",
            "pipeline.dtkr.encoder", "pipeline.data.build")
DEFAULT_CAPS = (1000, 500)  # train / test records of a task the experiment does not list (as cl_benchmark.yaml)


class Settings(Spec):
    """bench/experiments/retrieval/<name>.yaml."""

    name: str
    """The file's stem: the results are bench/results/retrieval/<name>.json."""
    config: str = "cl_benchmark.yaml"
    """The experiment whose dtkr settings, methods.slm.slots_per_task, seed and task specs are used."""
    data_root: str = "../shared/data/cl_benchmark"
    """Folder of CL_Benchmark tasks (one sub-folder per task), relative to the repository."""
    overrides: list[str] = Field(default_factory=list)
    """Overrides of the experiment, as for `slm run` (dtkr.encoder=..., data.on_overlap=drop_test)."""
    sequences: dict[str, list[str] | None]
    """Sequence name -> its task folders in order; null: the experiment's own task list."""
    same_family: list[str] = Field(default_factory=list)
    """Sequences whose tasks share an instruction family: `same_family_min_mean` is taken over these."""
    max_train: int | None = Field(None, ge=1)
    """Cap on every task's training records (null: the experiment's caps, 1000 for a task it does not list)."""
    max_test: int | None = Field(None, ge=1)
    """Cap on every task's test records (null: the experiment's caps, 500 for a task it does not list)."""
    knn_per_task: int = Field(200, ge=1)
    """Training queries per task in the 1-NN baseline's bank."""
    seeds: list[int] = Field(default_factory=list)
    """More key-learning seeds: every sequence again with each (the baselines do not depend on it),
    summarised per seed, to tell a margin of a few queries from noise."""
    ablation: dict[str, dict[str, Any]] | None = None
    """Setting name -> dtkr.* changes from the experiment's: run this grid (every setting with every
    seed) instead of the main table."""


load_settings = runner.settings_loader(BENCH, Settings)


def log(msg: str) -> None:
    runner.log(msg, err=True)  # stdout carries the table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", nargs="?", default="cl_benchmark",
                   help="bench/experiments/retrieval/<name>.yaml (or a path to such a file)")
    p.add_argument("--results-dir", type=Path, default=runner.RESULTS)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="more experiment overrides, e.g. dtkr.key_init=orthogonal (recorded in run_info)")
    return p.parse_intermixed_args(argv)  # KEY=VALUE overrides may follow the flags


# ---- records and embeddings -------------------------------------------------------------------
def task_spec(cfg, name: str, settings: Settings):
    """The experiment's TaskSpec for `name`, else a CL_Benchmark folder task with the default caps;
    the settings' max_train / max_test replace the caps of either."""
    from pipeline.config import SourceSpec, TaskSpec

    spec = next((t for t in cfg.tasks if t.name == name), None)
    if spec is None:
        spec = TaskSpec(name=name, source=SourceSpec(type="cl_benchmark", path=name),
                        max_train=DEFAULT_CAPS[0], max_test=DEFAULT_CAPS[1])
    caps = {k: v for k, v in (("max_train", settings.max_train), ("max_test", settings.max_test)) if v is not None}
    return spec.model_copy(update=caps) if caps else spec


def task_records(spec, cfg) -> tuple[list[dict], list[dict], int]:
    """(train, test, test records dropped for repeating a training input), as `slm prepare`
    builds them with the same data.on_overlap (the bench defaults it to drop_test: MultiRC's
    test split repeats one training input with the other label)."""
    from pipeline.data.build import build_task

    prepared = build_task(spec, cfg)
    return prepared.train, prepared.test, prepared.overlap_dropped


class EmbeddingCache:
    """Query embeddings on disk, keyed by encoder + max length + texts; the encoder loads on a miss."""

    def __init__(self, encoder_name: str, max_length: int = 256) -> None:
        from pipeline.runtime.models import cache_dir

        self.encoder_name, self.max_length = encoder_name, max_length
        self.folder = cache_dir() / "retrieval-embeddings"
        self._encoder = None
        self.hits = self.misses = 0

    def key(self, texts: list[str]) -> str:
        h = hashlib.sha256(f"{self.encoder_name}\n{self.max_length}\n{len(texts)}\n".encode())
        for text in texts:
            h.update(hashlib.sha256(text.encode()).digest())
        return h.hexdigest()[:32]

    def embed(self, texts: list[str]) -> torch.Tensor:
        from safetensors.torch import load_file, save_file

        from pipeline.state.artifacts import atomic_path

        path = self.folder / f"{self.key(texts)}.safetensors"
        if path.is_file():
            self.hits += 1
            return load_file(path)["embeddings"]
        self.misses += 1
        emb = self.encoder().encode(texts).contiguous()
        with atomic_path(path) as tmp:
            save_file({"embeddings": emb}, str(tmp), metadata={"encoder": self.encoder_name, "n": str(len(texts))})
        return emb

    def encoder(self):
        if self._encoder is None:
            from pipeline.dtkr.encoder import SentenceEncoder

            log(f"loading encoder {self.encoder_name}")
            self._encoder = SentenceEncoder(self.encoder_name, max_length=self.max_length)
        return self._encoder


def task_embeddings(cfg, names: list[str], cache: EmbeddingCache, settings: Settings) -> dict[str, dict]:
    """name -> {train (N, D), test (M, D), dropped}: each task's query embeddings."""
    from pipeline.prompts.batching import queries

    out = {}
    for name in names:
        t0 = time.perf_counter()
        train, test, dropped = task_records(task_spec(cfg, name, settings), cfg)
        out[name] = {"train": cache.embed(queries(train)), "test": cache.embed(queries(test)), "dropped": dropped}
        log(f"{name}: {len(train)} train / {len(test)} test queries ({time.perf_counter() - t0:.0f} s)")
    return out


# ---- retrieval and baselines ------------------------------------------------------------------
# DtkrSpec fields that only change how a query is routed, never the keys a task learns
ROUTING_ONLY = ("top_k", "weighting", "temperature", "retrieval", "task_score", "task_temperature")
_learned_keys: dict[tuple, torch.Tensor] = {}  # one process: a task's keys, learned once per setting


def learn_sequence_keys(names: list[str], emb: dict[str, dict], dtkr, slots: int, seed: int) -> list:
    """[(task, keys)] learned in task order, as `slm train` does, each seeing earlier keys only.

    learn_task_keys is deterministic, so a task's keys are reused when the same task, position,
    seed, key settings (and, with the centrifugal term on, the same earlier keys) come again: a
    sequence that starts like another, or ablation rows that differ only in routing.
    """
    from pipeline.dtkr.keys import learn_task_keys

    settings = tuple(sorted(dtkr.model_dump(exclude=set(ROUTING_ONLY)).items()))
    learned: list[tuple[str, torch.Tensor]] = []
    for t, name in enumerate(names):
        previous = torch.cat([k for _, k in learned]) if learned else None
        uses_previous = previous is not None and dtkr.centrifugal_weight > 0
        memo = (name, t, seed, slots, settings,
                hashlib.sha256(previous.numpy().tobytes()).hexdigest() if uses_previous else None)
        if memo not in _learned_keys:
            _learned_keys[memo] = learn_task_keys(emb[name]["train"], dtkr, slots, seed + t, previous)[0]
        learned.append((name, _learned_keys[memo]))
    return learned


def dtkr_predictions(learned: list, test: torch.Tensor, dtkr, slots: int) -> torch.Tensor:
    from pipeline.dtkr.router import Router

    router = Router.from_keys(learned, None, dtkr, slots)
    return torch.tensor(router.top1_tasks(router.route_embeddings(test)))


def sample_predictions(learned: list, test: torch.Tensor, dtkr, slots: int) -> torch.Tensor:
    """The reference's sample accuracy: each group's top-k slots vote for their task."""
    from pipeline.dtkr.keys import group_normalize

    keys = torch.cat([k for _, k in learned])  # (S, g, dg)
    q = group_normalize(test.float(), dtkr.groups)  # (B, g, dg)
    sims = torch.einsum("bgd,sgd->bgs", q, keys)
    top = sims.topk(min(dtkr.top_k, len(keys)), dim=-1)  # (B, g, k)
    picks = (top.indices // slots).flatten(1)  # the task of every pick
    votes = torch.zeros(len(q), len(learned)).scatter_add_(1, picks, torch.ones(picks.shape))  # (B, T)
    # a tie goes to the task whose votes have the larger summed similarity
    tie_break = torch.zeros_like(votes).scatter_add_(1, picks, top.values.flatten(1))
    return (votes + 1e-3 * tie_break / picks.shape[1]).argmax(1)


def centroid_predictions(names: list[str], emb: dict[str, dict], test: torch.Tensor, groups: int) -> torch.Tensor:
    from pipeline.dtkr.keys import group_normalize, similarity

    cents = torch.stack([torch.nn.functional.normalize(group_normalize(emb[n]["train"].float(), groups).mean(0), dim=-1)
                         for n in names])  # (T, g, dg)
    return similarity(group_normalize(test.float(), groups), cents).argmax(1)


def knn_predictions(names: list[str], emb: dict[str, dict], test: torch.Tensor, groups: int,
                    per_task: int) -> torch.Tensor:
    from pipeline.dtkr.keys import group_normalize, similarity

    bank = [group_normalize(emb[n]["train"][:per_task].float(), groups) for n in names]
    owner = torch.cat([torch.full((len(b),), t) for t, b in enumerate(bank)])
    return owner[similarity(group_normalize(test.float(), groups), torch.cat(bank)).argmax(1)]


def evaluate_sequence(names: list[str], emb: dict[str, dict], dtkr, slots: int, seed: int,
                      knn_per_task: int) -> dict:
    learned = learn_sequence_keys(names, emb, dtkr, slots, seed)
    test = torch.cat([emb[n]["test"] for n in names])
    truth = torch.cat([torch.full((len(emb[n]["test"]),), t) for t, n in enumerate(names)])
    preds = {"dtkr": dtkr_predictions(learned, test, dtkr, slots),
             "centroid": centroid_predictions(names, emb, test, dtkr.groups),
             "knn": knn_predictions(names, emb, test, dtkr.groups, knn_per_task),
             "sample": sample_predictions(learned, test, dtkr, slots)}
    rows = []
    for t, name in enumerate(names):
        own = truth == t
        row = {"task": name, "n_test": int(own.sum()), "test_dropped": emb[name]["dropped"]}
        row.update({m: float((p[own] == t).float().mean()) for m, p in preds.items()})
        row["margin"] = row["dtkr"] - row["centroid"]
        row["confused_with"] = {names[j]: int(((preds["dtkr"] == j) & own).sum())
                                for j in range(len(names)) if j != t and ((preds["dtkr"] == j) & own).any()}
        rows.append(row)
    return {"tasks": names, "rows": rows, "mean": {m: sum(r[m] for r in rows) / len(rows) for m in preds},
            "min_margin": min(r["margin"] for r in rows)}


# ---- driver -----------------------------------------------------------------------------------
def sequences_to_run(settings: Settings, cfg) -> dict[str, list[str]]:
    return {name: list(tasks) if tasks else [t.name for t in cfg.tasks] for name, tasks in settings.sequences.items()}


def summary(results: dict[str, dict], same_family: list[str]) -> dict[str, float | None]:
    family = [results[s]["mean"]["dtkr"] for s in same_family if s in results]
    return {"retrieval_min_margin": min(r["min_margin"] for r in results.values()),
            "same_family_min_mean": min(family) if family else None}


def run_all(seqs: dict[str, list[str]], emb: dict, dtkr, slots: int, seed: int, knn: int) -> dict[str, dict]:
    return {name: evaluate_sequence(names, emb, dtkr, slots, seed, knn) for name, names in seqs.items()}


def seed_summary(results: dict[str, dict], same_family: list[str]) -> dict:
    """One seed's headline numbers, DTKR accuracy per task, and every task below the centroid."""
    return {**summary(results, same_family),
            "dtkr": {s: {row["task"]: row["dtkr"] for row in r["rows"]} for s, r in results.items()},
            "below_centroid": [[s, row["task"], row["margin"]] for s, r in results.items()
                               for row in r["rows"] if row["margin"] < 0]}


def run_seeds(seqs: dict[str, list[str]], emb: dict, dtkr, cfg, slots: int, settings: Settings,
              first: dict[str, dict]) -> dict[str, dict]:
    """seed -> seed_summary, for the experiment's seed (`first`, already run) and every extra seed,
    plus the worst case over them."""
    out = {str(cfg.seed): seed_summary(first, settings.same_family)}
    for seed in extra_seeds(settings, cfg):
        results = run_all(seqs, emb, dtkr, slots, seed, settings.knn_per_task)
        out[str(seed)] = seed_summary(results, settings.same_family)
    family = [v["same_family_min_mean"] for v in out.values() if v["same_family_min_mean"] is not None]
    worst = {"retrieval_min_margin": min(v["retrieval_min_margin"] for v in out.values()),
             "same_family_min_mean": min(family) if family else None}
    return {"per_seed": out, "worst": worst}


def extra_seeds(settings: Settings, cfg) -> list[int]:
    return [s for s in dict.fromkeys(settings.seeds) if s != cfg.seed]


def markdown(result: dict, source: str) -> str:
    """The README's table of a main run: per sequence, mean top-1 retrieval accuracy of DTKR and
    the baselines, and its worst task against the centroid baseline."""
    lines = ["| sequence | tasks | DTKR | centroid | 1-NN | per-sample centroid | worst task vs centroid |",
             "|---|---|---|---|---|---|---|"]
    for seq, r in result["sequences"].items():
        m = r["mean"]
        worst = min(r["rows"], key=lambda row: row["margin"])
        lines.append(f"| {seq} | {', '.join(row['task'] for row in r['rows'])} | {m['dtkr']:.3f} | "
                     f"{m['centroid']:.3f} | {m['knn']:.3f} | {m['sample']:.3f} | "
                     f"{worst['task']} {worst['margin']:+.3f} |")
    seeds = result.get("seeds")
    note = (f"; worst over seeds {', '.join(seeds['per_seed'])}: min margin "
            f"{seeds['worst']['retrieval_min_margin']:+.3f}, same-family min mean "
            f"{_fmt(seeds['worst']['same_family_min_mean'])}") if seeds else ""
    return "\n".join(lines) + (f"\n\nencoder {result['run_info']['dtkr']['encoder']}; "
                               f"min margin {result['retrieval_min_margin']:+.3f}, same-family min mean "
                               f"{_fmt(result['same_family_min_mean'])}{note}; from {source}\n")


def print_table(results: dict[str, dict]) -> None:
    print(f"{'sequence':<13} {'task':<9} {'n':>4} {'dtkr':>6} {'centroid':>8} {'1-NN':>6} {'sample':>6} {'margin':>7}")
    for seq, res in results.items():
        for r in res["rows"]:
            flag = "  <-- below centroid" if r["margin"] < 0 else ""
            print(f"{seq:<13} {r['task']:<9} {r['n_test']:>4} {r['dtkr']:>6.3f} {r['centroid']:>8.3f} {r['knn']:>6.3f} "
                  f"{r['sample']:>6.3f} {r['margin']:>+7.3f}{flag}")
        m = res["mean"]
        print(f"{seq:<13} {'mean':<9} {'':>4} {m['dtkr']:>6.3f} {m['centroid']:>8.3f} {m['knn']:>6.3f} "
              f"{m['sample']:>6.3f}")


def print_seeds(seeds: dict) -> None:
    for seed, v in seeds["per_seed"].items():
        below = ", ".join(f"{s}/{t} {m:+.3f}" for s, t, m in v["below_centroid"]) or "none"
        print(f"seed {seed}: min_margin={v['retrieval_min_margin']:+.3f} "
              f"same_family_min_mean={_fmt(v['same_family_min_mean'])}  below centroid: {below}")
    w = seeds["worst"]
    print(f"worst over seeds: min_margin={w['retrieval_min_margin']:+.3f} "
          f"same_family_min_mean={_fmt(w['same_family_min_mean'])}")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def main_table(seqs: dict[str, list[str]], emb: dict, cfg, slots: int, settings: Settings) -> dict[str, Any]:
    """The sections of a main run: every sequence at the experiment's seed, then the extra seeds."""
    results = run_all(seqs, emb, cfg.dtkr, slots, cfg.seed, settings.knn_per_task)
    print_table(results)
    sections: dict[str, Any] = {"sequences": results, **summary(results, settings.same_family)}
    if extra_seeds(settings, cfg):
        sections["seeds"] = run_seeds(seqs, emb, cfg.dtkr, cfg, slots, settings, results)
        print_seeds(sections["seeds"])
    return sections


def ablation(seqs: dict[str, list[str]], emb: dict, cfg, slots: int, settings: Settings) -> dict[str, dict]:
    """setting -> its summary and per-sequence DTKR / centroid accuracy, for every grid setting."""
    from pipeline.config import DtkrSpec

    out = {}
    for setting, changes in (settings.ablation or {}).items():
        dtkr = DtkrSpec.model_validate({**cfg.dtkr.model_dump(), **changes})
        t0 = time.perf_counter()
        res = run_all(seqs, emb, dtkr, slots, cfg.seed, settings.knn_per_task)
        out[setting] = {"dtkr_changes": changes, **summary(res, settings.same_family),
                        "sequences": {s: {"mean": r["mean"], "min_margin": r["min_margin"],
                                          "dtkr": {row["task"]: row["dtkr"] for row in r["rows"]},
                                          "centroid": {row["task"]: row["centroid"] for row in r["rows"]}}
                                      for s, r in res.items()}}
        cells = " ".join(f"{s}={r['mean']['dtkr']:.3f}" for s, r in res.items())
        if extra_seeds(settings, cfg):
            out[setting]["seeds"] = run_seeds(seqs, emb, dtkr, cfg, slots, settings, res)
            worst = out[setting]["seeds"]["worst"]
            cells += (f" | over seeds: min_margin={worst['retrieval_min_margin']:+.3f} "
                      f"same_family_min_mean={_fmt(worst['same_family_min_mean'])}")
        out[setting]["seconds"] = time.perf_counter() - t0
        log(f"{setting:<22} min_margin={out[setting]['retrieval_min_margin']:+.3f} {cells}")
    return out


def retrieval_run_info(settings: Settings, overrides: list[str], data_root: Path, cfg, slots: int,
                       seqs: dict[str, list[str]], t_start: float, cache: EmbeddingCache) -> dict:
    """bench.runner's run_info plus what this run was: the settings, the experiment as resolved and
    its hash (dtkr, data, P, seeds and every task spec: what the numbers depend on), the cache."""
    from pipeline.state.artifacts import sha256_json

    hashed = {"dtkr": cfg.dtkr.model_dump(mode="json"), "data": cfg.data.model_dump(mode="json"),
              "slots_per_task": slots, "seed": cfg.seed, "seeds": [cfg.seed, *extra_seeds(settings, cfg)],
              "tasks": {n: task_spec(cfg, n, settings).model_dump(mode="json")
                        for names in seqs.values() for n in names}}
    return {**runner.run_info(), "code_fingerprint": runner.fingerprint(MEASURED)["sha256"],
            "name": settings.name, "settings": settings.model_dump(mode="json"),
            "overrides": overrides, "config": settings.config, "config_hash": sha256_json(hashed),
            "data_root": str(data_root), "dtkr": hashed["dtkr"], "data": hashed["data"],
            "slots_per_task": hashed["slots_per_task"], "seed": cfg.seed, "seeds": hashed["seeds"],
            "knn_per_task": settings.knn_per_task,
            "embedding_cache": {"hits": cache.hits, "misses": cache.misses}, "wall_s": time.perf_counter() - t_start}


def main(argv: list[str] | None = None) -> dict:
    """Run the experiment; its results record (as written)."""
    from pipeline.experiment import load_experiment

    args = parse_args(argv)
    settings = load_settings(args.experiment)
    t_start = time.perf_counter()
    data_root = (runner.ROOT / settings.data_root).resolve()
    overrides = [*settings.overrides, *args.overrides]
    exp = load_experiment(settings.config, [f"data_root={data_root}", *overrides])
    cfg, slots = exp.cfg, exp.method.key_slots(exp.cfg)  # P: the DTKR keys per task
    seqs = sequences_to_run(settings, cfg)
    log(f"load average {os.getloadavg()[0]:.1f} on {len(os.sched_getaffinity(0))} cores; encoder {cfg.dtkr.encoder}")
    cache = EmbeddingCache(cfg.dtkr.encoder)
    emb = task_embeddings(cfg, list(dict.fromkeys(n for names in seqs.values() for n in names)), cache, settings)
    if settings.ablation is not None:
        sections = {"settings": ablation(seqs, emb, cfg, slots, settings)}
    else:
        sections = main_table(seqs, emb, cfg, slots, settings)
    info = retrieval_run_info(settings, overrides, data_root, cfg, slots, seqs, t_start, cache)
    path = runner.write_result(BENCH, settings.name, sections, info, runner.meta_info(), results=args.results_dir)
    log(f"wrote {path} ({info['wall_s']:.0f} s)")
    if settings.ablation is None:
        print(f"retrieval_min_margin={sections['retrieval_min_margin']:.3f} "
              f"same_family_min_mean={_fmt(sections['same_family_min_mean'])}")
    return {"run_info": info, **sections}


if __name__ == "__main__":
    main()
