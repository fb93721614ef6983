"""FAISS backend honesty: the build in use is reported, `dtkr.faiss=gpu` without one is an error,
and the packaging keeps exactly one FAISS build installed."""

from __future__ import annotations

import importlib.metadata
import sys
import tomllib
from pathlib import Path

import pytest

from pipeline.cli import main as slm
from pipeline.dtkr import faiss_build
from pipeline.dtkr.faiss_build import FaissBuild
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh_build_cache():
    faiss_build.faiss_build.cache_clear()
    yield
    faiss_build.faiss_build.cache_clear()


def test_the_installed_build_is_named_with_its_version_and_wheel() -> None:
    import faiss

    build = faiss_build.faiss_build()
    assert build.version == faiss.__version__
    assert build.kind == ("gpu" if hasattr(faiss, "StandardGpuResources") else "cpu")
    assert build.wheels and f"faiss {faiss.__version__}, {build.kind} build from {build.wheels[0]}" in build.describe()


@pytest.mark.parametrize("choice, build, on_gpu", [
    ("auto", FaissBuild("gpu", "1.15.1", 2, ("faiss-gpu",)), True),
    ("cpu", FaissBuild("gpu", "1.15.1", 2, ("faiss-gpu",)), False),
    ("gpu", FaissBuild("gpu", "1.15.1", 2, ("faiss-gpu",)), True),
    ("auto", FaissBuild("gpu", "1.15.1", 0, ("faiss-gpu",)), False),  # a GPU build on a CPU node
    ("auto", FaissBuild("cpu", "1.15.1", 0, ("faiss-cpu",)), False),
])
def test_dtkr_faiss_decides_where_the_search_runs(choice: str, build: FaissBuild, on_gpu: bool) -> None:
    assert build.searches_on_gpu(choice) is on_gpu


def test_gpu_with_a_cpu_only_build_is_an_error_that_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(faiss_build, "faiss_build", lambda: FaissBuild("cpu", "1.15.1", 0, ("faiss-cpu",)))
    with pytest.raises(ConfigError, match="dtkr.faiss=gpu, but the installed FAISS is a CPU-only build") as err:
        faiss_build.require("gpu", need_device=False)
    assert ".[gpu]" in err.value.hint and "uninstall -y faiss-cpu" in err.value.hint
    assert faiss_build.require("auto").kind == "cpu"  # auto falls back, and says so in `slm plan`


def test_gpu_without_a_visible_gpu_is_an_error_only_where_it_would_search(monkeypatch) -> None:
    monkeypatch.setattr(faiss_build, "faiss_build", lambda: FaissBuild("gpu", "1.15.1", 0, ("faiss-gpu",)))
    assert faiss_build.require("gpu", need_device=False).kind == "gpu"  # a login node renders the jobs
    with pytest.raises(ConfigError, match="FAISS sees no GPU"):
        faiss_build.require("gpu")


def test_two_faiss_wheels_at_once_are_an_error(monkeypatch) -> None:
    both = {"faiss": ["faiss-cpu", "faiss-gpu"]}
    monkeypatch.setattr(importlib.metadata, "packages_distributions", lambda: both)
    with pytest.raises(ConfigError, match=r"several FAISS wheels are installed \(faiss-cpu, faiss-gpu\)"):
        faiss_build.require("auto")


def test_no_faiss_installed_is_an_error_not_an_import_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    monkeypatch.setattr(importlib.metadata, "packages_distributions", lambda: {})
    assert faiss_build.faiss_build().describe() == "no FAISS installed"
    with pytest.raises(ConfigError, match="FAISS is not installed") as err:
        faiss_build.require("auto")
    assert ".[cpu]" in err.value.hint


def test_the_base_install_names_no_faiss_build_and_each_extra_names_one() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("faiss")]
    extras = project["optional-dependencies"]
    assert [d.split(">")[0] for d in extras["cpu"] if d.startswith("faiss")] == ["faiss-cpu"]
    assert [d.split(">")[0] for d in extras["gpu"] if d.startswith("faiss")] == ["faiss-gpu"]
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert '-e ".[$FAISS,dev]"' in setup and 'uninstall -y "$OTHER_FAISS"' in setup


def test_slm_plan_prints_the_active_build_and_flags_a_gpu_setting_it_cannot_serve(capsys) -> None:
    assert slm(["plan", "-c", "llama2_7b.yaml"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("faiss "))
    assert faiss_build.faiss_build().describe() in line and "dtkr.faiss=auto" in line
    if faiss_build.faiss_build().kind == "cpu":
        assert slm(["plan", "-c", "llama2_7b.yaml", "dtkr.faiss=gpu"]) == 0
        assert "WILL FAIL: dtkr.faiss=gpu, but the installed FAISS is a CPU-only build" in capsys.readouterr().out


def test_a_stage_that_searches_refuses_gpu_on_a_cpu_build_before_any_work(tmp_path, capsys) -> None:
    if faiss_build.faiss_build().kind == "gpu":
        pytest.skip("a GPU build of FAISS is installed")
    assert slm(["eval", "--after", "-1", f"output_dir={tmp_path}", "dtkr.faiss=gpu"]) == 2
    assert "error: dtkr.faiss=gpu, but the installed FAISS is a CPU-only build" in capsys.readouterr().err
    assert not (tmp_path / "slm").exists()


def test_each_gpus_faiss_resources_reserve_only_the_small_scratch_the_plan_counts(monkeypatch) -> None:
    """FAISS's StandardGpuResources reserves 1.5 GiB of scratch per GPU unless told otherwise; the
    store caps it before the first GPU search (a CPU build here: the GPU calls are stand-ins)."""
    import faiss
    import torch

    from pipeline.dtkr import store
    from pipeline.planning.memory import FAISS_GPU_GIB, GIB

    made: list[dict] = []

    class Resources:
        def __init__(self) -> None:
            self.calls = {"temp": None}
            made.append(self.calls)

        def setTempMemory(self, size: int) -> None:  # noqa: N802 (FAISS's name)
            self.calls["temp"] = size

    def to_gpu(resources, device, index):
        assert resources.calls["temp"] is not None, "scratch set only after the index was copied"
        return index

    monkeypatch.setattr(faiss_build, "faiss_build", lambda: FaissBuild("gpu", "1.15.1", 1, ("faiss-gpu",)))
    monkeypatch.setattr(faiss, "StandardGpuResources", Resources, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(store, "_resources", {})
    monkeypatch.setattr(store, "_choice", "auto")
    keys = store.KeyStore(12, 3, 2, "test")
    keys.add_task("a", torch.randn(2, 3, 4))
    keys.search(torch.randn(5, 12), 2)
    assert made == [{"temp": store.FAISS_TEMP_MEMORY}]
    assert store.FAISS_TEMP_MEMORY < FAISS_GPU_GIB * GIB  # the plan's per-rank allowance holds it
