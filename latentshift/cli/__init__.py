"""Command line: ``latentshift COMMAND ...`` (the same as ``python -m latentshift COMMAND``).

The one registry of commands is :data:`COMMAND_MODULES`: each module of this folder adds
its sub-parsers through ``add_cli(subparsers)``, and each sub-parser's ``func(args) -> int``
runs the command through the pipeline or the room that owns the work. User errors (:class:`~latentshift.errors.LatentShiftError`) end with exit
code 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import LatentShiftError
from ..runtime import reexec_with_allocator_tunables

#: Modules that contribute sub-commands through ``add_cli(subparsers)``.
COMMAND_MODULES = (
    "latentshift.cli.explain",      # explain
    "latentshift.cli.compare",      # compare
    "latentshift.cli.batch",        # batch
    "latentshift.cli.weights",      # weights list | fetch | verify | pin | add | store-check
    "latentshift.cli.training",     # train, evaluate-models
    "latentshift.cli.evaluation",   # evaluate-maps
    "latentshift.cli.tools",        # bench, loadtest
    "latentshift.cli.app",          # app
    "latentshift.cli.results",      # results list | check | delete | sweep
    "latentshift.cli.study",        # study create | serve | analyze
)

logger = logging.getLogger("latentshift")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentshift",
        description="Latent Shift explanations of chest X-ray classifiers (research demo, not for clinical use).")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log progress (-v) or debug messages (-vv); by default only warnings "
                             "(train and evaluate-models log progress by default)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_cli(subparsers)
    return parser


def entry() -> None:
    """The console script and ``python -m latentshift``: the allocator setting, then :func:`main`.

    glibc's allocator tunables must be in the environment when the process starts, so the
    process re-executes itself once with them (see :mod:`latentshift.runtime`).
    """
    reexec_with_allocator_tunables(sys.argv)
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = getattr(args, "default_log_level", logging.WARNING)  # long commands log progress by default
    levels = {0: quiet, 1: min(quiet, logging.INFO)}
    logging.basicConfig(level=levels.get(args.verbose, logging.DEBUG),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except LatentShiftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
