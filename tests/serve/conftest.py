"""Every serve test module leaves no server thread behind."""

from __future__ import annotations

import threading

import pytest


@pytest.fixture(autouse=True, scope="module")
def _no_stray_threads():
    before = set(threading.enumerate())
    yield
    stray = [t for t in set(threading.enumerate()) - before if t.name.startswith("slm-serve")]
    assert not stray, f"server threads left running: {stray}"
