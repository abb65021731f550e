"""Entry point of one node process: ``python -m v2x.comm.run SPEC.json``.

The launcher writes each node's :class:`~v2x.comm.node.NodeSpec` as JSON (plus ``"node"``: the
class as ``package.module:Class``) and starts this module on it. On Linux the process asks the
kernel to send it SIGTERM when the launcher dies, so a killed launcher leaves no orphans.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import signal
import sys
from pathlib import Path

from v2x.comm.node import EXIT_CONFIG, Node, NodeSpec, setup_logging

__all__ = ["die_with_parent", "load_node_class", "main"]

PARENT_ENV = "V2X_SUPERVISOR_PID"


def load_node_class(target: str) -> type[Node]:
    """The :class:`Node` subclass named ``package.module:Class``; ValueError/ImportError if not."""
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"node {target!r}: expected 'package.module:Class'")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ValueError(f"node {target!r}: {module} has no {attr}")
    if not (isinstance(obj, type) and issubclass(obj, Node)):
        raise ValueError(f"node {target!r} is not a v2x.comm.node.Node subclass")
    return obj


def die_with_parent() -> None:
    """SIGTERM this process when the supervisor that started it dies (Linux only)."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m v2x.comm.run SPEC_JSON_FILE", file=sys.stderr)
        return 2
    die_with_parent()
    try:
        raw = json.loads(Path(argv[0]).read_text())
        target = raw.pop("node")
        spec = NodeSpec.from_dict(raw)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"{argv[0]}: not a node spec: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(spec.name, spec.log_json, spec.log_level)
    try:
        cls = load_node_class(target)
    except (ImportError, ValueError) as exc:
        print(f"node {spec.name!r}: cannot load {target!r}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        node = cls(spec)
    except Exception as exc:
        print(f"node {spec.name!r}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return node.run()


if __name__ == "__main__":
    sys.exit(main())
