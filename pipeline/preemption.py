"""The one place that names the preemption signal and the exit codes around it.

Slurm sends `--signal=B:USR1@<s>` to the batch shell only (some stacks, NCCL among them, catch
USR1 themselves when it reaches every process); the batch script's trap forwards it to the
training process, which saves a checkpoint at the next step boundary and exits with
EXIT_PREEMPTED, and the script then requeues the job. SIGTERM (scancel, node drain) is handled
the same way.
"""

from __future__ import annotations

import signal

PREEMPT_SIGNAL_NAME = "USR1"  # used in the sbatch `--signal=B:USR1@...` flag and the trap
PREEMPT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
# Exit code of `slm train` after saving a checkpoint on a preemption signal: "requeue me".
EXIT_PREEMPTED = 75  # EX_TEMPFAIL from sysexits.h: a temporary failure, retry later
# Exit code when an earlier task of the sequence is not DONE (array task ran out of order).
EXIT_PREVIOUS_NOT_DONE = 3


class PreemptionFlag:
    """Installs handlers that only set a flag; the training loop checks it between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> PreemptionFlag:
        for sig in PREEMPT_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None
