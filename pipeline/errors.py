"""One small error hierarchy: every user-facing failure says what was wrong, where, and what to do next.

`pipeline.cli.main` turns any of these (and the OS errors a user can cause) into one line on
stderr plus a hint line, exit code 2. `hint` is the line after: what to do, when the message
itself does not already say it.
"""


class SlmError(Exception):
    """Base class of every error the pipeline raises on purpose."""

    def __init__(self, message: str = "", *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(SlmError, ValueError):
    """The experiment YAML or a CLI override is invalid. Lists every problem at once."""


class DataError(SlmError, ValueError):
    """A data source is malformed: the message names the file and the line, record or key."""


class StageInputError(SlmError, RuntimeError):
    """A stage's inputs are missing or their hashes do not match: names the stage to rerun."""


class NoTargetModuleError(SlmError, ValueError):
    """JARe target module names matched no linear layer of the model."""


class CheckpointError(SlmError, RuntimeError):
    """A saved slot bank, key bank or index does not match the model/encoder it is loaded into."""


class LockError(SlmError, RuntimeError):
    """Another live process writes the same output folder: names its pid, host and Slurm job."""


class RequestError(SlmError, ValueError):
    """A request to `slm serve` that the server refuses: `status` is its HTTP 4xx code."""

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error",
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind  # the OpenAI error `type`
        self.param = param  # the request field at fault, when there is one
