"""Render the experiment as three Slurm jobs: prepare -> train (one array task per task) -> finish.

Pure functions: the same config, layout and interpreter always give the same text, which the
golden files in tests/slurm/golden pin. The templates live in pipeline/slurm_templates/ (`slurm/` at
the top of the repository links there); their placeholders are `{{name}}`, so the shell's own
`$VAR` needs no escaping. Every `#SBATCH` value and every path in the body is shell-quoted, so
an output_dir with spaces, quotes or `;` survives both sbatch and bash.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import ExperimentConfig, SlurmStageSpec
from pipeline.errors import ConfigError
from pipeline.state.artifacts import DONE
from pipeline.state.layout import RunLayout
from pipeline.state.preemption import (
    EXIT_PREEMPTED,
    EXIT_PREVIOUS_NOT_DONE,
    EXIT_TERMINATED,
    PREEMPT_SIGNAL_NAME,
    requeue_deadline,
)

TEMPLATES = Path(__file__).resolve().parent / "slurm_templates"
JOB_KINDS: tuple[str, ...] = ("prepare", "train", "finish")  # submission order; each waits for the one before
DESCRIPTIONS = {
    "prepare": "prepare: every task's data, once (shared by all methods in output_dir)",
    "train": "train: one array task per task of the sequence, strictly in order, requeued on preemption",
    "finish": "finish: index, eval after every task (and untrained), report",
}
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_JOB_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


# ---- paths ------------------------------------------------------------------------------------


def script_dir(layout: RunLayout) -> Path:
    """Scripts, the resolved config and jobs.json: one folder per method, so methods sharing an
    output_dir can be submitted side by side."""
    return layout.base / "slurm" / layout.method


def script_path(layout: RunLayout, kind: str) -> Path:
    return script_dir(layout) / f"{kind}.sbatch"


def config_path(layout: RunLayout) -> Path:
    return script_dir(layout) / "config.yaml"


def job_name(cfg: ExperimentConfig, kind: str, run: str = "") -> str:
    """<experiment>[-<run>]-<method>-<kind>: the chains of two task orders differ in squeue."""
    # The name is part of every log file name: keep it to characters that need no quoting.
    return _JOB_NAME_UNSAFE.sub("_", "-".join(p for p in (cfg.name, run, cfg.method, kind) if p))


def log_pattern(layout: RunLayout, kind: str, suffix: str) -> str:
    """Slurm's --output/--error pattern: one file per job, and per task of the array job."""
    folder = str(layout.logs).replace("%", "%%")  # a literal % in a Slurm file name is %%
    return f"{folder}/%x-%A_%a.{suffix}" if kind == "train" else f"{folder}/%x-%j.{suffix}"


def log_file(layout: RunLayout, name: str, job_id: str, task: int | None = None, suffix: str = "out") -> Path:
    """The concrete file `log_pattern` gives job `job_id` (array task `task`) named `name`."""
    return layout.logs / (f"{name}-{job_id}_{task}.{suffix}" if task is not None else f"{name}-{job_id}.{suffix}")


# ---- the resolved config the jobs read ------------------------------------------------------------


def resolved_config_yaml(cfg: ExperimentConfig, layout: RunLayout) -> str:
    """The experiment with every override applied and every file path absolute.

    The jobs load this copy from script_dir, not the user's YAML: overrides given to `slm
    submit` carry through, later edits of the YAML cannot change a queued run, and paths that
    were relative to the YAML's folder still point at the same files.
    """
    raw: dict[str, Any] = cfg.model_dump(mode="json")
    raw["output_dir"] = str(layout.base)
    if cfg.data_root:
        raw["data_root"] = str(Path(cfg.data_root).expanduser().resolve())
    for task, spec in zip(raw["tasks"], cfg.tasks, strict=True):
        if spec.source.path and spec.source.type != "hub":
            task["source"]["path"] = str(cfg.resolve_source_path(spec.source.path))
    if "/" in cfg.train.deepspeed or cfg.train.deepspeed.endswith(".json"):
        raw["train"]["deepspeed"] = str(cfg.deepspeed_config_path())
    return yaml.safe_dump(raw, sort_keys=False)


# ---- rendering ------------------------------------------------------------------------------------


