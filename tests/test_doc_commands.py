"""The docs' commands and paths are true: every shell command in a README/docs code block parses
with the options and arguments it shows (run as far as its argument parser, never further), the
configs and bench experiments it names exist, and every repository path the docs or the shipped
configs name is there."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import sys
from pathlib import Path

import pytest

from pipeline.cli import build_parser
from pipeline.config import shipped_configs
from pipeline.experiment import load_config

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Programs that are not this project's: their lines are shown, not checked (`bash`/`srun`: lines of
# the sbatch template quoted in docs/slurm.md).
OTHER_PROGRAMS = {"pip", "module", "source", "export", "tensorboard", "wandb", "mlflow", "vllm", "srun", "bash", "cd"}
# Experiment files the docs ask the reader to write (README's support.yaml, docs' my_experiment.yaml).
READERS_FILES = {"support.yaml", "my_experiment.yaml"}
TOP_FOLDERS = ("bench", "tests", "scripts", "pipeline", "docs", "slurm", "ds_configs")
# "cmnfriend/O-LoRA scripts/order_1.sh": a path in another repository, named after it
OTHER_REPOSITORY = re.compile(r"\b[\w-]+/[\w.-]+ $")
REPO_PATH = re.compile(rf"(?<![\w./<-])(?:{'|'.join(TOP_FOLDERS)})/[\w./<>*-]*[\w>*/]")


def shell_commands() -> list[tuple[str, str]]:
    """(doc, command) for every command line of every bash code block (continuations joined,
    `;`/`&&` split, comments and leading VAR=value assignments dropped)."""
    found = []
    for doc in DOCS:
        for lang, body in re.findall(r"```(\w*)\n(.*?)```", doc.read_text(), flags=re.S):
            if lang not in ("bash", "sh"):
                continue
            for line in re.sub(r"\\\n\s*", " ", body).splitlines():
                line = re.sub(r"(^|\s)#.*$", "", line).strip()
                for command in re.split(r"\s*(?:&&|;)\s*", line):
                    words = shlex.split(command) if command else []
                    if words and re.match(r"^[A-Za-z_]\w*=\$\(", words[0]):
                        continue  # a shell assignment from a command substitution: no program of ours
                    while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
                        words = words[1:]
                    if words:
                        found.append((doc.name, shlex.join(words)))
    return found


class Parsed(Exception):
    """Raised by the patched parser: the arguments parsed, nothing ran."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        self.namespace = namespace


def parse_only(main, argv: list[str], monkeypatch) -> argparse.Namespace:
    """Run a script's `main(argv)` up to its argument parser: argparse's own checks, no work."""

    def stopping(original):
        def parse(self, args=None, namespace=None):
            raise Parsed(original(self, args, namespace))
        return parse

    with monkeypatch.context() as patched, pytest.raises(Parsed) as done:
        for name in ("parse_args", "parse_intermixed_args"):
            patched.setattr(argparse.ArgumentParser, name, stopping(getattr(argparse.ArgumentParser, name)))
        main(argv)
    return done.value.namespace


def check_slm(argv: list[str]) -> None:
    command = next(a for a in argv if not a.startswith("-")) if any(not a.startswith("-") for a in argv) else ""
    if not command:
        with pytest.raises(SystemExit) as done:
            build_parser("").parse_args(argv)
        assert done.value.code == 0, argv
        return
    args = build_parser(command).parse_args(argv)  # exits 2 on an unknown option or a missing argument
    config = getattr(args, "config", None)
    if config is not None and ("$" in config or config in READERS_FILES):
        return  # the reader's own file: its keys cannot be checked here
    assert config is None or config in shipped_configs() or (REPO / config).is_file(), f"no config {config}"
    overrides = [*(getattr(args, "overrides", None) or []), *(getattr(args, "set_overrides", None) or [])]
    if overrides or config:
        load_config(config, overrides)  # every key the command overrides is a key of that config


