"""Docs that run: every command the docs show is parsed by the parser that would run it, so a
renamed command, module or flag breaks a test.

Commands come from the fenced ``bash`` blocks of README.md and docs/*.md, the fenced blocks of the
model cards (``latentshift/embedded/*.md``, their training recipes) and the command lines in the
docstrings of both packages (``latentshift …``, ``python -m latentshift…``). Lines continued
with ``\\`` are joined; ``<placeholders>`` and ``[optional parts]`` are kept as plain words. Each
command's whole argument list goes through ``parse_args`` of ``latentshift``'s, the research
package's or the app's parser (nothing runs); a ``python -m`` module that is not an entry point
fails. The two ``python`` entry points also print their ``--help`` in a process of their own.
Install lines (``python3 -m venv …``, ``pip install``) are left to CI, which runs the README's own.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from latentshift.app.serving import parse_args as app_parse_args
from latentshift.cli import build_parser
from latentshift.settings import Settings
from latentshift_research.cli import build_parser as research_build_parser

REPO = Path(__file__).resolve().parents[1]
BASH_DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MODEL_CARDS = sorted((REPO / "latentshift" / "embedded").glob("*.md"))
SOURCES = sorted((REPO / "latentshift").rglob("*.py")) + sorted((REPO / "research").rglob("*.py"))
BASH_FENCE = re.compile(r"```bash\n(.*?)```", re.S)
ANY_FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
COMMAND_START = re.compile(r"^(\S*/)?(latentshift|python3?)\s")
ENTRY_MODULES = {"latentshift", "latentshift_research"}


def command_lines(text: str) -> list[str]:
    """The lines of ``text`` (continuations joined), comments dropped."""
    lines = []
    for line in text.replace("\\\n", " ").splitlines():
        command = line.split(" #")[0].strip()
        if command and not command.startswith("#"):
            lines.append(" ".join(command.split()))
    return lines


def docstring_commands(path: Path) -> list[str]:
    """Command lines (``latentshift …``, ``python -m …``) in the docstrings of a source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node) or ""
            found += [line for line in command_lines(docstring)
                      if re.match(r"^(latentshift [a-z]|python3? -m latentshift)", line)]
    return found


def doc_commands() -> list[tuple[str, str]]:
    """(where, command) for every command line the docs show."""
    found = []
    for path in BASH_DOCS:
        found += [(path.name, line) for block in BASH_FENCE.findall(path.read_text(encoding="utf-8"))
                  for line in command_lines(block)]
    for path in MODEL_CARDS:
        found += [(path.name, line) for block in ANY_FENCE.findall(path.read_text(encoding="utf-8"))
                  for line in command_lines(block) if COMMAND_START.match(line)]
    for path in SOURCES:
        found += [(str(path.relative_to(REPO)), line) for line in docstring_commands(path)]
    return found


def parser_call(command: str) -> tuple[str, list[str]] | None:
    """(entry, argv): entry "latentshift", "latentshift_research", "app.py" or the name of a module
    that is no entry point; None for lines that are not such commands (install lines, cp, sed)."""
    words = shlex.split(re.sub(r"[<>\[\]]", "", command))
    while words and re.match(r"^[A-Z_]+=", words[0]):  # VARIABLE=value before the command
        words = words[1:]
    if words and words[0].endswith("latentshift"):
        return "latentshift", words[1:]
    if len(words) >= 3 and words[0].endswith(("python", "python3")) and words[1] == "-m" \
            and words[2].startswith("latentshift"):
        return words[2], words[3:]
    if len(words) >= 2 and words[0].endswith(("python", "python3")) and words[1] == "app.py":
        return "app.py", words[2:]
    return None


def parse(entry: str, argv: list[str]) -> None:
    """Parse ``argv`` with the entry's own parser (SystemExit on a bad command or flag)."""
    if entry == "latentshift":
        build_parser(argv).parse_args(argv)
    elif entry == "latentshift_research":
        research_build_parser(argv).parse_args(argv)
    elif entry == "app.py":
        app_parse_args(argv, Settings())
    else:
        raise AssertionError(f"python -m {entry}: not an entry point (use one of {sorted(ENTRY_MODULES)})")


COMMANDS = doc_commands()
CALLS = [(where, command, call) for where, command in COMMANDS if (call := parser_call(command))]


def test_the_docs_hold_commands_of_every_kind():
    entries = {call[0] for _, _, call in CALLS}
    places = {where.split("/")[0] for where, _, _ in CALLS}
    assert entries == {"latentshift", "latentshift_research", "app.py"}, entries
    assert {"README.md", "app.md", "research"} <= places and any(p.startswith("demo-") for p in places), places
    assert len(CALLS) > 40


def test_continued_lines_are_joined():
    assert command_lines("python -m latentshift_research train guard \\\n    --out x  # note\n# comment\n") == [
        "python -m latentshift_research train guard --out x"]


@pytest.mark.parametrize("where, command, call", CALLS, ids=lambda value: str(value)[:70])
def test_every_documented_command_parses(where, command, call, capsys):
    entry, argv = call
    try:
        parse(entry, argv)
    except SystemExit as exc:
        raise AssertionError(f"{where}: `{command}` does not parse: {capsys.readouterr().err.strip()}") from exc


def test_a_renamed_flag_or_module_is_caught():
    with pytest.raises(SystemExit):
        parse("latentshift", ["explain", "x.png", "--no-such-flag"])
    with pytest.raises(AssertionError, match="not an entry point"):
        parse("latentshift.loadtest", ["--url", "http://127.0.0.1:7860"])


@pytest.mark.parametrize("argv", [("-m", "latentshift_research", "--help"), ("app.py", "--help")], ids=" ".join)
def test_python_entry_points_print_their_help(argv):
    result = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
