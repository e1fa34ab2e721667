"""The README stays true: CI runs exactly its test command, and its commands exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one():
    commands = _quick_start_commands()
    assert len(commands) == 2, commands
    demo, tests = commands
    assert "distill demo" in demo and "pip install" in demo
    assert "pytest" in tests and "pip install" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci, "CI must run the README's test command verbatim"


def test_cli_commands_named_in_readme_exist():
    from distill.cli import COMMANDS

    text = (ROOT / "README.md").read_text()
    for name in re.findall(r"`distill ([a-z]+)", text):
        assert name in COMMANDS, name
