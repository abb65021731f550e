"""A disk cache of parsed per-agent metadata, shared by every process that reads a log.

An OPV2V-family frame keeps each agent's pose and the scene's vehicles in a YAML file of about
50 KB; parsing one takes about 20 ms, longer than reading the agent's binary point cloud. Every
evaluation run, every sweep cell and every replay reads the same files again, so their parsed
content is kept as small ``.npz`` files (numbers only, never pickles) under

* ``$V2X_CACHE_DIR`` when set (``off``, ``0`` or empty disables the cache), else
* ``$XDG_CACHE_HOME/v2x`` or ``~/.cache/v2x``.

An entry is keyed by the file's absolute path, modification time and size (and the reader's
version), so an edited file is parsed again. A cache that cannot be written, or an entry that
cannot be read, is skipped: the cache never makes a read fail. Delete the folder to clear it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["MetaDiskCache", "cache_root"]

#: bump when what the readers derive from a file changes, so old entries are not used
CACHE_VERSION = 1


def cache_root() -> Path | None:
    """The cache folder, or None when ``V2X_CACHE_DIR`` disables it."""
    env = os.environ.get("V2X_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "none", "false") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "v2x"


class MetaDiskCache:
    """``get``/``put`` of named numpy arrays for one source file, keyed by its stat and ``extra``."""

    def __init__(self, kind: str, root: Path | None = None, enabled: bool = True) -> None:
        base = cache_root() if root is None else root
        self.folder = base / kind if (enabled and base is not None) else None
        self.hits = 0
        self.misses = 0
        self.failures = 0  # entries that could not be read or written (never an error)

    def key(self, path: Path, st: os.stat_result, extra: str = "") -> str | None:
        if self.folder is None:
            return None
        text = f"{CACHE_VERSION}|{path.resolve()}|{st.st_mtime_ns}|{st.st_size}|{extra}"
        return hashlib.sha1(text.encode()).hexdigest()

    def _file(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npz"

    def get(self, key: str | None) -> dict[str, np.ndarray] | None:
        if key is None:
            return None
        path = self._file(key)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except FileNotFoundError:
            self.misses += 1
            return None
        except Exception:  # truncated or foreign file: parse the source again
            self.failures += 1
            self.misses += 1
            return None
        self.hits += 1
        return arrays

    def put(self, key: str | None, arrays: dict[str, np.ndarray]) -> None:
        if key is None:
            return
        path = self._file(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    np.savez_compressed(fh, **arrays)
                os.replace(tmp, path)  # readers see a whole entry or none
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:  # read-only or full disk: the cache is an optimisation only
            self.failures += 1
