"""The one place that names the preemption signal and the exit codes around it.

Two signals, two meanings:
- USR1 = "time is up, come back later". Slurm sends `--signal=B:USR1@<s>` to the batch shell
  only (some stacks, NCCL among them, catch USR1 themselves when it reaches every process); the
  batch script's trap forwards it to the training process, which saves a checkpoint at the next
  step boundary and exits with EXIT_PREEMPTED (75); the script then requeues the task.
- SIGTERM = "stop". `scancel`, a node drain, or Slurm's own preemption (which requeues the job
  itself when the partition says so) send it. Training saves a checkpoint the same way and exits
  with EXIT_TERMINATED (143); the script does not requeue, so a cancelled job stays cancelled.
  `slm submit` again resumes from that checkpoint.
"""

from __future__ import annotations

import signal

PREEMPT_SIGNAL_NAME = "USR1"  # used in the sbatch `--signal=B:USR1@...` flag and the trap
PREEMPT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
# Exit code of `slm train` after saving a checkpoint on a preemption signal: "requeue me".
EXIT_PREEMPTED = 75  # EX_TEMPFAIL from sysexits.h: a temporary failure, retry later
# Exit code of `slm train` after saving a checkpoint on SIGTERM: "stopped on request, do not
# requeue". 128 + 15 is what a shell reports for a process that SIGTERM ended, so wrappers and
# schedulers read it the same way.
EXIT_TERMINATED = 128 + signal.SIGTERM
# Exit code when an earlier task of the sequence is not DONE (array task ran out of order).
EXIT_PREVIOUS_NOT_DONE = 3


def requeue_deadline(signal_seconds: int) -> int:
    """Seconds after USR1 at which the batch script requeues the task although training has not
    exited yet (its step plus the checkpoint take longer than the signal leaves): three quarters of
    slurm.signal_seconds. The last quarter is for the requeue itself, before the time limit: Slurm
    never requeues a job that it ended for its time limit (state TIMEOUT), so a task that misses
    the limit would stay dead. The task then resumes from its last complete checkpoint."""
    return max(1, signal_seconds * 3 // 4)


class PreemptionFlag:
    """Installs handlers that only set a flag; the training loop checks it between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the last signal received
        self.received: set[int] = set()
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
        self.received.add(signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """What `slm train` exits with after the checkpoint: 75 (requeue me) for USR1, 143 (stop)
        for SIGTERM. A SIGTERM wins over an earlier USR1: the user's stop is final."""
        return EXIT_TERMINATED if self.terminated else EXIT_PREEMPTED

    @property
    def terminated(self) -> bool:
        return signal.SIGTERM in self.received
