"""Every registered ``v2x`` command imports and answers ``--help`` (a lazy table cannot rot), the
command line starts without torch, and the commands the documentation names are the ones that exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from v2x.cli.main import COMMANDS, EVAL_COMMANDS, TRAIN_COMMANDS, cli

REPO = Path(__file__).resolve().parents[2]
ALL = [[c] for c in COMMANDS] + [["train", c] for c in TRAIN_COMMANDS] + [["eval", c] for c in EVAL_COMMANDS]
GROUPS = {"train": TRAIN_COMMANDS, "eval": EVAL_COMMANDS}


@pytest.mark.parametrize("path", ALL, ids=" ".join)
def test_every_command_imports_and_has_help(path):
    res = CliRunner().invoke(cli, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output


def test_help_starts_without_torch():
    """The lazy table's point: listing commands must not pay for torch (or open3d)."""
    code = (
        "import sys\n"
        "from v2x.cli.main import main\n"
        "for argv in ([], ['train'], ['eval']):\n"
        "    assert main([*argv, '--help']) == 0\n"
        "heavy = sorted(m for m in ('torch', 'open3d', 'spconv') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]


def _documented_commands() -> set[tuple[str, ...]]:
    """``v2x CMD [SUB]`` as the README and docs/ spell them in code spans and blocks."""
    found: set[tuple[str, ...]] = set()
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for cmd, sub in re.findall(
            r"(?:^|[`\s$])v2x ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", doc.read_text(), re.M
        ):
            found.add((cmd, sub) if cmd in GROUPS else (cmd,))
    return found


def test_documented_commands_exist_and_every_command_is_documented():
    documented = _documented_commands()
    unknown = sorted(
        " ".join(c)
        for c in documented
        if c[0] not in COMMANDS or (c[0] in GROUPS and c[1] not in GROUPS[c[0]])
    )
    assert not unknown, f"the docs name commands that do not exist: {unknown}"
    registered = {(c,) for c in COMMANDS if c not in GROUPS}
    registered |= {(g, c) for g, table in GROUPS.items() for c in table}
    undocumented = sorted(" ".join(c) for c in registered - documented)
    assert not undocumented, f"commands no document mentions: {undocumented}"


def test_the_docs_check_catches_an_unknown_command(tmp_path, monkeypatch):
    """The check above can fail: a document naming a command that does not exist is caught."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("Run `v2x teleport --now`, then `v2x eval wishes`.\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    with pytest.raises(AssertionError, match="teleport"):
        test_documented_commands_exist_and_every_command_is_documented()
    assert ("eval", "wishes") in _documented_commands()
