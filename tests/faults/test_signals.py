"""Signals: USR1 asks for a requeue, SIGTERM for a stop.

The table in docs/faults.md lists each fault and what the user sees; keep the two in step."""

from __future__ import annotations

import os
import signal
import time

import pytest

from pipeline.state.preemption import EXIT_PREEMPTED, EXIT_TERMINATED, PreemptionFlag


@pytest.mark.parametrize(("signals", "code"), [
    ([signal.SIGUSR1], EXIT_PREEMPTED), ([signal.SIGTERM], EXIT_TERMINATED),
    ([signal.SIGUSR1, signal.SIGTERM], EXIT_TERMINATED),  # a cancel during a preemption checkpoint stays final
])
def test_usr1_asks_for_a_requeue_and_sigterm_for_a_stop(signals: list[int], code: int) -> None:
    with PreemptionFlag() as flag:
        for sig in signals:
            os.kill(os.getpid(), sig)
        deadline = time.monotonic() + 5
        while len(flag.received) < len(signals) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert flag.requested and flag.exit_code == code and flag.terminated == (code == EXIT_TERMINATED)
