"""`slm`: a thin CLI over the stages. Each subcommand maps to `pipeline.stages.<name>.main`.

Only the chosen stage's module is imported, so `slm --help` and `slm prepare --help` stay
fast and never import torch or DeepSpeed.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys

from pipeline.methods import METHOD_NAMES

EXIT_USER_ERROR = 2  # the config, data, paths or another writer: the message says what to do
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it
DEBUG_HELP = "on an error, show the full traceback (also: SLM_DEBUG=1)"
RESTART_HELP = ("train unfinished tasks from step 0: discard their train_state (checkpoints, cached keys) and any "
                "DONE that no longer matches the config, data or earlier tasks (without it: refused; a valid "
                "DONE is always kept)")
CHECK_HELP = ("only check, offline, that this stage can run with the config (exit 2 naming what would stop it) "
              "and whether its output is current (exit 0) or it would run (exit 1)")

EPILOG = """\
overrides: any config key as dotted KEY=VALUE after the options, parsed as YAML, e.g.
  slm run train.max_steps=10 tasks.0.max_train=64 output_dir=runs/quick
  slm prepare -c cl_benchmark.yaml data_root=../shared/data/cl_benchmark
without -c, the embedded default experiment (pipeline/configs/default.yaml) is used;
a bare file name such as `cl_benchmark.yaml` names a shipped config.
"""

# command -> one-line help; the module is pipeline.stages.<command> unless renamed here
# command -> the module whose `main(cfg, layout, args)` runs it (imported only when chosen): a
# stage of the pipeline, or the command of its own package (plan, serve).
MODULES = {"eval": "pipeline.stages.evaluate", "plan": "pipeline.planning.command", "serve": "pipeline.serve.command"}
COMMANDS: dict[str, str] = {
    "prepare": "data sources -> unified {task, instruction, input, output} datasets on disk",
    "train": "learn task i's DTKR keys, then its JARe slot values, under DeepSpeed",
    "index": "build the FAISS index over the keys of every finished task",
    "eval": "score every task after task i (retrieval, no task id): row i of the accuracy matrix",
    "report": "metrics (AA, BWT, forgetting, FWT), plots and report.md from the matrix",
    "run": "prepare, then train/index/eval each task in order, then report, skipping finished work",
    "generate": "answer a prompt with retrieval; shows which tasks and slots were used",
    "serve": "OpenAI-compatible HTTP API: any method; retrieval per request, continuous batching, new tasks live",
    "export": "finished tasks as PEFT LoRA folders (vLLM --lora-modules), or merged models with --merged",
    "submit": "render the stages as Slurm jobs (prepare -> array over tasks -> finish) and submit",
    "status": "which tasks are done, running, pending or failed, with Slurm job ids",
    "plan": "per-GPU memory plan for the experiment's model and tasks, from the config alone",
}


def _common(p: argparse.ArgumentParser, overrides: bool = True) -> None:
    p.add_argument("-c", "--config", metavar="YAML",
                   help="experiment file (default: the embedded default experiment)")
    # SUPPRESS: when absent here, `slm --debug COMMAND` (the top-level flag) still counts.
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    p.add_argument("--method", choices=METHOD_NAMES,
                   help="override `method:`; each method writes its own output_dir/<method>")
    p.add_argument("--order", metavar="NAME",
                   help="one run of an experiment with `orders:`/`seeds:` (run and report do all by default)")
    if overrides:
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slm", description="SLM continual learning (JARe + DTKR) for LLaMA models.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--version", action="version", version=f"slm {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    ps = {name: sub.add_parser(name, help=h, description=h, epilog=EPILOG,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
          for name, h in COMMANDS.items()}

    _common(ps["prepare"])
    ps["prepare"].add_argument("--force", action="store_true", help="rebuild even if data is DONE")
    ps["prepare"].add_argument("--list-synthetic", action="store_true",
                               help="list the built-in synthetic task generators and exit")
    ps["prepare"].add_argument("--check", action="store_true", help=CHECK_HELP)

    _common(ps["train"])
    ps["train"].add_argument("--task", type=int, default=None, metavar="I",
                             help="0-based task index (default: $SLURM_ARRAY_TASK_ID)")
    ps["train"].add_argument("--restart", action="store_true", help=RESTART_HELP)
    ps["train"].add_argument("--check", action="store_true",
                             help="only check that task I is DONE and matches the current config, data and earlier "
                                  "tasks: exit 0 if so, 1 if it has not finished, 2 naming what changed")

    _common(ps["index"])
    ps["index"].add_argument("--check", action="store_true", help=CHECK_HELP)

    _common(ps["eval"])
    ps["eval"].add_argument("--after", type=int, default=None, metavar="I",
                            help="row of the matrix: scores after training task I; -1 = untrained model "
                                 "(default: the last finished task)")
    ps["eval"].add_argument("--check", action="store_true", help=CHECK_HELP)

    _common(ps["report"])
    ps["report"].add_argument("--check", action="store_true", help=CHECK_HELP)

    _common(ps["run"])
    ps["run"].add_argument("--restart", action="store_true", help=RESTART_HELP)

    _common(ps["generate"], overrides=False)
    ps["generate"].add_argument("prompt", help="the instruction / question to answer (before any KEY=VALUE)")
    ps["generate"].add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    ps["generate"].add_argument("--input", default="", help="optional input text for the instruction")
    ps["generate"].add_argument("--max-new-tokens", type=int, default=64)
    ps["generate"].add_argument("--set", dest="set_overrides", action="append", default=[], metavar="KEY=VALUE",
                                help="config override, the same as a KEY=VALUE argument (repeatable)")

    _common(ps["serve"])
    ps["serve"].add_argument("--host", default=None, help="address to listen on (default: serve.host, 127.0.0.1)")
    ps["serve"].add_argument("--port", type=int, default=None, help="port (default: serve.port, 8000; 0: any free)")
    ps["serve"].add_argument("--api-key", default=None, metavar="KEY",
                             help="clients must send `Authorization: Bearer KEY` (default: $SLM_API_KEY, else "
                                  "serve.api_key; none: no check)")

    _common(ps["export"])
    ps["export"].add_argument("--task", action="append", metavar="NAME|I",
                              help="a task to export, by name or 0-based index (repeatable; default: every DONE task)")
    ps["export"].add_argument("--merged", action="store_true",
                              help="also write the base model with the adapter merged in (save_pretrained folder)")

    _common(ps["submit"])
    ps["submit"].add_argument("--dry-run", action="store_true", help="print scripts and sbatch commands only")
    ps["submit"].add_argument("--ignore-plan", action="store_true",
                              help="submit even when the memory plan says the job does not fit")

    _common(ps["status"])

    _common(ps["plan"])
    ps["plan"].add_argument("--nodes", type=int, default=None, help="nodes (default: slurm.train.nodes)")
    ps["plan"].add_argument("--gpus-per-node", type=int, default=None,
                            help="GPUs per node (default: slurm.train.gpus_per_node, at least 1)")
    ps["plan"].add_argument("--gpu-mem-gib", type=float, default=None,
                            help="memory of one GPU in GiB (default: $SLM_GPU_MEM_GIB, else 80)")
    return parser


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("slm-pipeline")
    except PackageNotFoundError:  # run from a checkout that was never pip-installed
        return "0+unknown"


def unknown_command(argv: list[str]) -> str | None:
    """`error:` + `hint:` lines when the first word that is not an option is no command (with the
    closest command, if one is close), else None. argparse's own message lists every choice."""
    word = next((a for a in argv if not a.startswith("-")), None)
    if word is None or word in COMMANDS:
        return None
    close = difflib.get_close_matches(word, list(COMMANDS), n=1, cutoff=0.6)
    mean = f"; did you mean `slm {close[0]}`?" if close else ""
    return f"error: unknown command {word!r}{mean}\nhint: `slm --help` lists the commands: {', '.join(COMMANDS)}"


