"""Every registered ``v2x`` command imports and answers ``--help`` (a lazy table cannot rot)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from v2x.cli.main import COMMANDS, EVAL_COMMANDS, TRAIN_COMMANDS, cli

ALL = [[c] for c in COMMANDS] + [["train", c] for c in TRAIN_COMMANDS] + [["eval", c] for c in EVAL_COMMANDS]


@pytest.mark.parametrize("path", ALL, ids=" ".join)
def test_every_command_imports_and_has_help(path):
    res = CliRunner().invoke(cli, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output


def test_the_top_level_lists_every_command():
    ctx = click.Context(cli)
    assert set(cli.list_commands(ctx)) >= set(COMMANDS)
