"""Opening a log's files without trusting them: every failure is a :class:`DatasetError`.

A log is read from disk that someone else filled. A name may be a FIFO (reading it would block
forever), a link to ``/dev/zero`` (it never ends), a folder, or a file or folder this process may
not read. These helpers look before they read, bound what they read, and name the file, or the
folder that stops them, instead of raising ``OSError`` from deep inside a reader.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from v2x.datasets.errors import DatasetError

__all__ = ["MAX_TEXT_BYTES", "exists", "list_dir", "read_json", "read_regular", "stat_file"]

#: the largest JSON/YAML file a reader accepts (real ones are KBs; a simulator agent-frame ~50 KB)
MAX_TEXT_BYTES = 64 * 1024 * 1024


def _blocked(path: Path, exc: OSError) -> DatasetError:
    """The error for a path that cannot be reached: it names the first folder on the way that
    may not be searched, else the path itself."""
    parts = [path, *path.parents]
    for parent, child in zip(reversed(parts[1:]), reversed(parts[:-1]), strict=True):
        try:
            os.stat(child)
        except PermissionError:
            return DatasetError(parent, "folder", "cannot read: permission denied")
        except OSError:
            break
    return DatasetError(path, "file", f"cannot read: {exc.strerror or exc}")


def exists(path: str | Path) -> bool:
    """Whether anything (file, folder, FIFO, broken link) is at ``path``; unreadable folders on
    the way are an error, not a no."""
    try:
        os.lstat(path)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise _blocked(Path(path), exc) from exc


def stat_file(path: str | Path, limit: int | None = None) -> os.stat_result:
    """The stat of a regular file (links followed) of at most ``limit`` bytes."""
    path = Path(path)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        if os.path.lexists(path):
            raise DatasetError(path, "file", "a link to nothing") from exc
        raise DatasetError(path, "file", "missing") from exc
    except OSError as exc:
        raise _blocked(path, exc) from exc
    if not stat.S_ISREG(st.st_mode):
        kind = "folder" if stat.S_ISDIR(st.st_mode) else "FIFO" if stat.S_ISFIFO(st.st_mode) else "device"
        raise DatasetError(path, "file", f"not a regular file (a {kind})")
    if limit is not None and st.st_size > limit:
        raise DatasetError(path, "file", f"{st.st_size} bytes, more than the {limit} this reader accepts")
    return st


def read_regular(path: str | Path, limit: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes."""
    stat_file(path, limit)
    try:
        with open(path, "rb") as fh:
            return fh.read(limit + 1)
    except OSError as exc:
        raise DatasetError(path, "file", f"cannot read: {exc.strerror or exc}") from exc


def read_json(path: str | Path) -> Any:
    path = Path(path)
    raw = read_regular(path)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DatasetError(path, "json", f"invalid JSON: {exc}") from exc


def list_dir(path: str | Path) -> list[Path]:
    """The entries of a folder, sorted by name."""
    path = Path(path)
    try:
        return sorted(path.iterdir())
    except FileNotFoundError as exc:
        raise DatasetError(path, "folder", "missing") from exc
    except NotADirectoryError as exc:
        raise DatasetError(path, "folder", "not a folder") from exc
    except OSError as exc:
        raise DatasetError(path, "folder", f"cannot read: {exc.strerror or exc}") from exc
