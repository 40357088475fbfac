"""Docs that run: every command in the fenced ``bash`` blocks of README.md and docs/*.md is
checked the cheap way — its ``--help`` (the console script's sub-command path, a module's
``python -m`` entry with its sub-command, e.g. ``python -m latentshift_research bench``, ``python app.py``) must exit 0 — so a renamed command or module breaks a test.
Install lines (``python3 -m venv …``, ``pip install``) are left to CI, which runs the README's own.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from latentshift.cli import main

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"```bash\n(.*?)```", re.S)


def doc_commands() -> list[tuple[str, str]]:
    """(file name, command) for every command line of every fenced bash block."""
    found = []
    for path in DOCS:
        for block in FENCE.findall(path.read_text(encoding="utf-8")):
            for line in block.splitlines():
                command = line.split(" #")[0].strip()
                if command and not command.startswith("#"):
                    found.append((path.name, command))
    return found


def help_call(command: str) -> tuple[str, list[str]] | None:
    """("cli", argv for latentshift.cli.main) or ("python", argv of a python process) with ``--help``;
    None for install lines."""
    words = shlex.split(command.replace("<", "").replace(">", ""))
    if words and words[0].endswith("latentshift"):
        return "cli", [*sub_command(words[1:]), "--help"]
    if len(words) >= 3 and words[0].endswith(("python", "python3")) and words[1] == "-m" \
            and words[2].startswith("latentshift"):  # the runtime's modules and the research package's
        return "python", ["-m", words[2], *sub_command(words[3:]), "--help"]
    if len(words) >= 2 and words[0].endswith(("python", "python3")) and words[1] == "app.py":
        return "python", ["app.py", "--help"]
    return None


def sub_command(words: list[str]) -> list[str]:
    """The leading words of a command line that name (sub-)commands, up to the first flag or path."""
    path = []
    for word in words:
        if word.startswith("-") or any(c in word for c in "/.[]"):
            break
        path.append(word)
    return path


COMMANDS = doc_commands()


def test_the_docs_hold_commands_of_every_kind():
    kinds = {call[0] for _, command in COMMANDS if (call := help_call(command))}
    assert kinds == {"cli", "python"} and len(COMMANDS) > 20


@pytest.mark.parametrize("source, command", [c for c in COMMANDS if (h := help_call(c[1])) and h[0] == "cli"],
                         ids=lambda value: value[:60])
def test_console_script_commands_have_help(source, command, capsys):
    _, argv = help_call(command)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0, f"{source}: `{command}` -> `latentshift {' '.join(argv)}` failed"
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("argv", sorted({tuple(h[1]) for _, c in COMMANDS if (h := help_call(c)) and h[0] == "python"}),
                         ids=" ".join)
def test_python_entry_points_have_help(argv):
    result = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
