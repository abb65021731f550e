"""Key folders and key files that are private from the moment they exist, whatever the umask.

Why not ``mkdir`` then ``chmod``, or ``zmq.auth.create_certificates`` then ``chmod``: between
the two steps the secret is readable (and, under umask 000, the folder and its ``allowed/``
list are writable) by every local user, who can copy the secret or plant a key of their own
in the allow-list. Here a folder is made with mode 0700 and a file is opened with
``os.open(..., O_CREAT | O_EXCL, mode)`` under a temporary name and renamed into place, so no
one ever sees it with looser permissions or half-written.

The files are ZeroMQ certificate files (what ``zmq.auth.load_certificate`` reads): a
``curve`` section with ``public-key`` and, in the secret file, ``secret-key``, both z85.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from pathlib import Path

__all__ = ["KeyFileError", "certificate_text", "private_dir", "write_file"]

log = logging.getLogger("v2x.security")
_O_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class KeyFileError(ValueError):
    """A key folder that cannot be made private (not ours, not a folder)."""


def private_dir(path: str | Path) -> Path:
    """``path`` as a folder only its owner can enter (0700): created so, or tightened if it
    exists with looser bits. Parents are made as usual (they hold nothing secret)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)  # under any umask at most 0700: never looser, not even briefly
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise KeyFileError(f"{path}: not a folder (a keys folder may not be a link or a file)")
    if st.st_uid != os.getuid():
        raise KeyFileError(
            f"{path}: belongs to uid {st.st_uid}, not to this user; refusing to keep keys there"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        if stat.S_IMODE(st.st_mode) & 0o077:
            log.warning("%s was open to other users (mode %o): now 0700", path, stat.S_IMODE(st.st_mode))
        os.chmod(path, 0o700)
    return path


def write_file(path: str | Path, data: bytes, mode: int) -> Path:
    """Write ``data`` to ``path`` with ``mode`` from creation on (the umask can only narrow it),
    atomically: a temporary file in the same folder, renamed over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, _O_FLAGS, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def certificate_text(public: bytes, secret: bytes | None = None) -> bytes:
    """A ZeroMQ certificate file's text for a z85 key pair (public only when ``secret`` is None)."""
    kind = "Secret" if secret is not None else "Public"
    lines = [
        f"#   ZeroMQ CURVE {kind} Certificate, written by v2x (v2x.comm.keyfiles)",
        *(["#   Keep this file to yourself: mode 0600."] if secret is not None else []),
        "",
        "metadata",
        "curve",
        f'    public-key = "{public.decode("ascii")}"',
        *([f'    secret-key = "{secret.decode("ascii")}"'] if secret is not None else []),
        "",
    ]
    return "\n".join(lines).encode("ascii")
