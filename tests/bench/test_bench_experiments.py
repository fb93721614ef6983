"""Every shipped experiment of the speed, memory and retrieval benches is valid settings and says
in its header how it is run (STYLE.md 5: example configs are documentation, and tests load them)."""

from __future__ import annotations

import importlib

import pytest

from bench.runner import EXPERIMENTS

BENCHES = ("retrieval", "jare_vs_lora", "gpu_throughput", "gpu_smoke", "plan_vs_measured", "serve")
SHIPPED = [(bench, path) for bench in BENCHES for path in sorted((EXPERIMENTS / bench).glob("*.yaml"))]


def test_every_bench_ships_an_experiment_for_its_default_run() -> None:
    for bench in BENCHES:
        default = importlib.import_module(f"bench.{bench}").parse_args([]).experiment
        assert (EXPERIMENTS / bench / f"{default}.yaml").is_file(), f"{bench}: no {default}.yaml"


@pytest.mark.parametrize("bench, path", SHIPPED, ids=[f"{b}/{p.stem}" for b, p in SHIPPED])
def test_a_shipped_experiment_loads_and_its_header_gives_the_command(bench: str, path) -> None:
    settings = importlib.import_module(f"bench.{bench}").load_settings(path.stem)  # unknown keys, wrong types raise
    assert settings.name == path.stem
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(f"python bench/{bench}.py {path.stem}" in line for line in header), \
        f"{path}: the header comment should give the exact command"


def test_an_unknown_key_in_an_experiment_is_an_error(tmp_path) -> None:
    from pydantic import ValidationError

    from bench import jare_vs_lora

    bad = tmp_path / "bad.yaml"
    bad.write_text("rank: 8\nrnak: 16\n")
    with pytest.raises(ValidationError, match="rnak"):
        jare_vs_lora.load_settings(str(bad))
