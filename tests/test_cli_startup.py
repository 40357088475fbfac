"""The command line starts light: ``latentshift --help`` lists every command without importing torch,
and a command's own parser is built only when it is named."""

import subprocess
import sys
import time

from latentshift import cli

#: ``python -m latentshift`` with the arguments after ``-c``; reports the exit code, whether torch
#: was imported, and the allocator settings' effect, on stderr.
RUN = """
import sys, runpy
try:
    runpy.run_module("latentshift", run_name="__main__")
except SystemExit as done:
    print("exit", done.code, "torch" in sys.modules, file=sys.stderr)
"""


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN, *argv], capture_output=True, text=True, timeout=300)


def test_help_lists_every_command_without_importing_torch():
    started = time.perf_counter()
    done = run("--help")
    seconds = time.perf_counter() - started
    assert done.stderr.splitlines()[-1] == "exit 0 False", done.stderr
    for name, (_, help_line) in cli.COMMANDS.items():
        assert name in done.stdout and help_line.split()[0] in done.stdout, name
    print(f"latentshift --help: {seconds:.2f} s")  # a figure, not a goal: run with -s to see it


def test_a_named_command_builds_its_own_parser():
    done = run("explain", "--help")
    assert "--frames-from" in done.stdout and done.stderr.splitlines()[-1].startswith("exit 0")
    assert "invalid choice: 'no-such-command'" in run("no-such-command").stderr


def test_every_command_module_registers_what_the_registry_lists():
    parser = cli.build_parser()
    [commands] = [action for action in parser._actions if action.dest == "command"]
    assert list(commands.choices) and set(commands.choices) == set(cli.COMMANDS)
    listed = cli.build_parser(["--help"])
    [only] = [action for action in listed._actions if action.dest == "command"]
    assert set(only.choices) == set(cli.COMMANDS)


def test_the_research_command_line_lists_its_commands_without_importing_torch():
    from latentshift_research import cli as research_cli

    probe = RUN.replace('"latentshift"', '"latentshift_research"')
    done = subprocess.run([sys.executable, "-c", probe, "--help"], capture_output=True, text=True, timeout=300)
    assert done.stderr.splitlines()[-1] == "exit 0 False", done.stderr
    for name in research_cli.COMMANDS:
        assert name in done.stdout, name
    assert not set(research_cli.COMMANDS) & set(cli.COMMANDS)  # each command has one home
