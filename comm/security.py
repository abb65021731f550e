"""CurveZMQ key pairs for the nodes of a launch: ``v2x keys generate``.

Layout of a keys folder: ``<name>.key`` (public) and ``<name>.key_secret`` (both halves) per
node or agent, and ``allowed/`` holding the public keys every node accepts (its allow-list).
Remove a key from ``allowed/`` to shut that node out.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["generate_keys"]


def generate_keys(out: str | Path, names: list[str], overwrite: bool = False) -> list[Path]:
    import zmq.auth

    out = Path(out)
    (out / "allowed").mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid key name {name!r}")
        public, secret = out / f"{name}.key", out / f"{name}.key_secret"
        if secret.exists() and not overwrite:
            written.append(public)
        else:
            for p in (public, secret):
                if p.exists():
                    p.unlink()
            pub, sec = zmq.auth.create_certificates(out, name)
            os.chmod(sec, 0o600)
            written.append(Path(pub))
        shutil.copy(public, out / "allowed" / public.name)
    return written
