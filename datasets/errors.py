"""The one error type of the data layer: it always names the file and the field at fault."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A log file is missing, unreadable or inconsistent.

    ``path`` is the file (or folder), ``field`` the key, column or header entry at fault.
    """

    def __init__(self, path: str | Path, field: str, message: str) -> None:
        self.path = str(path)
        self.field = field
        self.message = message
        super().__init__(f"{self.path}: {field}: {message}")
