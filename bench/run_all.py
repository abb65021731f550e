"""Run every ``bench/bench_*.py`` module's ``main()``; each writes ``bench/results/<area>.json``."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    only = set(argv if argv is not None else sys.argv[1:])
    names = sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_"))
    failed = []
    for name in names:
        if only and name.removeprefix("bench_") not in only:
            continue
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            importlib.import_module(f"bench.{name}").main()
        except Exception as exc:  # keep going: one broken benchmark must not hide the others
            failed.append(name)
            print(f"!! {name} failed: {exc!r}", flush=True)
        print(f"   {time.perf_counter() - t0:.1f} s", flush=True)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
