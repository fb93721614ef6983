"""Send a signal to the training process at an exact point, for the fault suite (tests/faults/).

In-process (SIGTERM, SIGUSR1: the handler of `slm train` sets its flag and the run goes on):

    install(monkeypatch.setattr, "mid-step", signal.SIGTERM, step=1)

In a child process (SIGKILL, which nothing can catch):

    python -m tests.fault_hooks POINT SIGNAL STEP slm-arguments...

Points, each firing once:
  keys        inside DTKR key learning: the keys are learned but not yet cached
  mid-step    in optimizer step STEP (0-based), after its forward and backward, before the update
  checkpoint  while the checkpoint of step STEP is saved: DeepSpeed's files are written, its
              COMPLETE marker (with the sha256 of each file) not yet
Signalling from inside the process, at a named point, makes every run of the test the same; a
signal from outside would land wherever the clock says.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

POINTS = ("keys", "mid-step", "checkpoint")
SetAttr = Callable[[Any, str, Any], None]


def install(setattr_: SetAttr, point: str, signum: int, step: int = 0) -> None:
    """Arrange for `signum` to reach this process once, at `point` (see the module docstring)."""
    fired = []

    def fire() -> None:
        if not fired:
            fired.append(True)
            print(f"fault_hooks: sending signal {signum} at {point}", flush=True)
            os.kill(os.getpid(), signum)

    if point == "keys":
        import pipeline.dtkr.keys as keys

        # learn_task_keys is what training calls; train_keys, the older entry point, is hooked too
        for name in ("learn_task_keys", "train_keys"):
            if hasattr(keys, name):
                setattr_(keys, name, _then(getattr(keys, name), fire))
    elif point == "mid-step":
        import pipeline.stages.train as train

        one_step = train._one_step

        def hooked_step(engine: Any, trainer: Any, examples: Any, order: Any, at: int, *rest: Any) -> float:
            if at == step:
                update = engine.step

                def step_then_fire() -> None:
                    fire()  # SIGKILL ends it here; a handled signal lets the update run
                    update()

                engine.step = step_then_fire
            return one_step(engine, trainer, examples, order, at, *rest)

        setattr_(train, "_one_step", hooked_step)
    elif point == "checkpoint":
        import pipeline.state.checkpoints as checkpoints

        complete = checkpoints.write_complete

        def write_complete(tag_dir: Any, at: int, world: Any) -> None:
            if at == step:
                fire()
            complete(tag_dir, at, world)

        setattr_(checkpoints, "write_complete", write_complete)
    else:
        raise ValueError(f"unknown point {point!r}; one of {POINTS}")


def _then(learn: Callable[..., Any], fire: Callable[[], None]) -> Callable[..., Any]:
    def learn_then_fire(*args: Any, **kwargs: Any) -> Any:
        result = learn(*args, **kwargs)
        fire()
        return result

    return learn_then_fire


def main(argv: list[str]) -> int:
    point, sig, step, *slm_args = argv
    install(setattr, point, getattr(signal, sig), int(step))
    from pipeline import cli

    return cli.main(slm_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
