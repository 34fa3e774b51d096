"""The `cancelwatch` command table against docs/commands.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cancelwatch import cli

COMMANDS_DOC = Path(__file__).resolve().parents[2] / "docs" / "commands.md"
# Commands whose options this test reads from their --help.
OPTION_CHECKED = ("publish", "schema", "simulate", "seller", "top", "import-orders", "publish-report", "reconcile",
                  "target")


def sections() -> dict[str, str]:
    text = COMMANDS_DOC.read_text()
    parts = re.split(r"^## `cancelwatch ([a-z-]+)`\s*$", text, flags=re.MULTILINE)
    return {parts[index]: parts[index + 1] for index in range(1, len(parts), 2)}


def test_every_command_has_a_section_in_the_commands_reference():
    documented = sections()
    missing = [name for name in cli.COMMANDS if name not in documented]
    assert not missing, f"docs/commands.md has no `## \\`cancelwatch NAME\\`` section for {missing}"
    unknown = [name for name in documented if name not in cli.COMMANDS]
    assert not unknown, f"docs/commands.md documents commands that do not exist: {unknown}"


@pytest.mark.parametrize("name", OPTION_CHECKED)
def test_every_option_of_a_command_is_documented(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", capsys.readouterr().out)) - {"--help"}
    section = sections()[name]
    missing = sorted(option for option in options if f"`{option}`" not in section)
    assert not missing, f"docs/commands.md, section {name}, does not describe {missing}"


def test_unknown_command_is_refused_with_the_list(capsys):
    assert cli.main(["no-such-command"]) == 2
    error = capsys.readouterr().err
    assert "unknown command 'no-such-command'" in error and "simulate" in error
