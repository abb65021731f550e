"""Entry point of the ``v2x`` command.

Each subcommand lives in its own module and is imported only when it runs, so heavy imports
(torch, open3d) are paid only by the commands that need them. Add a command by naming its
``module:attribute`` in one of the tables below.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

#: top-level commands
COMMANDS: dict[str, str] = {
    "data": "v2x.cli.data:data",
    "sim": "v2x.cli.sim:sim",
    "viz": "v2x.cli.viz:viz",
    "train": "v2x.cli.main:train",
    "eval": "v2x.cli.main:evaluate",
    "track": "v2x.cli.tracking:track",
    "launch": "v2x.cli.nodes:launch",
    "node": "v2x.cli.nodes:node",
    "keys": "v2x.cli.nodes:keys",
    "replay": "v2x.cli.replay:replay",
    "sweep": "v2x.cli.sweep:sweep",
    "demo": "v2x.cli.demo:demo",
    "wire": "v2x.cli.wire:wire",
}
#: ``v2x train ...``
TRAIN_COMMANDS: dict[str, str] = {
    "detector": "v2x.cli.train_detector:train_detector",
    "codebook": "v2x.cli.codebook:train_codebook",
    "messages": "v2x.cli.train_messages:train_messages",
    "tracker": "v2x.cli.tracking:train_tracker",
}
#: ``v2x eval ...``
EVAL_COMMANDS: dict[str, str] = {
    "detection": "v2x.cli.eval_detection:eval_detection",
    "comm": "v2x.cli.codebook:eval_comm",
    "tracking": "v2x.cli.tracking:eval_tracking",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module_name, attr = self.lazy[name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="v2x-coop")
def cli(verbose: int) -> None:
    """v2x-coop: cooperative perception for connected vehicles and roadside units."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.group(cls=LazyGroup, lazy=TRAIN_COMMANDS)
def train() -> None:
    """Train the detector, the codebook or the tracker's noise model."""


@click.group(cls=LazyGroup, lazy=EVAL_COMMANDS)
def evaluate() -> None:
    """Evaluate detection, communication or tracking."""


evaluate.name = "eval"


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="v2x", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
