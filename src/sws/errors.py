"""The project's exceptions: one base class, one subclass per kind of bad input.

The CLI turns any ``SwsError`` into a one-line message and exit code 2.
"""

__all__ = ["SwsError", "DataError", "ConfigError", "CheckpointError", "RunDirError"]


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
