"""The project's exceptions: one base class, one subclass per kind of bad input.

The CLI turns any ``SwsError`` into a one-line message and exit code 2.
"""

__all__ = ["SwsError", "DataError", "ConfigError", "CheckpointError", "RunDirError",
           "StorageError", "DivergenceError", "TrainingInterrupted"]


class SwsError(Exception):
    """Base class of every error sws raises on bad input or settings."""


class DataError(SwsError):
    """A data set is missing, truncated or malformed."""


class ConfigError(SwsError, ValueError):
    """A setting is out of range, ill-typed or unknown."""


class CheckpointError(SwsError):
    """A checkpoint is missing, unreadable or does not match the model."""


class RunDirError(SwsError):
    """A run folder is missing a stage, or exists and would be overwritten."""


class StorageError(SwsError):
    """A file could not be written (disk full, read-only, permissions); nothing was replaced."""


class DivergenceError(SwsError):
    """Training diverged (non-finite loss, exploding precisions, collapsed components).

    The message names what happened and the setting to change; the last good
    training state is kept in the run folder.
    """


class TrainingInterrupted(SwsError):
    """SIGINT or SIGTERM stopped training after its state was saved.

    ``exit_code`` is 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
