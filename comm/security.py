"""CurveZMQ keys and allow-lists for node links (``v2x keys generate``).

Who authenticates whom. Every node *binds* its inbox (a SUB socket) and is the CURVE server
on it; senders *connect* their outbox (a PUB socket) to the inboxes of their peers as CURVE
clients. So the receiving side, e.g. the ego, is the side that authenticates: its ZAP handler
(pyzmq's :class:`~zmq.auth.thread.ThreadAuthenticator`) checks each connecting sender's public
key against its allow-list, and refuses and counts any other key. The sender, in turn, pins
the receiver's public key, so it only ever talks to the real receiver. A sender with no key, a
wrong key or a key not on the list gets no message through: the handshake fails before any
message frame is accepted.

What a key may say. The ZAP handler names each admitted key (its file name: ``agent1``) and
libzmq stamps that name (the ZAP User-Id) on every message of the connection; the inbox
reader refuses a message whose header claims another sender (:mod:`v2x.comm.receiver`), so a
valid key cannot speak for another node. ``v2x launch`` and ``v2x replay`` make a fresh set of
keys per run when none is given (:func:`generate_run_keys`; ``docs/security.md``).

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
import shutil
import stat
import threading
from collections.abc import Iterable
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from v2x.comm.keyfiles import KeyFileError, certificate_text, private_dir, write_file

__all__ = [
    "OPERATOR",
    "AllowList",
    "Guard",
    "KeyRing",
    "NamingAuthenticator",
    "SecurityError",
    "generate_keys",
    "generate_run_keys",
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
    names = [_check_name(n) for n in dict.fromkeys(names)]
    try:  # the folder and allowed/ are 0700 and each secret 0600 from the start (keyfiles)
        out = private_dir(out)
        allowed = private_dir(out / "allowed")
    except (KeyFileError, OSError) as exc:
        raise SecurityError(str(exc)) from exc
    written: dict[str, Path] = {}
    for name in [*names, *([OPERATOR] if operator and OPERATOR not in names else [])]:
        public, secret = out / f"{name}.key", out / f"{name}.key_secret"
        if overwrite or not (public.is_file() and secret.is_file()):
            pub, sec = zmq.curve_keypair()
            write_file(secret, certificate_text(pub, sec), 0o600)
            write_file(public, certificate_text(pub), 0o644)
        written[name] = public
        if name != OPERATOR:  # the operator may inspect (taps) but not send to inboxes
            write_file(allowed / public.name, public.read_bytes(), 0o644)
    return written


RUN_KEYS_MARK = ".v2x-run-keys"


def generate_run_keys(folder: str | Path, names: Iterable[str]) -> Path:
    """Fresh keys for one run in ``folder`` (0700), made for every name and the operator.

    Why fresh each time: a run's keys are only good for that run, so nothing written by an
    earlier run in the same place (a stale ``allowed/`` entry) can be admitted. A folder left
    by an earlier run (it holds :data:`RUN_KEYS_MARK`) is replaced; any other folder there is
    refused rather than deleted."""
    folder = Path(folder)
    if folder.exists() or folder.is_symlink():
        if not (folder.is_dir() and not folder.is_symlink() and (folder / RUN_KEYS_MARK).is_file()):
            raise SecurityError(f"{folder}: exists and is not a per-run keys folder; not touching it")
        shutil.rmtree(folder)
    try:
        private_dir(folder)
        write_file(folder / RUN_KEYS_MARK, b"keys made for one run; replaced by the next\n", 0o600)
    except (KeyFileError, OSError) as exc:
        raise SecurityError(str(exc)) from exc
    generate_keys(folder, names, overwrite=True)
    return folder


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise SecurityError(f"{path}: key file not found (run `v2x keys generate`)")
    try:
        public, sec = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise SecurityError(f"{path}: not a CURVE key file: {exc}") from exc
    if secret and sec is None:
        raise SecurityError(f"{path}: has no secret key")
    if secret and stat.S_IMODE(path.stat().st_mode) & 0o077:
        log.warning("%s: other users may read this secret key (chmod 600 it)", path)
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


class NamingAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP handler thread, with one change: the User-Id of an admitted CURVE key is the
    key's name on the allow-lists (``agent1``), not the key itself. libzmq stamps that id on
    every message frame of the connection, so the receiver can check that a message's claimed
    sender is the one whose key sent it (:mod:`v2x.comm.receiver`)."""

    def __init__(self, ctx: zmq.Context, lists: dict[str, AllowList], log: logging.Logger) -> None:
        super().__init__(ctx, log=log)
        self.lists = lists

    def curve_user_id(self, client_public_key: bytes) -> str:
        key = z85.encode(client_public_key)
        for allow in self.lists.values():
            name = allow.keys().get(key)
            if name:
                return name
        return ""  # removed from the list between the check and now: no name, refused later


class Guard:
    """The ZAP handler of one node's context: a :class:`NamingAuthenticator` with one allow-list
    per domain (``inbox``, ``tap``)."""

    def __init__(self, ctx: zmq.Context, lists: dict[str, AllowList]) -> None:
        self.lists = lists
        self.auth = NamingAuthenticator(ctx, lists, logging.getLogger("v2x.security.zap"))
        self.auth.start()
        for domain, allow in lists.items():
            self.auth.configure_curve_callback(domain=domain, credentials_provider=allow)

    def refused(self) -> dict[str, int]:
        return {d: a.refused for d, a in self.lists.items()}

    def stop(self) -> None:
        self.auth.stop()
