"""Generated documentation: docs/config.md from the config schema, and the results tables of
README.md and docs/*.md from bench/results/. Nothing here is typed by hand.

    python scripts/docs.py           # rewrite docs/config.md and every marked table
    python scripts/docs.py --check   # exit 1 naming what is stale (tests/test_docs.py runs it)
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydantic import BaseModel  # noqa: E402

CONFIG_DOC = ROOT / "docs" / "config.md"
HEADER = """# Experiment config reference

Generated from the schema (`python scripts/docs.py`; `pipeline/config.py` for the shared
sections, each method's `Options` in `pipeline/methods/` for `methods.<name>`): every key, its
type, its default and what it does. Override any key on the command line as dotted
`KEY=VALUE` (`slm run methods.slm.lr=1e-3 tasks.0.max_train=64`).

Start from a shipped experiment: `slm configs` lists them with one line each, `slm configs copy
NAME DEST` writes one to edit. Or inherit one: `base: NAME.yaml` (a file beside the YAML, else a
shipped config; a base may have its own `base:`) takes every key of that experiment, and the
file writes only what differs. Mappings merge key by key (`train: {epochs: 1}` changes only the
epochs); every other value, lists and `tasks:` and `orders:` among them, replaces the inherited
one, and `orders: null` drops inherited orders. Relative paths resolve from the folder of the
file named with `-c`. The resolved config is what every stage validates, hashes and records
(`<output_dir>/<method>/config.yaml`); `slm configs copy NAME DEST --inherit` writes such a file.
"""


def _type(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return text.replace("pipeline.config.", "").replace("NoneType", "None")


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{value!r}`" if value is not None else "`None`"


def _spec_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _spec_of(arg)
        if found is not None:
            return found
    return None


def section(model: type[BaseModel], prefix: str, out: list[str], missing: list[str]) -> None:
    """One table for `model`'s scalar keys, then a section per nested one."""
    rows, nested = [], []
    for name, field in model.model_fields.items():
        if name == "config_dir":
            continue
        key = f"{prefix}{name}"
        inner = _spec_of(field.annotation)
        if inner is not None:
            nested.append((key, inner, field))
            continue
        help_text = " ".join((field.description or "").split())
        if not help_text:
            missing.append(key)
        rows.append(f"| `{key}` | `{_type(field.annotation)}` | {_default(field)} | {help_text.replace('|', '/')} |")
    if rows:
        out += ["| key | type | default | what it does |", "|---|---|---|---|", *rows, ""]
    for key, inner, field in nested:
        is_list = typing.get_origin(field.annotation) is list or "list[" in str(field.annotation)
        title = f"{key}[]" if is_list else key
        out += [f"## `{title}`", ""]
        doc = " ".join((field.description or inner.__doc__ or "").split())
        if doc:
            out += [doc, ""]
        section(inner, f"{title}.", out, missing)


def preset_table(method: Any) -> list[str]:
    """What each preset gives the options left unset (a method with presets: pipeline/methods/lora/peers.py)."""
    if not method.presets:
        return []
    presets = {"uniform": method.Options.UNIFORM, **{p: getattr(method.Options, p.upper()) for p in method.presets}}
    keys = list(dict.fromkeys(k for values in presets.values() for k in values))

    def cell(value: Any) -> str:
        return "from `adapter`" if value is None else f"`{value!r}`"

    lines = [f"Presets (`methods.{method.section}.preset`): the value an option left unset takes.", "",
             "| option | " + " | ".join(f"`{p}`" for p in presets) + " |", "|---" * (len(presets) + 1) + "|"]
    lines += [f"| `{k}` | " + " | ".join(cell(values.get(k)) for values in presets.values()) + " |" for k in keys]
    return [*lines, ""]


def config_doc() -> tuple[str, list[str]]:
    """docs/config.md, and the keys that have no help."""
    from pipeline.config import ExperimentConfig
    from pipeline.methods import registered

    out, missing = [HEADER, "## Top level", ""], []
    section(ExperimentConfig, "", out, missing)
    out += ["## `methods`", "", "Each method's own options, declared by its module (`Options`); a section not "
            "written keeps its defaults. `oracle_task_id` reads `slm`'s (it routes the same slots).", ""]
    seen: set[str] = set()
    methods = registered()
    for method in methods.values():
        if method.section in seen:
            continue
        seen.add(method.section)
        readers = [name for name, m in methods.items() if m.section == method.section]
        knob = f", then its own knob `{method.own_knob}`" if method.own_knob else ""
        out += [f"### `methods.{method.section}`", "", f"Read by {', '.join(f'`{m}`' for m in readers)}: "
                f"{method.trains}. The sweep turns `{method.sweep_key}`{knob}.", ""]
        section(method.Options, f"methods.{method.section}.", out, missing)
        out += preset_table(method)
    return "\n".join(out).rstrip() + "\n", missing


def results_blocks() -> list[tuple[Path, str, str]]:
    """(file, old text, new text) for every file with generated results tables."""
    from bench.tables import render_file

    return [(path, path.read_text(), render_file(path.read_text()))
            for path in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))) if path != CONFIG_DOC]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only say what is stale (exit 1)")
    args = p.parse_args(argv)
    doc, missing = config_doc()
    stale = []
    if missing:
        print("config keys without help (give each a docstring): " + ", ".join(missing))
        stale.append("help")
    targets = [(CONFIG_DOC, CONFIG_DOC.read_text() if CONFIG_DOC.is_file() else "", doc), *results_blocks()]
    for path, old, new in targets:
        if old != new:
            stale.append(str(path.relative_to(ROOT)))
            if not args.check:
                path.write_text(new)
    if args.check:
        print("stale: " + ", ".join(stale) if stale else "docs are current")
        return 1 if stale else 0
    print("wrote " + ", ".join(s for s in stale if s != "help") if stale else "docs are current")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
