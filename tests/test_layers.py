"""The architecture as the drawing shows it (scripts/draw_layers.py): no import loop between rooms,
no import from a lower floor to a higher one, and every room placed on a floor."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import draw_layers  # noqa: E402


def test_the_rooms_of_pipeline_import_each_other_only_downwards_and_never_in_a_loop() -> None:
    r = draw_layers.report()
    assert not r["unplaced"], f"rooms on no floor of scripts/draw_layers.py LAYERS: {r['unplaced']}"
    assert not r["loops"], f"import loops: {r['loops']}"
    assert not r["upward"], f"upward imports: {dict(r['upward'])}"


def test_the_drawing_sees_a_loop_and_an_upward_import(monkeypatch) -> None:
    graph = {("state", "methods"): ["pipeline.state.validity -> pipeline.methods"],
             ("methods", "state"): ["pipeline.methods.replay -> pipeline.state.artifacts"]}
    assert draw_layers.loops(graph) == [["methods", "state"]]
    monkeypatch.setattr(draw_layers, "edges", lambda: graph)
    upward = draw_layers.report()["upward"]
    assert list(upward) == [("state", "methods")]  # state is floors below methods


def test_type_hint_imports_are_not_dependencies(tmp_path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nimport os\nif TYPE_CHECKING:\n"
                      "    from pipeline.config import ExperimentConfig\n")
    assert draw_layers.imports(module) == {"typing", "typing.TYPE_CHECKING", "os"}


def test_relative_imports_are_read_as_the_modules_they_name(tmp_path) -> None:
    module = tmp_path / "shapes.py"
    module.write_text("from ..methods.seq_ft import mark_trainable\nfrom . import memory\nfrom .loads import x\n")
    found = draw_layers.imports(module, "pipeline.planning")
    assert {"pipeline.methods.seq_ft", "pipeline.methods.seq_ft.mark_trainable", "pipeline.planning.memory",
            "pipeline.planning.loads"} <= found


def test_a_loop_made_by_a_relative_import_is_found(tmp_path, monkeypatch) -> None:
    package = tmp_path / "pipeline"
    for room, text in (("planning", "from ..methods import seq_ft\n"), ("methods", "from ..planning import shapes\n")):
        (package / room).mkdir(parents=True)
        (package / room / "__init__.py").write_text("")
        (package / room / "inner.py").write_text(text)
    (package / "methods" / "seq_ft.py").write_text("")
    (package / "planning" / "shapes.py").write_text("")
    monkeypatch.setattr(draw_layers, "ROOT", tmp_path)
    monkeypatch.setattr(draw_layers, "PACKAGE", package)
    assert draw_layers.loops(draw_layers.edges()) == [["methods", "planning"]]
    assert ("planning", "methods") in draw_layers.report()["upward"]  # planning stands below methods
