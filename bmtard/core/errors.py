"""Errors that are the user's to fix: stage scripts print them as one line, without a traceback."""


class BmtardError(Exception):
    """A problem with the user's input (parameters, files, data), explained in one line."""


class ParamsError(BmtardError, ValueError):
    """A parameter is unknown, of the wrong type or out of range."""


class DataError(BmtardError):
    """The data cannot be found, downloaded or read."""


class CheckpointError(BmtardError):
    """A checkpoint is missing, unreadable or does not fit the architecture."""


class TrainingError(BmtardError):
    """Training cannot go on (a non-finite loss, out of memory); the message says what to lower."""


class Interrupted(BmtardError):
    """A stop was requested (SIGTERM, SIGINT); the state is saved and a rerun continues."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
