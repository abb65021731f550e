"""Entry point of one node process: ``python -m v2x.comm.run SPEC_JSON_FILE``.

The launcher writes each node's :class:`~v2x.comm.node.NodeSpec` (with ``"node"``: the class
as ``module:Class``) to a file and starts this module on it.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from v2x.comm.node import Node, NodeSpec, setup_logging


def load_node_class(target: str) -> type[Node]:
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ValueError(f"node {target!r}: expected 'package.module:Class'")
    cls = getattr(importlib.import_module(module), attr, None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, Node)):
        raise ValueError(f"node {target!r} is not a v2x.comm.node.Node subclass")
    return cls


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m v2x.comm.run SPEC_JSON_FILE", file=sys.stderr)
        return 2
    raw = json.loads(Path(argv[0]).read_text())
    target = raw.pop("node")
    spec = NodeSpec.from_json(json.dumps(raw))
    setup_logging(spec.name, spec.log_json)
    return load_node_class(target)(spec).run()


if __name__ == "__main__":
    sys.exit(main())
