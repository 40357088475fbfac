"""Command line: ``latentshift COMMAND ...`` (the same as ``python -m latentshift COMMAND``).

The one registry of commands is :data:`COMMANDS`: each command's module (a module of this
folder) adds its sub-parser through ``add_cli(subparsers)``, and each sub-parser's
``func(args) -> int`` runs the command through the pipeline or the room that owns the work.
Only the module of the command given is imported (the others are listed by name and help
line), so ``latentshift --help`` starts in a fraction of a second without torch; command
modules import their heavy rooms inside the functions that run them. User errors
(:class:`~latentshift.errors.LatentShiftError`) end with exit code 2 and one line on stderr.

The environment's settings (:class:`~latentshift.settings.Settings`) are read here, once, as
``args.settings``; each command applies its flags over them and passes them down. A malformed
``LATENTSHIFT_*`` value ends the command the same way as a user error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import LatentShiftError
from ..runtime import set_allocator_tunables
from ..settings import Settings

#: Command -> (the module whose ``add_cli(subparsers)`` adds its sub-parser, its line in ``latentshift --help``).
COMMANDS = {
    "explain": ("latentshift.cli.explain", "explain one image: GIF, heatmaps, prediction plot, summary.json"),
    "compare": ("latentshift.cli.compare", "one image, one finding, several classifiers on one autoencoder"),
    "batch": ("latentshift.cli.batch",
              "explain every image of a folder or CSV: results.csv and a static gallery (index.html)"),
    "weights": ("latentshift.cli.weights", "list, download and verify model weights"),
    "app": ("latentshift.cli.app", "serve the web app (latentshift app --help for its options)"),
    "results": ("latentshift.cli.results", "the result store: list, check, delete, sweep expired results"),
    "study": ("latentshift.cli.study", "reader study: create cases, serve the reading page, analyze"),
}

logger = logging.getLogger("latentshift")


class _Commands:
    """The sub-parsers as a command module sees them: ``add_parser(name, ...)`` with the help
    line of its registry (so the registry is its one source)."""

    def __init__(self, subparsers, commands: dict[str, tuple[str, str]]):
        self.subparsers, self.commands = subparsers, commands

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        if name not in self.commands:
            raise KeyError(f"command {name!r} is not in its command registry")
        kwargs.setdefault("help", self.commands[name][1])
        return self.subparsers.add_parser(name, **kwargs)


def add_commands(subparsers, commands: dict[str, tuple[str, str]], argv: list[str] | None) -> None:
    """Add the sub-parsers of a registry like :data:`COMMANDS`: with ``argv``, the full sub-parser of the
    command it names only (its module alone imported; the others listed by name and help line)."""
    named = next((word for word in argv if not word.startswith("-")), None) if argv is not None else None
    for module in dict.fromkeys(module for name, (module, _) in commands.items() if argv is None or name == named):
        importlib.import_module(module).add_cli(_Commands(subparsers, commands))
    for name, (_, help_line) in commands.items():
        if name not in subparsers.choices:  # listed only: its module is not loaded
            subparsers.add_parser(name, help=help_line)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser: with ``argv``, the full sub-parser of the command it names only
    (the other commands listed by name and help line); without, every command's."""
    parser = argparse.ArgumentParser(
        prog="latentshift",
        description="Latent Shift explanations of chest X-ray classifiers (research demo, not for clinical use).")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log progress (-v) or debug messages (-vv); by default only warnings")
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), COMMANDS, argv)
    return parser


def entry() -> None:
    """The console script and ``python -m latentshift``: the allocator settings
    (:mod:`latentshift.runtime`), then :func:`main`."""
    set_allocator_tunables()
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    quiet = getattr(args, "default_log_level", logging.WARNING)  # long commands log progress by default
    levels = {0: quiet, 1: min(quiet, logging.INFO)}
    logging.basicConfig(level=levels.get(args.verbose, logging.DEBUG),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args.settings = Settings.from_environ()
    except ValueError as exc:  # a malformed LATENTSHIFT_* value, named with its value
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except LatentShiftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
