"""The results tables of README.md and docs/*.md, rendered from bench/results/ (no number
typed by hand; scripts/docs.py writes them, tests/test_docs.py fails when one is stale).

A block is marked in a markdown file as

    <!-- cl-results: EXP -->          ... <!-- end cl-results -->          bench/cl_methods.py, experiment EXP
    <!-- published-vs-tuned: EXP -->  ... <!-- end published-vs-tuned -->  each peer at its authors' preset
                                                                          beside its swept row (EXP's results)
    <!-- methods: all -->             ... <!-- end methods -->             the method registry
    <!-- plan: CONFIG[+KEY=VALUE...] --> ... <!-- end plan -->             `slm plan` of a shipped config
                                                                          (nodes=, gpus=, gpu_mem= or overrides)
    <!-- lr-sweep: NAME -->  <!-- plasticity: NAME -->  <!-- retrieval-results: NAME -->
    <!-- jare-vs-lora: NAME -->  <!-- serve: NAME -->  <!-- plan-vs-measured: NAME -->
                                  bench/<bench>.py's results file NAME, as its `markdown` renders it

and holds exactly the table the bench's own renderer makes from its results file.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from bench.runner import RESULTS, read_result


def cl_table(experiment: str) -> str:
    from bench.cl_methods import BenchExperiment, comparison_markdown, load_results

    rows = load_results(RESULTS, experiment)
    if not rows:
        raise SystemExit(f"a table shows results of {experiment!r}, but {RESULTS}/cl_methods has none")
    return comparison_markdown(rows, BenchExperiment.read(experiment))


def published_table(experiment: str) -> str:
    """Each peer as its authors run it beside as tuned here (bench/cl_methods.py); n/a until run."""
    from bench.cl_methods import BenchExperiment, published_vs_tuned_markdown

    return published_vs_tuned_markdown(RESULTS, experiment, BenchExperiment.read(experiment))


def bench_table(bench: str) -> Callable[[str], str]:
    """The table of a results file of `bench`, as that bench script renders it (its `markdown`)."""
    def render(name: str) -> str:
        import importlib

        path = RESULTS / bench / f"{name}.json"
        if not path.is_file():
            raise SystemExit(f"a table shows {bench}'s results {name!r}, but {path} does not exist")
        return importlib.import_module(f"bench.{bench}").markdown(read_result(path),
                                                                  f"bench/results/{bench}/{name}.json")
    return render


def methods_table(_: str) -> str:
    """Every registered method: its role, what trains, what answers (pipeline/methods/)."""
    from pipeline.methods import registered

    lines = ["| method | role | trains | infers |", "|---|---|---|---|"]
    for name, m in registered().items():
        lines.append(f"| `{name}` | {m.role} | {m.trains} | {m.infers} |")
    return "\n".join(lines) + "\n"


def plan_table(spec: str) -> str:
    """`slm plan`'s table for a shipped config, from the config alone (no results file: the plan is
    computed, so the table is as current as the code). `spec`: CONFIG+nodes=N+gpus=G+KEY=VALUE..."""
    from pipeline.experiment import load_experiment
    from pipeline.planning.inference import format_finish, plan_finish
    from pipeline.planning.memory import DEFAULT_GPU_MEM_GIB, format_plan, load_of, plan_memory, recommend

    config, *rest = spec.split("+")
    resources = {k: v for k, _, v in (r.partition("=") for r in rest) if k in ("nodes", "gpus", "gpu_mem")}
    exp = load_experiment(config, [r for r in rest if r.partition("=")[0] not in resources])
    cfg = exp.cfg
    nodes = int(resources.get("nodes", cfg.slurm.train.nodes))
    gpus = int(resources.get("gpus", max(1, cfg.slurm.train.gpus_per_node)))
    gpu_mem = float(resources.get("gpu_mem", DEFAULT_GPU_MEM_GIB))
    rows = plan_memory(cfg, exp.method, nodes, gpus, gpu_mem)
    finish = format_finish(plan_finish(cfg, exp.method, cfg.slurm.finish.gpus_per_node, gpu_mem))
    return (f"`slm plan -c {config} --nodes {nodes} --gpus-per-node {gpus}"
            + "".join(f" {r}" for r in rest if r.partition("=")[0] not in resources) + "`:\n\n```\n"
            + format_plan(rows, recommend(rows), load_of(cfg, exp.method)) + f"\n{finish}\n```\n")


# A marked block's kind -> its renderer; every bench results file renders through its script's own
# `markdown(record, source)`, so a table has one home: the script that writes its file.
KINDS: dict[str, Callable[[str], str]] = {
    "cl-results": cl_table, "methods": methods_table, "plan": plan_table, "published-vs-tuned": published_table,
    **{kind: bench_table(bench) for kind, bench in [
        ("lr-sweep", "lr_sweep"), ("plasticity", "plasticity"), ("retrieval-results", "retrieval"),
        ("jare-vs-lora", "jare_vs_lora"), ("serve", "serve"), ("plan-vs-measured", "plan_vs_measured")]},
}


def blocks(text: str) -> list[tuple[str, str, str, tuple[int, int]]]:
    """(kind, name, current content, span of the content) of every marked block."""
    out = []
    for kind in KINDS:
        pattern = rf"<!-- {kind}: (\S+) -->\n(.*?)<!-- end {kind} -->"
        out += [(kind, m.group(1), m.group(2), m.span(2)) for m in re.finditer(pattern, text, flags=re.S)]
    return out


def render_file(text: str) -> str:
    """`text` with every block replaced by its table from the results files."""
    for kind, name, _, (start, end) in sorted(blocks(text), key=lambda b: -b[3][0]):
        text = text[:start] + KINDS[kind](name).strip() + "\n" + text[end:]
    return text
