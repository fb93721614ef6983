"""`slm configs`: the shipped experiments to start from, one line each; `slm configs copy NAME DEST`
writes one to edit.

    slm configs                                   # name, model, tasks, orders, and what it is
    slm configs copy llama2_7b.yaml my_7b.yaml    # the whole file, comments included, to edit
    slm configs copy llama2_7b.yaml my_7b.yaml --inherit   # `base: llama2_7b.yaml` + what to change

Needs no experiment (the CLI resolves none for it), and reads the YAML files only: no torch, no
method registry, so it answers at once (torchtune's `tune ls` / `tune cp`).
"""

from __future__ import annotations

import argparse
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import BUILTIN_CONFIGS, shipped_configs
from pipeline.errors import ConfigError
from pipeline.state.artifacts import atomic_write_text

NEEDS_EXPERIMENT = False  # pipeline.cli: no -c, --method, --order or KEY=VALUE for this command
LINE_WIDTH = 150  # a listing line (at least; a wider terminal shows more of each header's first sentence)


@dataclass(frozen=True)
class Args:
    action: str = "list"
    name: str | None = None
    dest: str | None = None
    inherit: bool = False
    force: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=["list", "copy"], default="list",
                   help="list (default): the shipped experiments; copy NAME DEST: write one to DEST")
    p.add_argument("name", nargs="?", help="copy: the shipped config's file name, e.g. llama2_7b.yaml")
    p.add_argument("dest", nargs="?", help="copy: the file to write (or a folder: DEST/NAME)")
    p.add_argument("--inherit", action="store_true",
                   help="copy: write `base: NAME` and the keys most often changed, instead of the whole file")
    p.add_argument("--force", action="store_true", help="copy: overwrite DEST if it exists")


def main(args: Args) -> int:
    if args.action == "list":
        print(listing())
        return 0
    dest = copy_config(args.name, args.dest, inherit=args.inherit, force=args.force)
    how = f"inherits {args.name} (`base:`); add only what differs" if args.inherit else "a copy to edit"
    print(f"configs: wrote {dest} ({how}); run it with `slm run -c {dest}`")
    return 0


def listing() -> str:
    """One line per shipped experiment: file, model, tasks (and orders), the header's first sentence."""
    rows = [describe(BUILTIN_CONFIGS / name) for name in shipped_configs()]
    width = max(len(r[0]) for r in rows)
    facts = max(len(r[1]) for r in rows)
    room = max(LINE_WIDTH, shutil.get_terminal_size((LINE_WIDTH, 24)).columns) - width - facts - 4
    lines = [f"{name:<{width}}  {what:<{facts}}  {textwrap.shorten(summary, room, placeholder=' ...')}"
             for name, what, summary in rows]
    return "\n".join([*lines, "", "slm configs copy NAME DEST writes one to edit (--inherit: `base: NAME` and only "
                                  "what differs); -c NAME runs one as it is"])


def describe(path: Path) -> tuple[str, str, str]:
    """(file name, "model, N tasks[, M orders]", what the header comment's first sentence says it is)."""
    text = path.read_text(encoding="utf-8")
    raw = yaml.safe_load(text) or {}
    model = str((raw.get("model") or {}).get("name_or_path", "bundled:smollm2"))
    model = model.removeprefix("bundled:").rsplit("/", 1)[-1]
    tasks, orders = raw.get("tasks") or [], raw.get("orders") or []
    what = f"{model}, {_count(len(tasks), 'task')}" + (f", {_count(len(orders), 'order')}" if orders else "")
    return path.name, what, first_sentence(header_comment(text))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def header_comment(text: str) -> str:
    """The comment lines at the top of a YAML file, without their `#`, as one paragraph."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        words = line.lstrip("#").strip()
        if not words and lines:
            break  # the first paragraph only
        lines.append(words)
    return " ".join(x for x in lines if x)


def first_sentence(text: str) -> str:
    """Up to the first full stop, or the heading before a colon ("The embedded default experiment: ...")."""
    end = text.find(". ")
    sentence = text if end < 0 else text[: end + 1]
    head, colon, _ = sentence.partition(": ")
    return head if colon else sentence


def copy_config(name: str | None, dest: str | None, inherit: bool = False, force: bool = False) -> Path:
    """Write the shipped config `name` (or, with `inherit`, a file that inherits it) to `dest`."""
    if not name or not dest:
        raise ConfigError("`slm configs copy` needs NAME and DEST, e.g. `slm configs copy llama2_7b.yaml my_7b.yaml`",
                          hint="`slm configs` lists the names")
    shipped = shipped_configs()
    if name not in shipped and f"{name}.yaml" in shipped:
        name = f"{name}.yaml"
    if name not in shipped:
        raise ConfigError(f"{name!r} is not a shipped config; shipped: {', '.join(shipped)}",
                          hint="`slm configs` lists them with one line each")
    target = Path(dest).expanduser()
    if target.is_dir():
        target = target / name
    if target.exists() and not force:
        raise ConfigError(f"{target} exists; not overwritten", hint="choose another DEST, or add --force")
    if not target.parent.is_dir():
        raise ConfigError(f"{target.parent}: no such folder for {target.name}", hint="create it first")
    source = (BUILTIN_CONFIGS / name).read_text(encoding="utf-8")
    atomic_write_text(target, inherit_stub(name, yaml.safe_load(source) or {}) if inherit else source)
    return target


def inherit_stub(name: str, raw: dict[str, Any]) -> str:
    """A YAML that inherits `name` and shows, commented out, the keys a new experiment changes first."""
    stem = Path(name).stem
    output_dir = raw.get("output_dir", f"runs/{stem}")
    return f"""\
# Inherits {name} (`slm configs copy {name} DEST` has the whole file, with its comments):
# every key not written here is {name}'s. Mappings merge key by key (`train: {{epochs: 1}}`
# changes only the epochs); lists, `tasks:` and `orders:` among them, replace the inherited ones.
# The resolved config is what every stage validates and records (<output_dir>/<method>/config.yaml).
base: {name}
name: my_{stem}
output_dir: {output_dir}_mine

# Your own tasks replace the inherited ones; then drop its task orders (`orders: null`), or list
# orders of your own task names.
# tasks:
#   - name: support
#     source: {{type: file, path: data/support.jsonl}}
#     metric: rouge_l
# orders: null
"""