def main(argv: list[str] | None = None) -> int:
    """Run one command. A failure the user can fix prints `error: ...` and `hint: ...` on stderr and
    exits 2; the traceback only with --debug or SLM_DEBUG=1. Anything else is a bug: traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not [a for a in argv if a != "--debug"]:  # bare `slm`: what can I do here?
        parser.print_help()
        return 0
    if problem := unknown_command(argv):
        print(problem, file=sys.stderr)
        return EXIT_USER_ERROR
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False)) or os.environ.get("SLM_DEBUG", "") not in ("", "0")
    from pipeline.runtime.library_logs import route_library_logs

    route_library_logs(debug)
    try:
        return run_command(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        from pipeline.error_report import user_message

        found = None if debug else user_message(e)
        if found is None:
            raise
        message, hint = found
        print(f"error: {message}\nhint: {hint}", file=sys.stderr)
        return EXIT_USER_ERROR


def run_command(args: argparse.Namespace) -> int:
    from pipeline.experiment import load_config
    from pipeline.state.layout import RunLayout

    overrides = [*(args.overrides or []), *getattr(args, "set_overrides", [])]
    if args.method:
        overrides.append(f"method={args.method}")
    cfg = load_config(args.config, overrides)
    layout = RunLayout.of(cfg)
    module = importlib.import_module(MODULES.get(args.command, f"pipeline.stages.{args.command}"))
    return int(module.main(cfg, layout, args) or 0)


if __name__ == "__main__":
    sys.exit(main())
