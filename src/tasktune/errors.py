"""Errors a user can fix. The CLI prints them as one message (no traceback) and exits with code 2."""

from __future__ import annotations


class TaskTuneError(Exception):
    """A problem with the user's input or environment, with a hint on how to fix it."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"


class DataError(TaskTuneError):
    """A data file is unreadable or a row is malformed; the message names the file and line."""


class ConfigError(TaskTuneError):
    """A task or training setting is unknown, mistyped or out of range; the message names the key."""


class ModelError(TaskTuneError):
    """A base model cannot be found or loaded."""


class TrainingStopped(TaskTuneError):
    """Training stopped on a signal after saving a checkpoint; the hint says how to resume. Exits 128 + signal."""

    def __init__(self, message: str, hint: str, signum: int):
        super().__init__(message, hint)
        self.exit_code = 128 + signum
