"""The two errors r1ray turns into one line for the user (exit code 2); every layer may raise them."""


class ConfigError(ValueError):
    """A configuration problem, already phrased for the person who wrote the config."""


class DataError(ValueError):
    """Bad input found when the run starts (dataset rows, model folder), phrased for the user."""


class Stopped(Exception):
    """A stage stopped early on request (SIGTERM: ``ray job stop``, preemption) after writing a checkpoint."""

    def __init__(self, message: str, resume_hint: str) -> None:
        super().__init__(message)
        self.resume_hint = resume_hint


class RunAborted(RuntimeError):
    """The run cannot go on (an actor died more often than ``cluster.max_restarts`` allows); one line for the user."""


class LearnerLost(RuntimeError):
    """A learner rank died: its FSDP group cannot go on, the stage restarts it from the last checkpoint."""
