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