def fill(template: str, values: Mapping[str, str]) -> str:
    """Replace every `{{name}}`; a placeholder without a value is an error, not an empty string."""
    missing = sorted(set(_PLACEHOLDER.findall(template)) - set(values))
    if missing:
        raise KeyError(f"slurm template placeholders without a value: {missing}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def sbatch_flag(key: str, value: object) -> str:
    text = str(value)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        # The config refuses these in slurm values; output_dir and the name also reach #SBATCH lines,
        # where a newline would end the line and the shell would run the rest.
        raise ConfigError(f"the Slurm option --{key} would hold a control character ({text!r}); "
                          f"remove newlines and tabs from output_dir / name / slurm values")
    return f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={shlex.quote(text)}"


def sbatch_options(cfg: ExperimentConfig, layout: RunLayout, kind: str, run: str = "",
                   first: int = 0) -> dict[str, object]:
    """Every #SBATCH option of job `kind`; site options only when the config sets them. The train
    array runs tasks `first`..T-1 (the tasks before it are DONE: a sequence that grew)."""
    stage: SlurmStageSpec = getattr(cfg.slurm, kind)
    opts: dict[str, object] = {
        "job-name": job_name(cfg, kind, run),
        "output": log_pattern(layout, kind, "out"),
        "error": log_pattern(layout, kind, "err"),
        "open-mode": "append",  # a requeued task appends to its log, so both runs stay readable
        "nodes": stage.nodes,
        "ntasks-per-node": 1,  # one launcher per node; torchrun starts the per-GPU processes
        "cpus-per-task": stage.cpus_per_task,
        "mem": stage.mem,
        "time": stage.time,
    }
    if stage.gpus_per_node:
        opts["gpus-per-node"] = stage.gpus_per_node
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(cfg.slurm, key):
            opts[key] = getattr(cfg.slurm, key)
    if kind != "prepare":
        opts["kill-on-invalid-dep"] = "yes"  # cancel, rather than pend forever, after a failure
    if kind == "train":
        opts["array"] = f"{first}-{len(cfg.tasks) - 1}%1"
    if kind != "prepare":  # training and the finish job (12 eval rows can outlast a limit) resume after a requeue
        opts["requeue"] = True
        opts["signal"] = f"B:{PREEMPT_SIGNAL_NAME}@{cfg.slurm.signal_seconds}"
    return opts


def _extra_sbatch(lines: list[str]) -> list[str]:
    # The config allows both "#SBATCH --x=y" and "--x=y"; user order is kept (a later option wins).
    return [line if line.lstrip().startswith("#SBATCH") else f"#SBATCH {line.strip()}" for line in lines]


# Expansions, globs, redirections, command lists: a line with these is left to the shell as written.
_SHELL_SYNTAX = re.compile(r"[;&|<>`$(){}*?\[\]!#]")


def resolve_setup(lines: list[str], cwd: Path) -> list[str]:
    """`slurm.setup` with the file of each `source FILE` / `. FILE` line made absolute.

    A job runs its setup in whatever folder it starts in, so `source .venv/bin/activate` would
    depend on where `sbatch` was run. `slm submit` resolves such a relative FILE from the folder
    it runs in (`cwd`, where the user's shell would find it too) and writes the absolute path
    into the scripts; a FILE that is not there is an error now rather than on the cluster. Lines
    with other commands, `$VAR`s or shell syntax are kept as written.
    """
    resolved = []
    for i, line in enumerate(lines):
        words = [] if _SHELL_SYNTAX.search(line) else _split(line)
        if len(words) >= 2 and words[0] in ("source", ".") and not Path(words[1]).expanduser().is_absolute():
            # abspath, not resolve(): a venv reached through a symlink keeps the path the user gave
            absolute = Path(os.path.abspath(cwd / Path(words[1]).expanduser()))
            if not absolute.is_file():
                raise ConfigError(
                    f"slurm.setup entry {i} `{line}`: {absolute} does not exist (a relative path in slurm.setup "
                    f"is resolved from the folder `slm submit` runs in, {cwd})",
                    hint=f"run `slm submit` from the folder that holds {words[1]}, or write an absolute path: "
                         f"slurm.setup='[\"source /path/to/venv/bin/activate\"]'")
            line = shlex.join([words[0], str(absolute), *words[2:]])
        resolved.append(line)
    return resolved


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:  # unbalanced quotes: the shell will say so in the job's log
        return []


def with_resolved_setup(cfg: ExperimentConfig, cwd: Path) -> ExperimentConfig:
    """`cfg` with `slurm.setup` resolved (`resolve_setup`): what the scripts and config.yaml hold."""
    setup = resolve_setup(cfg.slurm.setup, cwd)
    return cfg.model_copy(update={"slurm": cfg.slurm.model_copy(update={"setup": setup})})


def _setup_block(lines: list[str]) -> str:
    if not lines:
        return ""
    # Module and conda scripts often read unset variables: `set -u` is off while they run.
    return "\n".join(["", "# slurm.setup", "set +u", *lines, "set -u", ""])


def render_header(cfg: ExperimentConfig, layout: RunLayout, kind: str, python: str, run: str = "",
                  first: int = 0) -> str:
    flags = [sbatch_flag(k, v) for k, v in sorted(sbatch_options(cfg, layout, kind, run, first).items())]
    return fill(read_template("header"), {
        "sbatch_flags": "\n".join(flags + _extra_sbatch(cfg.slurm.extra_sbatch)),
        "description": DESCRIPTIONS[kind],
        "kind": kind,
        "python": shlex.quote(python),
        "config": shlex.quote(str(config_path(layout))),
        "setup": _setup_block(cfg.slurm.setup),
    })


def _body_values(cfg: ExperimentConfig, layout: RunLayout) -> dict[str, str]:
    done = [layout.task_dir(i, t.name) / DONE for i, t in enumerate(cfg.tasks)]
    gpus = cfg.slurm.train.gpus_per_node
    return {
        "data_dir": shlex.quote(str(layout.data)),
        "last": str(len(cfg.tasks) - 1),
        "done_markers": " ".join(shlex.quote(str(p)) for p in done),
        "exit_preempted": str(EXIT_PREEMPTED),
        "exit_previous_not_done": str(EXIT_PREVIOUS_NOT_DONE),
        "exit_terminated": str(EXIT_TERMINATED),
        "signal": PREEMPT_SIGNAL_NAME,
        "signal_seconds": str(cfg.slurm.signal_seconds),
        "requeue_after": str(requeue_deadline(cfg.slurm.signal_seconds)),
        "nproc": str(gpus or 1),  # one process per GPU; one on a CPU node
        "rows": " ".join(str(i) for i in range(-1, len(cfg.tasks))),
        "report": shlex.quote(str(layout.eval / "report.md")),
    }


def read_template(name: str) -> str:
    return (TEMPLATES / f"{name}.sbatch").read_text()


def render_sbatch(cfg: ExperimentConfig, layout: RunLayout, kind: str, python: str, run: str = "",
                  first: int = 0) -> str:
    """The job script of `kind` (prepare, train or finish) of one run (`run`: its task order, or ""
    for an experiment of one order). `python` runs `-m pipeline.cli`; the train array starts at
    task `first`."""
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown job kind {kind!r}; one of {JOB_KINDS}")
    header = render_header(cfg, layout, kind, python, run, first).rstrip("\n")
    return fill(read_template(kind), {"header": header, **_body_values(cfg, layout)})


def chain_kinds(first: int, n_tasks: int) -> tuple[str, ...]:
    """The jobs a submission needs when tasks 0..first-1 are DONE: all three for a new run; for a
    sequence that grew, the train array over the new tasks (each prepares what it reads) and the
    finish job; only the finish job once every task is trained."""
    if first == 0:
        return JOB_KINDS
    return ("train", "finish") if first < n_tasks else ("finish",)


def render_all(cfg: ExperimentConfig, layout: RunLayout, python: str, run: str = "", first: int = 0) -> dict[str, str]:
    return {kind: render_sbatch(cfg, layout, kind, python, run, first)
            for kind in chain_kinds(first, len(cfg.tasks))}


# ---- submission commands ----------------------------------------------------------------------------


def sbatch_argv(script: Path, after: str | None = None) -> list[str]:
    """`sbatch --parsable` prints just the job id; `after` makes the job wait for that job's success."""
    argv = ["sbatch", "--parsable"]
    if after:
        argv.append(f"--dependency=afterok:{after}")
    return [*argv, str(script)]


def sbatch_commands(layout: RunLayout, kinds: tuple[str, ...] = JOB_KINDS) -> list[str]:
    """The shell lines that submit the jobs `kinds`, each waiting for the one before."""
    lines, previous = [], None
    for kind in kinds:
        var = f"{kind.upper()}_JOB"
        argv = sbatch_argv(script_path(layout, kind), f"${previous}" if previous else None)
        # Quote every word but the "$PREVIOUS_JOB" reference, which the shell must expand.
        words = [w if w.startswith("--dependency") else shlex.quote(w) for w in argv]
        lines.append(f"{var}=$({' '.join(words)})")
        previous = var
    return lines


# ---- the rendezvous port of a multi-node job ---------------------------------------------------------

MASTER_PORT_LOW = 10000  # below it: well-known and registered services more often than not
LINUX_EPHEMERAL = (32768, 60999)  # the kernel's default net.ipv4.ip_local_port_range


def ephemeral_ports() -> tuple[int, int]:
    """The range the kernel takes local ports of outgoing connections from (this node's setting)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return LINUX_EPHEMERAL
    return low, high


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def master_port(job_id: int, ephemeral: tuple[int, int] | None = None,
                is_free: Callable[[int], bool] = port_is_free) -> int:
    """torchrun's rendezvous port for job `job_id`, as train.sbatch picks it on the master node.

    Outside the ephemeral range: any client socket (NCCL's, the file system's, another job's) may
    hold a port of that range at any moment, so a port drawn there can be taken. Derived from the
    job id, so two jobs on one node start apart, then the first free one from there (a port another
    job's rendezvous listens on is skipped).
    """
    low, high = ephemeral or ephemeral_ports()
    first, last = (MASTER_PORT_LOW, low - 1) if low - 1 > MASTER_PORT_LOW else (high + 1, 65535)
    span = last - first + 1
    for i in range(span):
        port = first + (job_id + i) % span
        if is_free(port):
            return port
    raise OSError(f"no free port in {first}-{last} for the rendezvous of job {job_id}")


def _main(argv: list[str]) -> int:
    """`python -m pipeline.slurm master-port JOB_ID`: what train.sbatch runs to pick MASTER_PORT."""
    if len(argv) != 2 or argv[0] != "master-port" or not argv[1].isdigit():
        print("usage: python -m pipeline.slurm master-port JOB_ID", file=sys.stderr)
        return 2
    print(master_port(int(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
