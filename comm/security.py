"""CurveZMQ keys and allow-lists for node links (``v2x keys generate``).

Who authenticates whom. Every node *binds* its inbox (a SUB socket) and is the CURVE server
on it; senders *connect* their outbox (a PUB socket) to the inboxes of their peers as CURVE
clients. So the receiving side, e.g. the ego, is the side that authenticates: its ZAP handler
(pyzmq's :class:`~zmq.auth.thread.ThreadAuthenticator`) checks each connecting sender's public
key against its allow-list, and refuses and counts any other key. The sender, in turn, pins
the receiver's public key, so it only ever talks to the real receiver. A sender with no key, a
wrong key or a key not on the list gets no message through: the handshake fails before any
message frame is accepted.

Inspection taps (``v2x node echo``) are the other direction: a node's outbox also binds a tap
endpoint as a CURVE server that admits the ``operator`` key (and the launch's node keys).

Layout of a keys folder::

    keys/
      ego.key  ego.key_secret          one pair per node / agent (secret files are mode 0600)
      agent1.key  agent1.key_secret
      operator.key  operator.key_secret   for the inspection commands
      allowed/ego.key  allowed/agent1.key ...   the public keys inboxes accept

Removing ``allowed/<name>.key`` shuts that node out of new connections (the list is re-read
when the folder changes); a launch file can also give a node its own ``allow:`` list.
On several hosts, each host needs its own secret file and the others' public files only.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

__all__ = [
    "OPERATOR",
    "AllowList",
    "Guard",
    "KeyRing",
    "SecurityError",
    "generate_keys",
    "load_public_key",
]

OPERATOR = "operator"
log = logging.getLogger("v2x.security")


class SecurityError(ValueError):
    """Missing or unreadable keys (names the file)."""


def _check_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith(".") or name.strip() != name:
        raise SecurityError(f"invalid key name {name!r}")
    return name


def generate_keys(
    out: str | Path, names: Iterable[str], overwrite: bool = False, operator: bool = True
) -> dict[str, Path]:
    """One CURVE key pair per name in ``out`` (plus ``operator``), public halves in ``allowed/``.

    Existing pairs are kept unless ``overwrite``; returns name -> public key file.
    """
    out = Path(out)
    (out / "allowed").mkdir(parents=True, exist_ok=True)
    names = [_check_name(n) for n in dict.fromkeys(names)]
    written: dict[str, Path] = {}
    for name in [*names, *([OPERATOR] if operator and OPERATOR not in names else [])]:
        public, secret = out / f"{name}.key", out / f"{name}.key_secret"
        if overwrite or not (public.is_file() and secret.is_file()):
            for p in (public, secret):
                p.unlink(missing_ok=True)
            zmq.auth.create_certificates(out, name)
            os.chmod(secret, 0o600)
        written[name] = public
        if name != OPERATOR:  # the operator may inspect (taps) but not send to inboxes
            (out / "allowed" / public.name).write_bytes(public.read_bytes())
    return written


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise SecurityError(f"{path}: key file not found (run `v2x keys generate`)")
    try:
        public, sec = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise SecurityError(f"{path}: not a CURVE key file: {exc}") from exc
    if secret and sec is None:
        raise SecurityError(f"{path}: has no secret key")
    return public, sec


def load_public_key(path: str | Path) -> bytes:
    """The public key (z85) in a key file."""
    return _load(Path(path), secret=False)[0]


class KeyRing:
    """A node's own key pair and its view of the others' public keys, from a keys folder."""

    def __init__(self, keys_dir: str | Path, name: str) -> None:
        self.dir = Path(keys_dir)
        if not self.dir.is_dir():
            raise SecurityError(
                f"{self.dir}: keys folder not found (run `v2x keys generate --out {self.dir}`)"
            )
        self.name = name
        self.public, self.secret = _load(self.dir / f"{_check_name(name)}.key_secret", secret=True)

    def public_key(self, name: str) -> bytes:
        """A peer's public key: ``allowed/<name>.key``, else ``<name>.key``."""
        for p in (self.dir / "allowed" / f"{_check_name(name)}.key", self.dir / f"{name}.key"):
            if p.is_file():
                return _load(p, secret=False)[0]
        raise SecurityError(f"{self.dir}: no public key for {name!r} (allowed/{name}.key)")

    def allow_list(self, names: Iterable[str] | None = None, operator: bool = False) -> AllowList:
        """Keys of ``names``, or every key in ``allowed/`` (re-read when it changes)."""
        fixed = None if names is None else {self.public_key(n): n for n in names}
        extra = {}
        if operator and (self.dir / f"{OPERATOR}.key").is_file():
            extra[_load(self.dir / f"{OPERATOR}.key", secret=False)[0]] = OPERATOR
        return AllowList(self.dir / "allowed", fixed, extra)


class AllowList:
    """Public keys (z85) admitted on one ZAP domain; refusals are counted, with the key logged."""

    def __init__(self, folder: Path, fixed: dict[bytes, str] | None, extra: dict[bytes, str]) -> None:
        self.folder, self.fixed, self.extra = folder, fixed, extra
        self.refused = 0
        self.admitted = 0
        self._lock = threading.Lock()
        self._cache: dict[bytes, str] = {}
        self._stamp: tuple | None = None

    def keys(self) -> dict[bytes, str]:
        if self.fixed is not None:
            return self.fixed | self.extra
        try:
            stamp = (self.folder.stat().st_mtime_ns, len(os.listdir(self.folder)))
        except OSError:
            return dict(self.extra)
        if stamp != self._stamp:
            found = {}
            for p in sorted(self.folder.glob("*.key")):
                try:
                    found[_load(p, secret=False)[0]] = p.stem
                except SecurityError as exc:
                    log.warning("ignoring %s", exc)
            self._cache, self._stamp = found, stamp
        return self._cache | self.extra

    def callback(self, domain: str, key: bytes) -> bool:
        """Called by the ZAP handler (in its thread) for every CURVE handshake on ``domain``."""
        name = self.keys().get(bytes(key))
        with self._lock:
            if name is None:
                self.refused += 1
            else:
                self.admitted += 1
        if name is None:
            log.warning("refused a connection on %s from unknown key %s", domain, bytes(key).decode())
        return name is not None


class Guard:
    """The ZAP handler of one node's context: a ThreadAuthenticator with one allow-list per
    domain (``inbox``, ``tap``)."""

    def __init__(self, ctx: zmq.Context, lists: dict[str, AllowList]) -> None:
        self.lists = lists
        self.auth = ThreadAuthenticator(ctx, log=logging.getLogger("v2x.security.zap"))
        self.auth.start()
        for domain, allow in lists.items():
            self.auth.configure_curve_callback(domain=domain, credentials_provider=allow)

    def refused(self) -> dict[str, int]:
        return {d: a.refused for d, a in self.lists.items()}

    def stop(self) -> None:
        self.auth.stop()
