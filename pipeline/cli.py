"""`slm`: a thin CLI over the stages. Each subcommand maps to a module (`pipeline.stages.<name>`)
that declares its own options (`add_arguments`, `Args`) and runs as `main(experiment, args)`.

The CLI resolves the experiment once (`pipeline.experiment.load_experiment`: config, method,
layout, the runs `--order` selects) and hands it over; no command looks the method up again.
Only the chosen command's module is imported, so `slm --help` never imports torch or DeepSpeed.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import os
import sys
from types import ModuleType

from pipeline.methods import METHOD_NAMES

EXIT_USER_ERROR = 2  # the config, data, paths or another writer: the message says what to do
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it
DEBUG_HELP = "on an error, show the full traceback (also: SLM_DEBUG=1)"
EPILOG = """\
overrides: any config key as dotted KEY=VALUE after the options, parsed as YAML, e.g.
  slm run train.max_steps=10 tasks.0.max_train=64 output_dir=runs/quick
  slm prepare -c cl_benchmark.yaml data_root=../shared/data/cl_benchmark
without -c, the embedded default experiment (pipeline/configs/default.yaml) is used;
a bare file name such as `cl_benchmark.yaml` names a shipped config (`slm configs` lists them).
"""

# command -> the module that runs it (imported only when chosen): a stage of the pipeline
# (pipeline.stages.<command>), or the command of its own package (plan, serve). Each module has
# `add_arguments(parser)` for its own options, an `Args` dataclass they fill, and
# `main(experiment, args)`; a module with `NEEDS_EXPERIMENT = False` (configs) gets no experiment
# options and runs as `main(args)`.
MODULES = {"eval": "pipeline.stages.evaluate", "plan": "pipeline.planning.command", "serve": "pipeline.serve.command",
           "chat": "pipeline.serve.chat"}
COMMANDS: dict[str, str] = {
    "fetch": "download the hub models (and datasets) the jobs load into the cache they read: run on the login node",
    "prepare": "data sources -> unified {task, instruction, input, output} datasets on disk",
    "train": "learn task i's DTKR keys, then its JARe slot values, under DeepSpeed",
    "index": "build the FAISS index over the keys of every finished task",
    "eval": "score every task after task i (retrieval, no task id): row i of the accuracy matrix",
    "report": "metrics (AA, BWT, forgetting, FWT), plots and report.md from the matrix",
    "run": "prepare, then train/index/eval each task in order, then report, skipping finished work",
    "generate": "answer a prompt with retrieval; shows which tasks and slots were used",
    "chat": "talk to a finished run in the terminal: history kept, /reset, the retrieved tasks shown per turn",
    "serve": "OpenAI-compatible HTTP API: any method; retrieval per request, continuous batching, new tasks live",
    "export": "finished tasks as PEFT LoRA folders (vLLM --lora-modules), or merged models with --merged",
    "forget": "remove one finished task from a run (its slots and keys), leaving every other task as it is",
    "submit": "render the stages as Slurm jobs (prepare -> array over tasks -> finish) and submit",
    "status": "which tasks are done, running, pending or failed, with Slurm job ids",
    "plan": "per-GPU memory plan for the experiment's model and tasks, from the config alone",
    "configs": "the shipped experiments, one line each; `slm configs copy NAME DEST` writes one to edit",
}


def command_module(command: str) -> ModuleType:
    return importlib.import_module(MODULES.get(command, f"pipeline.stages.{command}"))


def _experiment_options(p: argparse.ArgumentParser) -> None:
    """What every command shares: which experiment, and which of its runs (the CLI resolves it)."""
    p.add_argument("-c", "--config", metavar="YAML",
                   help="experiment file (default: the embedded default experiment)")
    # SUPPRESS: when absent here, `slm --debug COMMAND` (the top-level flag) still counts.
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    p.add_argument("--method", choices=METHOD_NAMES,
                   help="override `method:`; each method writes its own output_dir/<method>")
    p.add_argument("--order", metavar="NAME",
                   help="one run of an experiment with `orders:`/`seeds:` (run and report do all by default)")
    p.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, the same as a KEY=VALUE argument (repeatable)")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of `slm`, with the options of `command` (every command's when None): a command's
    own options come from its module, which is imported only for it."""
    parser = argparse.ArgumentParser(
        prog="slm", description="SLM continual learning (JARe + DTKR) for LLaMA models.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--version", action="version", version=f"slm {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_line in COMMANDS.items():
        p = sub.add_parser(name, help=help_line, description=help_line, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if command is None or name == command:
            module = command_module(name)
            if not needs_experiment(module):
                p.epilog = None  # the overrides it describes are not this command's
                p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
                module.add_arguments(p)
                continue
            _experiment_options(p)
            module.add_arguments(p)  # its options, and positionals before the overrides
            p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    return parser


def needs_experiment(module: ModuleType) -> bool:
    """Whether the command works on an experiment (every stage) or on nothing the CLI resolves (configs)."""
    return getattr(module, "NEEDS_EXPERIMENT", True)


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
    if not [a for a in argv if a != "--debug"]:  # bare `slm`: what can I do here?
        build_parser("").print_help()
        return 0
    if problem := unknown_command(argv):
        print(problem, file=sys.stderr)
        return EXIT_USER_ERROR
    args = build_parser(chosen_command(argv)).parse_args(argv)
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


def chosen_command(argv: list[str]) -> str:
    """The command word of `argv` ("" for `slm --help`, `slm --version`)."""
    return next((a for a in argv if not a.startswith("-")), "")


def run_command(args: argparse.Namespace) -> int:
    """Resolve the experiment once (config, method, layout, the selected runs) and hand it, with
    the command's own options, to the command."""
    module = command_module(args.command)
    options = module.Args(**{f.name: getattr(args, f.name) for f in dataclasses.fields(module.Args)})
    if not needs_experiment(module):
        return int(module.main(options) or 0)
    from pipeline.experiment import load_experiment

    overrides = [*(args.overrides or []), *args.set_overrides]
    if args.method:
        overrides.append(f"method={args.method}")
    experiment = load_experiment(args.config, overrides, order=args.order)
    return int(module.main(experiment, options) or 0)


if __name__ == "__main__":
    sys.exit(main())
