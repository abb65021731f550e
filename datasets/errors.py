"""The one error type of the data layer: it always names the file and the field at fault."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A log file is missing, unreadable or inconsistent.

    ``path`` is the file (or folder), ``field`` the key, column or header entry at fault. The
    message is one line (whitespace collapsed, at most ``MAX_MESSAGE`` characters): parser errors
    and matrices quoted in it must not spill over a report of one problem per line.
    """

    MAX_MESSAGE = 300

    def __init__(self, path: str | Path, field: str, message: str) -> None:
        self.path = str(path)
        self.field = field
        message = " ".join(str(message).split())
        if len(message) > self.MAX_MESSAGE:
            message = message[: self.MAX_MESSAGE - 3] + "..."
        self.message = message
        super().__init__(f"{self.path}: {field}: {message}")
