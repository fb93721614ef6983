"""Run state on disk: every path (layout), atomic writes and DONE markers (artifacts), what a result
is valid for (validity), writer locks, checkpoints, preemption signals and task-order runs."""