def check_python(argv: list[str], monkeypatch) -> None:
    if argv[:2] == ["-m", "pipeline.cli"]:
        check_slm(argv[2:])
        return
    if argv[:2] == ["-m", "data_prep"]:
        import data_prep.__main__ as data_prep_cli

        parse_only(data_prep_cli.main, argv[2:], monkeypatch)
        return
    script = REPO / argv[0]
    assert script.is_file(), f"no script {argv[0]}"
    monkeypatch.syspath_prepend(str(script.parent))
    monkeypatch.syspath_prepend(str(REPO))
    module = importlib.import_module(f"{script.parent.name}.{script.stem}" if script.parent.name == "bench"
                                     else script.stem)
    namespace = parse_only(module.main, argv[1:], monkeypatch)
    name = getattr(namespace, "experiment", None)
    if script.parent.name == "bench" and isinstance(name, str) and "/" not in name:
        # its own bench/experiments/<bench>/<name>.yaml, or another bench's (plasticity runs cl_methods')
        found = list((REPO / "bench" / "experiments").glob(f"*/{name}.yaml"))
        assert found, f"{argv}: no bench/experiments/*/{name}.yaml"


def check_shell_script(argv: list[str]) -> None:
    script = REPO / argv[0].removeprefix("./")
    assert script.is_file(), f"no script {argv[0]}"
    if len(argv) > 1:  # a subcommand: one of the script's `case` labels
        assert re.search(rf"^\s*{re.escape(argv[1])}\)", script.read_text(), flags=re.M), f"{argv}: no such action"


@pytest.mark.parametrize(("doc", "command"), shell_commands(), ids=lambda x: x if len(x) < 60 else x[:57] + "...")
def test_every_shell_command_in_the_docs_parses_as_shown(doc, command, monkeypatch) -> None:
    argv = shlex.split(command)
    program = Path(argv[0]).name
    if program in OTHER_PROGRAMS:
        return
    if program == "slm":
        check_slm(argv[1:])
    elif program in ("python", "python3"):
        check_python(argv[1:], monkeypatch)
    elif program == "torchrun":
        at = argv.index("-m")
        assert argv[at:at + 2] == ["-m", "pipeline.cli"], command
        check_slm(argv[at + 2:])
    elif argv[0].endswith(".sh"):
        check_shell_script(argv)
    else:
        pytest.fail(f"{doc}: `{command}`: a program this test does not know; check it here or list it in "
                    "OTHER_PROGRAMS")


def named_paths() -> list[tuple[str, str]]:
    """(file, path) for every repository path the docs and the shipped configs' comments name."""
    texts = [(doc.relative_to(REPO), doc.read_text()) for doc in DOCS]
    texts += [(p.relative_to(REPO), p.read_text()) for p in sorted((REPO / "pipeline" / "configs").glob("*.yaml"))]
    return sorted({(str(f), m.group(0).rstrip(".")) for f, text in texts for m in REPO_PATH.finditer(text)
                   if not OTHER_REPOSITORY.search(text[max(0, m.start() - 60):m.start()])})


def exists(path: str) -> bool:
    """A path, a glob (`*`, `<name>` placeholders), or a bench's results folder before its first run."""
    pattern = re.sub(r"<[^>]+>", "*", path)
    if any(REPO.glob(pattern)) or (REPO / pattern).exists():
        return True
    parts = pattern.split("/")  # bench/results/<bench>/...: written by bench/<bench>.py
    return parts[:2] == ["bench", "results"] and len(parts) > 3 and (REPO / "bench" / f"{parts[2]}.py").is_file()


def test_every_repository_path_the_docs_and_configs_name_exists() -> None:
    missing = [f"{f}: {p}" for f, p in named_paths() if not exists(p)]
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


def test_the_checks_catch_what_the_docs_once_had(monkeypatch) -> None:
    with pytest.raises(SystemExit):
        check_python(["bench/serve.py", "--batching", "--threads", "1"], monkeypatch)
    assert not exists("bench/results/serve-batching.json") and not exists("tests/test_gpu_smoke.py")
    assert not exists("bench/results/retrieval-ablation.json") and exists("bench/results/retrieval/ablation.json")
    with pytest.raises(SystemExit):
        check_slm(["run", "--tiny"])
    with pytest.raises(AssertionError, match="no config"):
        check_slm(["run", "-c", "llama2_7.yaml"])
    assert sys.modules  # the parse-only runs left the interpreter usable
